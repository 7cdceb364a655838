"""Sampling at scale: N class-conditional images as PNGs, one process per slice, then one ADM `.npz`.

Sample i has the label `labels[i]` (uniform over classes from `seed`, as DiT/SiT/ADM sample for FID) and
its own noise from generator seed (seed, i), so the ODE samplers give the same image for i whatever the
batch size or process count; the SDE's step noise comes from each batch's generator. Process r of R takes
indices [r·N/R, (r+1)·N/R); a PNG is written to a temporary name and renamed, so a rerun skips exactly the
images that exist and an interrupted run resumes.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.recipe import SampleSpec, sample
from layersync.image.grid import to_uint8


@dataclass(frozen=True)
class SampleReport:
    """What one process did."""

    written: int
    skipped: int  # existing PNGs left as they were
    nfe_per_sample: float
    seconds: float


def sample_labels(num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """(N,) long labels, uniform over classes, fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (num_samples,), generator=g)


def sample_noise(indices: Iterable[int], shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(B, *shape) standard normal noise, row j from a generator seeded by (seed, indices[j])."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i) + 1))
            for i in indices]
    return torch.stack(rows)


def rank_slice(num_samples: int, rank: int, world: int) -> range:
    """Process `rank`'s contiguous share of [0, N)."""
    if not 0 <= rank < world:
        raise UserValueError(f"rank {rank} is not in [0, {world})")
    return range(num_samples * rank // world, num_samples * (rank + 1) // world)


def png_path(folder: str | os.PathLike, index: int) -> Path:
    return Path(folder) / f"{index:06d}.png"


def _write_png(image: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


@torch.no_grad()
def sample_pngs(model, interpolant, spec: SampleSpec, decode, folder: str | os.PathLike, labels: torch.Tensor,
                shape: tuple[int, ...], seed: int, batch_size: int = 64, rank: int = 0, world: int = 1,
                progress: bool = True) -> SampleReport:
    """Draw this process's missing samples of `labels`, decode them (`decode`: latents → images in [-1, 1])
    and write `folder/NNNNNN.png`."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UserValueError(f"batch_size must be ≥ 1, got {batch_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mine = rank_slice(len(labels), rank, world)
    todo = [i for i in mine if not png_path(folder, i).exists()]
    device = next(model.parameters()).device
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"sample (rank {rank}/{world})",
               unit="img", disable=not progress)
    nfe, t0 = 0, time.perf_counter()
    for lo in range(0, len(todo), batch_size):
        chunk = todo[lo : lo + batch_size]
        noise = sample_noise(chunk, shape, seed).to(device)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + chunk[0] + 1)  # SDE step noise
        y = labels[chunk].to(device)
        x, n = sample(model, interpolant, noise, y, None, spec, generator=g)  # null class via force_drop
        for i, image in zip(chunk, to_uint8(decode(x))):
            _write_png(image, png_path(folder, i))
        nfe += n * len(chunk)
        bar.update(len(chunk))
        # Every process runs at about this rate; the postfix estimates all of them together.
        bar.set_postfix({"img/s": f"{world * (lo + len(chunk)) / (time.perf_counter() - t0):.2f}"})
    bar.close()
    return SampleReport(written=len(todo), skipped=len(mine) - len(todo),
                        nfe_per_sample=nfe / max(len(todo), 1), seconds=time.perf_counter() - t0)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy format 2.0 header of a C-ordered array (written before streaming its rows)."""
    import io

    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def collect_npz(folder: str | os.PathLike, labels: torch.Tensor, path: str | os.PathLike) -> Path:
    """Stream `folder/000000.png …` into an ADM sample batch (arr_0 uint8 NHWC, arr_1 labels) at `path`,
    one image in memory at a time (50 000 images at 256² are ~10 GB)."""
    folder, path = Path(folder), Path(path)
    missing = [i for i in range(len(labels)) if not png_path(folder, i).exists()]
    if missing:
        raise UserFileNotFoundError(f"{len(missing)} of {len(labels)} samples are missing in {folder} "
                                    "(first: "
                                    f"{png_path(folder, missing[0]).name}); rerun the same sample command")
    first = np.asarray(Image.open(png_path(folder, 0)).convert("RGB"))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as stream:
            stream.write(_npy_header((len(labels), *first.shape), np.uint8))
            for i in range(len(labels)):
                image = np.asarray(Image.open(png_path(folder, i)).convert("RGB"))
                if image.shape != first.shape:
                    raise UserValueError(f"{png_path(folder, i)} is {image.shape}, the others {first.shape}")
                stream.write(image.tobytes())
        array = labels.numpy().astype(np.int64)
        with archive.open("arr_1.npy", "w") as stream:
            stream.write(_npy_header(array.shape, array.dtype) + array.tobytes())
    os.replace(tmp, path)
    return path
