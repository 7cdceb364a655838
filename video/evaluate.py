"""FVD for real clips: I3D features (StyleGAN-V protocol, `layersync.metrics.fvd`) against a reference that
is either a prepared pixel folder (its clips are embedded here) or stored statistics (npz: `mu`, `sigma`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from layersync.metrics.frechet import FeatureStats, GaussianStats

FVD_METRIC = "fvd: Fréchet video distance, I3D Kinetics-400 logits, StyleGAN-V protocol (16 frames)"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_reference(reference: str | os.PathLike) -> Path:
    """The reference path if it is a stats .npz or a prepared folder; FileNotFoundError otherwise."""
    path = Path(reference)
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir() and (path / "manifest.json").is_file():
        return path
    raise FileNotFoundError(f"FVD reference {reference} is neither a statistics .npz (mu, sigma) nor a "
                            "prepared clip folder (layersync video prepare --encoding=pixels)")


def _batches(clips: np.ndarray, batch_size: int):
    for lo in range(0, len(clips), batch_size):
        yield clips[lo : lo + batch_size]


def fvd_against(clips: np.ndarray, reference: str | os.PathLike, i3d: str | os.PathLike | None = None,
                detector=None, batch_size: int = 16, reference_limit: int = 0) -> dict:
    """FVD of uint8 clips (N, T, H, W, 3) against `reference` (see `check_reference`), as a result dict."""
    from layersync.metrics.fvd import fvd_from_clips
    from layersync.metrics.i3d import load_i3d
    from layersync.video.prepared import PreparedClips

    path = check_reference(reference)
    device = _device()
    detector = detector if detector is not None else load_i3d(i3d or None, device)
    if path.suffix == ".npz":
        ref = GaussianStats.load(path)
    else:
        ref = PreparedClips(path).pixel_batches(batch_size, reference_limit)
    result = fvd_from_clips(_batches(clips, batch_size), ref, detector=detector, device=device)
    return {"fvd": result.fvd, "n_samples": result.num_gen, "n_reference": result.num_ref,
            "metric": FVD_METRIC, "reference": str(path), "protocol": result.protocol.to_dict()}


def reference_stats(folder: str | os.PathLike, out: str | os.PathLike, i3d: str | os.PathLike | None = None,
                    detector=None, batch_size: int = 16, limit: int = 0) -> GaussianStats:
    """I3D feature statistics of a prepared pixel folder, saved as an npz (`mu`, `sigma`) for later FVDs."""
    from layersync.metrics.fvd import STYLEGAN_V, clip_features
    from layersync.metrics.i3d import load_i3d
    from layersync.video.prepared import PreparedClips

    device = _device()
    detector = detector if detector is not None else load_i3d(i3d or None, device)
    stats = None
    for batch in PreparedClips(folder).pixel_batches(batch_size, limit):
        features = clip_features([batch], detector, STYLEGAN_V, device)  # (B, 400) for I3D
        if stats is None:
            stats = FeatureStats(features.shape[1])
        stats.update(features)
    gaussian = stats.gaussian()
    gaussian.save(out)
    return gaussian
