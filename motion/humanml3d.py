"""HumanML3D on disk → motion items with captions, and the trainer's DataSource over them.

Folder layout (Guo et al. 2022; the embedded set is written the same way by `synthetic.py`):

    new_joint_vecs/<id>.npy   (T, 263) features at 20 fps        texts/<id>.txt   caption#tokens#start#end
    new_joints/<id>.npy       (T, 22, 3) joints                  train.txt, val.txt, test.txt: one id a line
    Mean.npy, Std.npy         (263,) normalisation                M<id>: the mirror image of clip <id>

Loading follows T2M's `Text2MotionDatasetV2`: a caption with start = end = 0 (NaN counts as 0) describes
the whole clip; any other caption describes frames [⌊20·start⌋, ⌊20·end⌋) and becomes an item of its own.
Clips and segments shorter than `min_frames` or of `max_frames + unit_length` frames or more are dropped
(T2M: 40 and 200 for max_frames = 196). Unlike T2M, which skips silently, every dropped clip or caption is
counted and logged with its reason: non-finite values, a missing file, a bad segment (end ≤ start, or
starting past the clip), a length out of range, or no caption left.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.sample_rng import uniform
from layersync.core.trainer import Batch
from layersync.motion.features import FEATURE_DIM, FPS

log = logging.getLogger("layersync")
Split = Literal["train", "val", "test"]
UNIT_LENGTH = 4  # T2M crops every motion to a multiple of 4 frames (its evaluator's step)


@dataclass(frozen=True)
class Caption:
    """One description: the sentence and its `word/POS` tokens."""

    text: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class MotionItem:
    """A clip (or a captioned segment of one) with every caption that describes it."""

    name: str  # the clip id, or "<id>:<first>-<end>" for a segment (frames, end exclusive)
    features: np.ndarray  # (T, 263) float32, not normalised
    captions: tuple[Caption, ...]

    @property
    def length(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class MotionSet:
    """One split in memory with the normalisation it is trained with."""

    items: tuple[MotionItem, ...]
    mean: np.ndarray  # (263,)
    std: np.ndarray  # (263,)
    root: Path
    split: str

    def normalize(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std


def parse_caption_line(line: str, where: str) -> tuple[Caption, float, float]:
    """`caption#tokens#start#end` → (Caption, start s, end s); NaN times count as 0 (as in T2M)."""
    parts = line.rstrip("\n").split("#")
    if len(parts) < 4:
        raise UserValueError(f"{where}: expected 'caption#tokens#start#end', got {line.strip()!r}")
    try:
        start, end = float(parts[2]), float(parts[3])
    except ValueError:
        raise UserValueError(f"{where}: start/end {parts[2]!r}, {parts[3]!r} are not numbers") from None
    start, end = (0.0 if math.isnan(v) else v for v in (start, end))
    return Caption(parts[0].strip(), tuple(parts[1].split())), start, end


def read_split_ids(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    if not path.is_file():
        raise UserFileNotFoundError(f"{path} not found: a HumanML3D folder holds train.txt, val.txt and "
                                    "test.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_mean_std(root: Path) -> tuple[np.ndarray, np.ndarray]:
    stats = []
    for name in ("Mean.npy", "Std.npy"):
        path = root / name
        if not path.is_file():
            raise UserFileNotFoundError(f"{path} not found: HumanML3D keeps Mean.npy and Std.npy by the "
                                        "splits")
        value = np.load(path).astype(np.float32)
        if value.shape != (FEATURE_DIM,) or not np.isfinite(value).all():
            raise UserValueError(f"{path} must hold {FEATURE_DIM} finite values, got shape {value.shape}")
        stats.append(value)
    if (stats[1] <= 0).any():
        raise UserValueError(f"{root / 'Std.npy'} has non-positive entries; it cannot normalise the features")
    return stats[0], stats[1]


def load_split(root: str | Path, split: Split, min_frames: int = 40, max_frames: int = 196,
               limit: int | None = None) -> MotionSet:
    """Read one split of a HumanML3D-layout folder (see the module docstring); `limit` caps the clip count."""
    root = Path(root)
    if not root.is_dir():
        raise UserFileNotFoundError(f"{root}: no such HumanML3D folder")
    mean, std = read_mean_std(root)
    ids = read_split_ids(root, split)[:limit]
    too_long = max_frames + UNIT_LENGTH  # T2M: len >= 200 is dropped for max 196
    items: list[MotionItem] = []
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}

    def drop(reason: str, name: str) -> None:
        dropped[reason] += 1
        examples.setdefault(reason, []).append(name)

    for clip_id in ids:
        path = root / "new_joint_vecs" / f"{clip_id}.npy"
        if not path.is_file():
            drop("missing features file", clip_id)
            continue
        try:
            feats = np.load(path).astype(np.float32)  # never unpickles: allow_pickle stays False
        except (OSError, ValueError, EOFError) as e:  # empty, truncated or not a .npy file at all
            drop("unreadable features file", f"{clip_id}.npy: {type(e).__name__}")
            continue
        if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
            drop(f"features not (T, {FEATURE_DIM})", f"{clip_id}.npy: {feats.shape}")
            continue
        if not np.isfinite(feats).all():
            drop("NaN or inf in features", clip_id)
            continue
        if not min_frames <= len(feats) < too_long:
            drop("clip length out of range", clip_id)
            continue
        text_path = root / "texts" / f"{clip_id}.txt"
        if not text_path.is_file():
            drop("missing captions file", clip_id)
            continue
        try:
            lines = text_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:  # HumanML3D's captions are UTF-8; latin-1 or UTF-16 is a bad copy
            drop("captions file not UTF-8", f"{clip_id}.txt: byte {e.start}")
            continue
        whole: list[Caption] = []
        segments = 0
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                caption, start, end = parse_caption_line(line, f"{text_path}:{n}")
            except UserValueError:
                drop("malformed caption line", f"{clip_id}.txt:{n}")
                continue
            if start == 0.0 and end == 0.0:
                whole.append(caption)
                continue
            first, stop = int(start * FPS), int(end * FPS)
            if first < 0 or stop <= first or first >= len(feats):
                drop("bad caption segment", f"{clip_id}.txt:{n}")
                continue
            segment = feats[first:stop]
            if not min_frames <= len(segment) < too_long:
                drop("segment length out of range", f"{clip_id}.txt:{n}")
                continue
            items.append(MotionItem(f"{clip_id}:{first}-{first + len(segment)}", segment, (caption,)))
            segments += 1
        if not whole:
            if not segments:
                drop("no usable caption", clip_id)
            continue
        items.append(MotionItem(clip_id, feats, tuple(whole)))
    if dropped:  # every bad file named (the first 10 per reason), as image, audio and video report theirs
        detail = "; ".join(f"{n} × {why} ({', '.join(examples[why][:10])}{', …' if n > 10 else ''})"
                           for why, n in sorted(dropped.items()))
        log.warning("%s/%s: kept %d items, dropped %s", root.name, split, len(items), detail)
    if not items:
        raise UserValueError(f"{root}/{split}: no usable motion (frames in [{min_frames}, {too_long}), "
                             "finite features, a caption)")
    return MotionSet(tuple(items), mean, std, root, split)


def crop_length(length: int, max_frames: int, random: bool, u: float | None = None) -> int:
    """T2M's training crop: a multiple of 4 frames, one unit shorter with probability 1/3 when random.

    `u` ∈ [0, 1) is the draw that decides (shorter when u ≥ 2/3); None draws from torch's global RNG, as the
    evaluator's seeded training does."""
    units = length // UNIT_LENGTH
    if random and units > 1 and (torch.randint(3, (1,)).item() == 2 if u is None else u >= 2 / 3):
        units -= 1
    return min(units * UNIT_LENGTH, max_frames)


