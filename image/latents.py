"""The training set `recipes/image_sit.py --data=OUT` reads: shards written by `layersync image prepare`.

Each draw samples the latent afresh from the stored moments, z = s · (μ + σ ε) with s = 0.18215 for the
SD-VAE, and (with `flip`) takes the moments of the mirrored image for a random half of the batch, the
horizontal-flip augmentation of DiT/SiT/REPA. Shards are memory-mapped: only the rows a batch needs are read.
Each sample's flip and ε come from its own key (core/sample_rng.py), a function of (seed, step, slot), so any
process count draws the same latents and a resumed run replays them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.sample_rng import normal, uniform
from layersync.core.trainer import Batch
from layersync.image.prepare import FORMAT
from layersync.image.vae import sample_latents


@dataclass(frozen=True)
class LatentIndex:
    """A prepared folder's index.json."""

    root: Path
    image_size: int
    latent_shape: tuple[int, int, int]  # (C, h, w)
    scaling_factor: float
    flip: bool  # moments of mirrored images stored
    keep_images: bool  # cropped uint8 images stored
    num_classes: int
    vae_path: str
    vae_weights_sha256: str
    shard_names: tuple[str, ...]
    shard_counts: tuple[int, ...]

    @classmethod
    def load(cls, root: str | os.PathLike) -> LatentIndex:
        root = Path(root)
        path = root / "index.json"
        if not path.is_file():
            hint = ("the prepare run has not finished: rerun it" if (root / "plan.json").is_file()
                    else "make it with `layersync image prepare SOURCE OUT --vae VAE_FOLDER`")
            raise UserFileNotFoundError(f"{path} does not exist; {hint}")
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise UserValueError(f"{path} has format {d.get('format')}, this version reads format {FORMAT}; "
                                 "prepare the data again")
        return cls(root, int(d["image_size"]), tuple(d["latent_shape"]), float(d["scaling_factor"]),
                   bool(d["flip"]), bool(d["keep_images"]), int(d["num_classes"]), d["vae_path"],
                   d["vae_weights_sha256"], tuple(s["name"] for s in d["shards"]),
                   tuple(int(s["count"]) for s in d["shards"]))

    @property
    def num_items(self) -> int:
        return sum(self.shard_counts)


class LatentSource:
    """DataSource over prepared shards: Batch(x = sampled latents, cond = labels, raw = images or None)."""

    def __init__(self, root: str | os.PathLike, flip: bool = True, with_images: bool = False):
        self.index = index = LatentIndex.load(root)
        if flip and not index.flip:
            raise UserValueError(f"{root} stores no moments of flipped images; use --flip=false or prepare "
                                 "with flips")
        if with_images and not index.keep_images:
            raise UserValueError(f"{root} stores no images for REPA's encoder; prepare it with --keep-images")
        if index.num_items == 0:
            raise UserValueError(f"{root} holds no encoded images")
        self.flip, self.with_images = flip, with_images
        self.starts = np.cumsum((0,) + index.shard_counts)  # shard s holds [starts[s], starts[s + 1])
        self.labels = torch.from_numpy(np.concatenate(
            [np.load(index.root / name / "labels.npy") for name in index.shard_names]))  # (N,)
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _map(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._maps:
            self._maps[key] = np.load(self.index.root / self.index.shard_names[shard] / f"{name}.npy",
                                      mmap_mode="r")
        return self._maps[key]

    def _rows(self, names: tuple[str, ...], which: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Row indices[j] (global) of array names[which[j]], for every j, in the given order. Each (shard,
        array) is read once, in ascending row order, straight into its places in the result."""
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        group = shard * len(names) + which
        order = np.lexsort((indices, group))  # by (shard, array), then row: sequential reads
        out = None
        for part in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
            if not len(part):
                continue
            s, k = divmod(int(group[part[0]]), len(names))
            rows = self._map(s, names[k])
            if out is None:
                out = np.empty((len(indices), *rows.shape[1:]), rows.dtype)
            out[part] = rows[indices[part] - self.starts[s]]
        return out

    def batch(self, indices: torch.Tensor, keys: torch.Tensor) -> Batch:
        idx = indices.cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)})")
        flipped = uniform(keys, "flip") < 0.5 if self.flip else torch.zeros(len(idx), dtype=torch.bool)
        c, h, w = self.index.latent_shape
        which = flipped.numpy().astype(np.int64)  # 1: the mirrored image's moments
        moments = self._rows(("moments", "moments_flip"), which, idx)  # (B, 2C, h, w)
        x = sample_latents(torch.from_numpy(moments), self.index.scaling_factor,
                           normal(keys, "latent", (c, h, w)))  # (B, C, h, w)
        raw = None
        if self.with_images:
            images = torch.from_numpy(self._rows(("images",), np.zeros_like(idx), idx))
            images = images.permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
            raw = images.float() / 127.5 - 1.0  # [-1, 1], what DinoV2Encoder takes
        return Batch(x=x, cond=self.labels[torch.as_tensor(idx)], raw=raw)
