"""CLEVRER clips precomputed on disk, as pixels or SD-VAE latents, and read back as a training DataSource.

A prepared folder holds `clips.npy` (read memory-mapped) and `manifest.json` (written last, so a folder
without it is incomplete): the source root and split, the clip spec, the encoding, which (video, first
frame) each clip came from, every skipped video with its reason, and for latents the VAE's folder, sha256
and scaling factor.

    pixels: uint8 (N, T, S, S, 3), as decoded          sd_vae: float32 (N, c, T, S/f, S/f), scaled latents
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.trainer import Batch
from layersync.video.clevrer import ClevrerSplit, ClipSpec, iter_clips, list_videos, video_id, warn_skipped
from layersync.video.latents import FrameVAE
from layersync.video.media import from_uint8

log = logging.getLogger("layersync")
Encoding = Literal["pixels", "sd_vae"]
MANIFEST = "manifest.json"
ARRAY = "clips.npy"
FORMAT = 1


def describe(root: str | os.PathLike, split: ClevrerSplit, spec: ClipSpec, encoding: Encoding, limit: int,
             vae: FrameVAE | None) -> dict:
    """The fields that identify a prepared set: a folder is reused only when all of them match."""
    return {"format": FORMAT, "root": str(Path(root).resolve()), "split": split, "spec": asdict(spec),
            "encoding": encoding, "limit": limit, "vae": vae.describe() if vae is not None else None}


def is_prepared(out_dir: str | os.PathLike, identity: dict) -> bool:
    """Whether `out_dir` holds a complete prepared set with exactly this identity (see `describe`)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return all(manifest.get(k) == v for k, v in json.loads(json.dumps(identity)).items())


