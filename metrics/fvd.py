"""Fréchet Video Distance (Unterthiner et al. 2019) under the StyleGAN-V protocol (Skorokhodov et al. 2022).

StyleGAN-V (src/metrics/frechet_video_distance.py): clips of 16 consecutive frames, given to the I3D detector
as float RGB in [0, 255] with `rescale=True, resize=True, return_features=True`, so the detector scales to
[−1, 1] and resizes frames to 224×224 itself; the features are the 400 Kinetics logits per clip; the
distance is the Fréchet distance of their Gaussians. Which 16 frames (the first of each generated clip, a
random window of each real video) is the caller's choice; `clip_features` takes the first `num_frames`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from layersync.metrics.frechet import ArrayLike, FeatureStats, GaussianStats, frechet_distance
from layersync.metrics.i3d import NUM_CLASSES, Detector, load_i3d


@dataclass(frozen=True)
class FvdProtocol:
    """Clip length, detector call and features of an FVD variant."""

    name: str = "stylegan_v"
    num_frames: int = 16
    frame_size: int = 224
    pixel_range: str = "float RGB in [0, 255]; the detector maps x ↦ x/255·2−1 ∈ [−1, 1] (rescale=True)"
    resize: str = "inside the detector to 224×224 (resize=True), frame count unchanged"
    features: str = "I3D Kinetics-400 logits before softmax (return_features=True)"
    feature_dim: int = NUM_CLASSES
    detector: str = "i3d_torchscript.pt (StyleGAN-V), TF-Hub i3d-kinetics-400 weights"

    def to_dict(self) -> dict:
        return asdict(self)


STYLEGAN_V = FvdProtocol()


def to_detector_input(clips: ArrayLike, num_frames: int) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 or [0, 255] frames → (B, 3, num_frames, H, W) float32, the first frames."""
    x = torch.as_tensor(clips)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected (B, T, H, W, 3) RGB clips, got shape {tuple(x.shape)}")
    if x.shape[1] < num_frames:
        raise ValueError(f"clips have {x.shape[1]} frames; the protocol needs {num_frames}")
    return x[:, :num_frames].permute(0, 4, 1, 2, 3).float().contiguous()  # (B, 3, T, H, W)


@torch.no_grad()
def clip_features(
    clips: Iterable[ArrayLike],
    detector: Detector,
    protocol: FvdProtocol = STYLEGAN_V,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(N, 400) float64 detector features of batches of (B, T, H, W, 3) clips with values in [0, 255]."""
    out = []
    for batch in clips:
        x = to_detector_input(batch, protocol.num_frames).to(device)
        out.append(detector(x, rescale=True, resize=True, return_features=True).double().cpu())
    if not out:
        raise ValueError("no clips to evaluate: the batch iterator was empty")
    return torch.cat(out).numpy()


def fvd(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FVD between two (N, 400) feature sets: Fréchet distance of their Gaussians (ddof-1 covariances)."""
    return frechet_distance(features_a, features_b)


@dataclass(frozen=True)
class FvdResult:
    """An FVD value with its protocol and sample counts."""

    fvd: float
    protocol: FvdProtocol
    num_gen: int
    num_ref: int | None  # None when the reference came as statistics

    def to_dict(self) -> dict:
        return {"fvd": self.fvd, "protocol": self.protocol.to_dict(), "num_gen": self.num_gen,
                "num_ref": self.num_ref}  # fmt: skip


def fvd_from_clips(
    gen_clips: Iterable[ArrayLike],
    ref_clips_or_stats: Iterable[ArrayLike] | GaussianStats,
    detector: Detector | None = None,
    weights: str | os.PathLike | None = None,
    protocol: FvdProtocol = STYLEGAN_V,
    device: torch.device | str = "cpu",
) -> FvdResult:
    """FVD of generated clip batches against reference clip batches or their `GaussianStats`.

    `detector` defaults to `load_i3d(weights)` (a path, or `$LAYERSYNC_WEIGHTS`).
    """
    if detector is None:
        detector = load_i3d(weights, device)
    gen = clip_features(gen_clips, detector, protocol, device)
    if isinstance(ref_clips_or_stats, GaussianStats):
        stats = FeatureStats(gen.shape[1])
        stats.update(gen)
        return FvdResult(stats.gaussian().frechet_distance(ref_clips_or_stats), protocol, len(gen), None)
    ref = clip_features(ref_clips_or_stats, detector, protocol, device)
    return FvdResult(fvd(gen, ref), protocol, len(gen), len(ref))
