"""ADM's `.npz` batches: sample batches (`arr_0`: uint8 NHWC images) and reference batches (+ FID statistics).

A sample batch holds `arr_0` (N, H, W, 3) uint8 and, for class-conditional models, `arr_1` (N,) labels, as
guided-diffusion's sampling scripts write them. A reference batch adds the Gaussians of the whole dataset,
`mu`, `sigma` (pool_3) and `mu_s`, `sigma_s` (spatial), to 10 000 images in `arr_0` for precision/recall
(Dhariwal & Nichol 2021, evaluations/README). ADM stores no features; we may add `pool_features`, the
(N, 2048) pool_3 features of `arr_0`, so that repeated evaluations skip recomputing them (ADM ignores it).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator

import numpy as np

from layersync.core.errors import UserKeyError, UserValueError
from layersync.metrics.frechet import GaussianStats

POOL_FEATURES_KEY = "pool_features"


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Validate an ADM image array: uint8, (N, H, W, 3)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserValueError(
            f"{what} must be uint8 (N, H, W, 3) RGB in [0, 255] as ADM stores them, got {images.dtype} "
            f"{images.shape}; convert with (x * 255).round().clip(0, 255).astype(np.uint8) and NCHW → NHWC"
        )
    return images


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Names of the arrays in an npz file."""
    with zipfile.ZipFile(path) as archive:
        return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]


def iter_npz_batches(
    path: str | os.PathLike, key: str = "arr_0", batch_size: int = 64
) -> Iterator[np.ndarray]:
    """Stream an array of an npz (compressed or not) in batches along its first axis, without loading it all.

    A 50 000-image 256×256 batch is ~10 GB; only `batch_size` rows are in memory at a time.
    """
    if batch_size < 1:
        raise UserValueError(f"batch_size must be positive, got {batch_size}")
    with zipfile.ZipFile(path) as archive:
        member = f"{key}.npy"
        if member not in archive.namelist():
            raise UserKeyError(f"{path} has no array {key!r}; it holds {npz_keys(path)}")
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise UserValueError(f"{path}:{key} uses .npy format {version}; rewrite it with np.savez")
            if fortran_order or dtype.hasobject or len(shape) == 0:
                raise UserValueError(f"{path}:{key} must be a C-ordered numeric array with a batch axis")
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                rows = min(batch_size, shape[0] - start)
                buffer = stream.read(rows * row_bytes)
                if len(buffer) != rows * row_bytes:
                    raise UserValueError(f"{path}:{key} is truncated at row {start}")
                yield np.frombuffer(buffer, dtype=dtype).reshape(rows, *shape[1:])


def write_sample_batch(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None
) -> None:
    """Write an ADM sample batch: `arr_0` uint8 (N, H, W, 3) and optional `arr_1` (N,) class labels."""
    check_images(images)
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],):
            raise UserValueError(f"labels must be ({images.shape[0]},), got {labels.shape}")
        arrays["arr_1"] = labels
    np.savez(path, **arrays)


def write_reference_batch(
    path: str | os.PathLike,
    images: np.ndarray,
    pool: GaussianStats,
    spatial: GaussianStats,
    pool_features: np.ndarray | None = None,
) -> None:
    """Write an ADM reference batch: `arr_0`, `mu`, `sigma`, `mu_s`, `sigma_s` (+ our `pool_features`)."""
    check_images(images)
    arrays = {"arr_0": images, "mu": pool.mu, "sigma": pool.sigma}
    arrays |= {"mu_s": spatial.mu, "sigma_s": spatial.sigma}
    if pool_features is not None:
        if pool_features.shape != (images.shape[0], pool.dim):
            raise UserValueError(
                f"pool_features must be ({images.shape[0]}, {pool.dim}) for these images, "
                f"got {pool_features.shape}"
            )
        arrays[POOL_FEATURES_KEY] = pool_features.astype(np.float32)
    np.savez(path, **arrays)
