"""CLEVRER videos (Yi et al. 2020) → fixed-length square clips, decoded with PyAV.

The release unpacks to folders of 1,000 videos, `video_00000-01000/video_00000.mp4`, each 128 frames of
480×320 RGB. Video IDs 0–9,999 are the train split, 10,000–14,999 validation and 15,000–19,999 test.

A clip is `num_frames` frames taken every `frame_stride` frames (16 every 4 by default: 64 source frames,
2.6 s at 25 fps); a video yields `clips_per_video` non-overlapping clips from its first frame (0 = as many
as fit). Frames are resized so the shorter side is `size` (bilinear, antialiased) and centre-cropped to
`size`×`size`. A video that cannot be decoded, decodes to fewer frames than its header declares (truncated),
or is too short for one clip is counted, listed in a warning and skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError

log = logging.getLogger(__name__)

ClevrerSplit = Literal["train", "validation", "test"]
SPLIT_IDS: dict[str, range] = {"train": range(0, 10_000), "validation": range(10_000, 15_000),
                               "test": range(15_000, 20_000)}
FOLDER_SPAN = 1000  # videos per folder
_NAME = re.compile(r"^video_(\d{5})\.mp4$")
_FOLDER = re.compile(r"^video_(\d{5})-(\d{5})$")


@dataclass(frozen=True)
@checked(num_frames=">= 1", frame_stride=">= 1", size=">= 1", clips_per_video=">= 0")
class ClipSpec:
    """How clips are cut from a video: frame count, stride between frames, square size, clips per video."""

    num_frames: int = 16
    frame_stride: int = 4
    size: int = 128
    clips_per_video: int = 1  # non-overlapping windows from the first frame; 0 = as many as fit

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.num_frames - 1) * self.frame_stride + 1


class CorruptVideoError(Exception):
    """A video file that cannot be used: unreadable, truncated, or too short."""


@dataclass(frozen=True)
class Skipped:
    """A video left out, and why."""

    path: str
    reason: str


@dataclass
class ClipSet:
    """Clips uint8 (N, T, S, S, 3), where each came from ((video id, first frame)), and the skipped videos."""

    clips: np.ndarray
    sources: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def video_path(root: str | os.PathLike, video_id: int) -> Path:
    """Where the release puts a video: ROOT/video_00000-01000/video_00042.mp4."""
    lo = video_id // FOLDER_SPAN * FOLDER_SPAN
    return Path(root) / f"video_{lo:05d}-{lo + FOLDER_SPAN:05d}" / f"video_{video_id:05d}.mp4"


def list_videos(root: str | os.PathLike, split: ClevrerSplit, limit: int = 0) -> list[Path]:
    """The split's videos present under `root`, in ID order (the first `limit` if > 0)."""
    if split not in SPLIT_IDS:
        raise UserValueError(f"split must be one of {', '.join(SPLIT_IDS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise UserFileNotFoundError(f"CLEVRER root {root} is not a folder")
    ids = SPLIT_IDS[split]
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _FOLDER.match(p.name)):
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m and int(m.group(1)) in ids:
                found.append((int(m.group(1)), p))
    if not found:
        raise UserFileNotFoundError(
            f"no CLEVRER {split} videos (IDs {ids.start}–{ids.stop - 1}) under {root}; expected the release "
            f"layout {video_path(root, ids.start).relative_to(root.parent)}")
    found.sort()
    return [p for _, p in (found[:limit] if limit > 0 else found)]


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3); CorruptVideoError if unreadable or truncated."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:  # e.g. an MP4 cut before its index (moov) at the end
                raise CorruptVideoError("no video stream found (truncated, or not a video)")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)  # from the header; 0 when the container does not say
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, OSError) as err:
        raise CorruptVideoError(f"unreadable ({type(err).__name__}: {err})") from None
    if not frames:
        raise CorruptVideoError("no frames decoded")
    if declared and len(frames) < declared:
        raise CorruptVideoError(f"truncated: decoded {len(frames)} of the {declared} frames its header "
                                "declares")
    return np.stack(frames)


def clip_starts(num_source_frames: int, spec: ClipSpec) -> list[int]:
    """First frames of the non-overlapping clips that fit, at most `clips_per_video` (0 = all)."""
    hop = spec.num_frames * spec.frame_stride
    starts = list(range(0, num_source_frames - spec.span + 1, hop))
    return starts[: spec.clips_per_video] if spec.clips_per_video else starts


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) → (T, size, size, 3): shorter side to `size` (bilinear, antialiased), then a
    centre crop."""
    t, h, w, _ = frames.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, size, size, 3)


def video_clips(path: str | os.PathLike, spec: ClipSpec) -> tuple[np.ndarray, list[int]]:
    """The clips of one video: uint8 (K, T, S, S, 3) and their first frames; CorruptVideoError if none fit."""
    frames = decode_video(path)
    starts = clip_starts(len(frames), spec)
    if not starts:
        raise CorruptVideoError(f"too short: {len(frames)} frames, a clip needs {spec.span}")
    picked = np.stack([frames[s : s + spec.span : spec.frame_stride] for s in starts])  # (K, T, H, W, 3)
    return np.stack([resize_crop(c, spec.size) for c in picked]), starts


def iter_clips(paths: list[Path], spec: ClipSpec, progress: bool = True
               ) -> Iterator[tuple[Path, np.ndarray | None, list[int] | Skipped]]:
    """(path, clips, starts) per readable video and (path, None, Skipped) per bad one, in order."""
    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="decode", unit="video", disable=not progress):
        try:
            clips, starts = video_clips(path, spec)
        except CorruptVideoError as err:
            yield path, None, Skipped(str(path), str(err))
            continue
        yield path, clips, starts


def warn_skipped(skipped: list[Skipped], total: int, shown: int = 20) -> None:
    """One warning naming the skipped videos (the first `shown`) and why."""
    if not skipped:
        return
    listed = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:shown])
    more = f"; … and {len(skipped) - shown} more" if len(skipped) > shown else ""
    log.warning("skipped %d of %d videos (corrupt, truncated or too short): %s%s", len(skipped), total,
                listed, more)


def load_clips(root: str | os.PathLike, split: ClevrerSplit, spec: ClipSpec = ClipSpec(), limit: int = 0,
               progress: bool = True) -> ClipSet:
    """All clips of a split in memory (use `prepare` for the full set); bad videos are skipped and warned."""
    paths = list_videos(root, split, limit)
    chunks, sources, skipped = [], [], []
    for path, clips, info in iter_clips(paths, spec, progress):
        if clips is None:
            skipped.append(info)
            continue
        chunks.append(clips)
        sources += [(video_id(path), s) for s in info]
    warn_skipped(skipped, len(paths))
    if not chunks:
        raise UserValueError(f"none of the {len(paths)} {split} videos under {root} gave a clip; see the "
                             "warning")
    return ClipSet(np.concatenate(chunks), sources, skipped)


def video_id(path: str | os.PathLike) -> int:
    """The ID in a `video_XXXXX.mp4` name."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise UserValueError(f"{path} is not named like a CLEVRER video (video_XXXXX.mp4)")
    return int(m.group(1))