def pad_batch(clips: list[np.ndarray], max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (T_i, 263) clips → x (B, 263, L) zero-padded and token mask (B, L), True = real frame."""
    x = torch.zeros(len(clips), FEATURE_DIM, max_frames)
    mask = torch.zeros(len(clips), max_frames, dtype=torch.bool)
    for i, clip in enumerate(clips):
        x[i, :, : len(clip)] = torch.from_numpy(np.ascontiguousarray(clip.T))
        mask[i, : len(clip)] = True
    return x, mask


class MotionSource:
    """The trainer's DataSource: one sample per (item, caption) pair, cropped and padded to `max_frames`.

    `text_embeddings` (C, D) holds one precomputed row per distinct caption text; the frozen text encoder
    never runs during training. Crops draw from each sample's key (core/sample_rng.py), a function of (seed,
    step, slot), so a resumed run and any process count see the same batches.
    """

    def __init__(self, data: MotionSet, text_rows: dict[str, int], text_embeddings: torch.Tensor,
                 max_frames: int, random_crop: bool = True):
        self.data, self.embeddings = data, text_embeddings
        self.max_frames, self.random_crop = max_frames, random_crop
        self.pairs = [(i, text_rows[c.text]) for i, item in enumerate(data.items) for c in item.captions]
        self.normalized = [data.normalize(item.features) for item in data.items]

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor) -> Batch:
        clips, rows = [], []
        shorten, place = uniform(keys, "crop_length").tolist(), uniform(keys, "crop_start").tolist()
        for j, index in enumerate(indices.tolist()):
            item, row = self.pairs[index]
            feats = self.normalized[item]
            length = crop_length(len(feats), self.max_frames, self.random_crop, shorten[j])
            start = int(place[j] * (len(feats) - length + 1)) if self.random_crop else 0
            clips.append(feats[start:start + length])
            rows.append(row)
        x, mask = pad_batch(clips, self.max_frames)  # (B, 263, L), (B, L)
        return Batch(x=x, cond=self.embeddings[rows], token_mask=mask, loss_mask=mask[:, None].float())