def prepare(root: str | os.PathLike, split: ClevrerSplit, out_dir: str | os.PathLike,
            spec: ClipSpec = ClipSpec(), encoding: Encoding = "pixels", vae: FrameVAE | None = None,
            limit: int = 0, progress: bool = True) -> dict:
    """Decode (and encode) a split's clips into `out_dir`; returns the manifest. Bad videos are skipped.

    A folder already prepared with the same settings is kept as it is (nothing is redone); one prepared with
    other settings, or holding other files, is refused: replacing it would silently lose those clips.
    """
    if encoding not in ("pixels", "sd_vae"):
        raise UserValueError(f"encoding must be 'pixels' or 'sd_vae', got {encoding!r}")
    if (encoding == "sd_vae") != (vae is not None):
        raise UserValueError("encoding='sd_vae' needs a FrameVAE and 'pixels' takes none")
    out = Path(out_dir)
    identity = json.loads(json.dumps(describe(root, split, spec, encoding, limit, vae)))
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        changed = _first_change(manifest, identity)
        if not changed:
            log.info("%s is already prepared with these settings: nothing to do", out)
            return manifest
        raise UserValueError(f"{out} was prepared with different settings ({changed}); use another --out or "
                             "the original settings")
    foreign = sorted(p.name for p in out.iterdir() if p.name != ARRAY and not p.name.startswith(".")) \
        if out.is_dir() else []
    if foreign:  # no manifest: an interrupted prepare leaves only clips.npy and hidden temp files
        raise UserValueError(f"{out} holds {foreign[0]} and is not a prepared clip folder; use another --out")
    paths = list_videos(root, split, limit)
    out.mkdir(parents=True, exist_ok=True)
    if encoding == "pixels":
        clip_shape, dtype = (spec.num_frames, spec.size, spec.size, 3), np.uint8
    else:
        clip_shape, dtype = vae.latent_shape((3, spec.num_frames, spec.size, spec.size)), np.float32
    raw_path = out / f".{ARRAY}.raw-{os.getpid()}"
    sources, skipped, n = [], [], 0
    try:
        with open(raw_path, "wb") as raw:  # the count is unknown until the end: stream, then add the header
            for path, clips, info in iter_clips(paths, spec, progress):
                if clips is None:
                    skipped.append(info)
                    continue
                data = clips if vae is None else vae.encode(from_uint8(clips)).numpy()
                raw.write(np.ascontiguousarray(data, dtype=dtype).tobytes())
                sources += [[video_id(path), s] for s in info]
                n += len(data)
        warn_skipped(skipped, len(paths))
        if n == 0:
            raise UserValueError(f"none of the {len(paths)} {split} videos under {root} gave a clip; "
                                 "see the warning")
        flat = np.memmap(raw_path, dtype=dtype, mode="r", shape=(n, *clip_shape))
        array = np.lib.format.open_memmap(out / ARRAY, mode="w+", dtype=dtype, shape=(n, *clip_shape))
        for lo in range(0, n, 256):
            array[lo : lo + 256] = flat[lo : lo + 256]
        array.flush()
        del array, flat
    finally:
        raw_path.unlink(missing_ok=True)
    manifest = {**describe(root, split, spec, encoding, limit, vae), "n_clips": n,
                "clip_shape": list(clip_shape), "dtype": np.dtype(dtype).name, "n_videos": len(paths),
                "sources": sources, "skipped": [asdict(s) for s in skipped]}
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def _first_change(old: dict, new: dict, prefix: str = "") -> str:
    """`key: OLD then, NEW now` for the first field of `new` that `old` does not share ("" if none)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            if changed := _first_change(old[key], value, f"{prefix}{key}."):
                return changed
        elif old.get(key) != value:
            return f"{prefix}{key}: {old.get(key)!r} then, {value!r} now"
    return ""


class PreparedClips:
    """A prepared folder as a DataSource: `batch(indices)` gives clips (B, 3, T, S, S) in [-1, 1] or
    latents (B, c, T, h, w)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise UserFileNotFoundError(f"{self.folder} has no {MANIFEST}: not a prepared clip folder, or "
                                        "its "
                                        "preparation did not finish (run `layersync video prepare` again)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise UserValueError(f"{path} has format {self.manifest.get('format')}, this version reads "
                                 f"{FORMAT}; prepare the folder again")
        self.encoding: Encoding = self.manifest["encoding"]
        self.array = np.load(self.folder / ARRAY, mmap_mode="r")
        expected = (self.manifest["n_clips"], *self.manifest["clip_shape"])
        if self.array.shape != expected:
            raise UserValueError(f"{self.folder / ARRAY} has shape {self.array.shape}, its manifest says "
                                 f"{expected}; prepare the folder again")

    def __len__(self) -> int:
        return len(self.array)

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one item in model space."""
        shape = tuple(self.manifest["clip_shape"])
        return (3, *shape[:3]) if self.encoding == "pixels" else shape

    def batch(self, indices: torch.Tensor, keys: torch.Tensor | None = None) -> Batch:
        """Clips `indices`; deterministic, so the per-sample `keys` are not used."""
        rows = self.array[np.sort(indices.numpy())]  # sorted reads are sequential on disk
        order = np.argsort(np.argsort(indices.numpy()))  # back to the requested order
        x = from_uint8(rows) if self.encoding == "pixels" else torch.from_numpy(np.array(rows, np.float32))
        return Batch(x[torch.from_numpy(order)])

    def pixel_batches(self, batch_size: int = 64, limit: int = 0):
        """uint8 (B, T, S, S, 3) batches of the first `limit` clips (all if 0) for FVD; pixel folders only."""
        if self.encoding != "pixels":
            raise UserValueError(f"{self.folder} holds {self.encoding} latents; FVD needs a pixel folder "
                                 "(`layersync video prepare --encoding=pixels`)")
        n = min(limit, len(self)) if limit else len(self)
        for lo in range(0, n, batch_size):
            yield np.array(self.array[lo : min(lo + batch_size, n)])  # a writable copy


class EncodedSource:
    """Pixel clips encoded to SD-VAE latents batch by batch, for training without precomputed latents."""

    def __init__(self, pixels: PreparedClips, vae: FrameVAE):
        if pixels.encoding != "pixels":
            raise UserValueError(f"{pixels.folder} already holds latents; use it directly")
        self.pixels, self.vae = pixels, vae
        self.sample_shape = vae.latent_shape(pixels.sample_shape)

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor | None = None) -> Batch:
        """Posterior means of clips `indices` (deterministic: `keys` are not used)."""
        return Batch(self.vae.encode(self.pixels.batch(indices).x))
