"""FVD of generated clips (`layersync.metrics.fvd`) against real data, under one of its two protocols:

- `stylegan-v` (StyleGAN-V's `fvd2048_16f`): statistics of one random 16-frame window in each of the first
  2048 CLEVRER videos (`stylegan_v_windows`), made once by `layersync video fvd-stats --protocol=stylegan-v`
  and stored with the protocol and the detector's sha256, which every later FVD against them checks;
- `prepared-clips`: a prepared pixel folder (its clips are embedded here) or statistics stored from one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserFileNotFoundError, UserValueError
from ..metrics.frechet import FeatureStats, GaussianStats
from ..metrics.fvd import PREPARED_CLIPS, FvdProtocol, ReferenceStats, stylegan_v_protocol
from ..metrics.weight_ids import in_memory
from .clevrer import (ClipSpec, CorruptVideoError, Skipped, decode_video, list_videos, resize_crop,
                      warn_skipped)

FVD_METRIC = "fvd: Fréchet video distance, I3D Kinetics-400 logits, 16-frame clips"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _detector(i3d: str | os.PathLike | None, detector, device) -> tuple[object, dict | None]:
    """The detector and its record: loaded from `i3d`/`$LAYERSYNC_WEIGHTS`, or the object given (no file)."""
    from ..metrics.fvd import detector_record
    from ..metrics.i3d import load_i3d, resolve_i3d

    if detector is not None:
        return detector, None
    path = resolve_i3d(i3d or None)
    return load_i3d(path, device), detector_record(path)


def check_reference(reference: str | os.PathLike) -> Path:
    """The reference path if it is a stats .npz or a prepared folder; FileNotFoundError otherwise."""
    path = Path(reference)
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir() and (path / "manifest.json").is_file():
        return path
    raise UserFileNotFoundError(f"FVD reference {reference} is neither a statistics .npz (`layersync video "
                                "fvd-stats`) nor a prepared clip folder (`layersync video prepare`, pixels)")


def reference_protocol(reference: str | os.PathLike) -> FvdProtocol:
    """The protocol an FVD against `reference` follows: the one its statistics record, else prepared-clips."""
    path = check_reference(reference)
    return ReferenceStats.load(path).protocol if path.suffix == ".npz" else PREPARED_CLIPS


def _batches(clips: np.ndarray, batch_size: int):
    for lo in range(0, len(clips), batch_size):
        yield clips[lo : lo + batch_size]


def fvd_against(clips: np.ndarray, reference: str | os.PathLike, i3d: str | os.PathLike | None = None,
                detector=None, batch_size: int = 16, reference_limit: int = 0) -> dict:
    """FVD of uint8 clips (N, T, H, W, 3) against `reference` (see `check_reference`), as a result dict."""
    from ..metrics.fvd import fvd_from_clips
    from .prepared import PreparedClips

    path = check_reference(reference)
    device = _device()
    detector, record = _detector(i3d, detector, device)
    if path.suffix == ".npz":
        stored = ReferenceStats.load(path)
        if record is not None:
            stored.check_detector(record, path)
        ref, protocol, ref_detector = stored.gaussian, stored.protocol, stored.detector
    else:
        ref, protocol = PreparedClips(path).pixel_batches(batch_size, reference_limit), PREPARED_CLIPS
        ref_detector = None
    result = fvd_from_clips(_batches(clips, batch_size), ref, detector=detector, protocol=protocol,
                            device=device, record=record)
    n_ref = result.num_ref if result.num_ref is not None else stored.num_clips
    return {"fvd": result.fvd, "n_samples": result.num_gen, "n_reference": n_ref,
            "metric": f"{FVD_METRIC}, protocol {protocol.name}", "reference": str(path),
            "protocol": protocol.to_dict(), "detector": result.detector,
            "reference_detector": ref_detector or result.detector}


def _stats_of(batches: Iterable[np.ndarray], detector, protocol: FvdProtocol, device
              ) -> tuple[GaussianStats, int]:
    from ..metrics.fvd import clip_features

    stats = None
    for batch in batches:
        features = clip_features([batch], detector, protocol, device)  # (B, 400) for I3D
        if stats is None:
            stats = FeatureStats(features.shape[1])
        stats.update(features)
    if stats is None:
        raise UserValueError("no real clips to compute FVD statistics from")
    return stats.gaussian(protocol.ddof), stats.count


def reference_stats(folder: str | os.PathLike, out: str | os.PathLike, i3d: str | os.PathLike | None = None,
                    detector=None, batch_size: int = 16, limit: int = 0) -> GaussianStats:
    """`prepared-clips` statistics of a prepared pixel folder, saved as an npz for later FVDs."""
    from .prepared import PreparedClips

    device = _device()
    detector, record = _detector(i3d, detector, device)
    gaussian, count = _stats_of(PreparedClips(folder).pixel_batches(batch_size, limit), detector,
                                PREPARED_CLIPS, device)
    record = record or in_memory("a detector passed as an object")
    ReferenceStats(gaussian, PREPARED_CLIPS, count, record, {"source": str(folder), "limit": limit}).save(out)
    return gaussian


def stylegan_v_windows(videos: Iterable[np.ndarray], spec: ClipSpec, num_videos: int,
                       rng: np.random.Generator, num_frames: int = 16) -> Iterator[np.ndarray]:
    """One uint8 (num_frames, S, S, 3) window per video, for the first `num_videos` long enough.

    A video is taken at the frame rate the model generates (every `spec.frame_stride`-th frame, as StyleGAN-V
    datasets are frame folders at the generator's rate) and size (`resize_crop` to `spec.size`, as the
    training clips); the window is `num_frames` consecutive frames from a start drawn uniformly from all that
    fit (StyleGAN-V's `random.randint(0, n − 16)`); shorter videos are passed over (`discard_short_videos`).
    """
    taken = 0
    for frames in videos:
        frames = frames[:: spec.frame_stride]
        if len(frames) < num_frames:
            continue
        start = int(rng.integers(0, len(frames) - num_frames + 1))
        yield resize_crop(frames[start : start + num_frames], spec.size)
        taken += 1
        if taken == num_videos:
            return


def stylegan_v_reference_stats(root: str | os.PathLike, split: str, out: str | os.PathLike,
                               spec: ClipSpec = ClipSpec(), num_videos: int = 2048, seed: int = 0,
                               i3d: str | os.PathLike | None = None, detector=None,
                               batch_size: int = 16) -> ReferenceStats:
    """StyleGAN-V `fvd2048_16f` statistics of CLEVRER `split` (random windows, ddof 0), saved to `out`.

    Videos are read in ID order; unreadable ones are skipped and warned about, as StyleGAN-V's dataset would
    never list them. `num_videos` below 2048 gives a protocol named `stylegan-v@N`.
    """
    protocol = stylegan_v_protocol(num_videos)
    device = _device()
    detector, record = _detector(i3d, detector, device)
    paths, skipped = list_videos(root, split), []

    def decoded() -> Iterator[np.ndarray]:
        for path in paths:
            try:
                yield decode_video(path)
            except CorruptVideoError as err:
                skipped.append(Skipped(str(path), str(err)))

    rng = np.random.default_rng(seed)
    windows = stylegan_v_windows(decoded(), spec, num_videos, rng, protocol.num_frames)
    batches = (np.stack(chunk) for chunk in _chunks(windows, batch_size))
    gaussian, count = _stats_of(batches, detector, protocol, device)
    warn_skipped(skipped, len(paths))
    sampling = {"source": str(root), "split": split, "frame_stride": spec.frame_stride, "size": spec.size,
                "seed": seed, "unreadable_videos": len(skipped)}
    record = record or in_memory("a detector passed as an object")
    stats = ReferenceStats(gaussian, protocol, count, record, sampling)
    stats.save(out)
    return stats


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
