"""Fréchet Video Distance (Unterthiner et al. 2019) under two protocols: StyleGAN-V's `fvd2048_16f` and ours.

Both call the detector as StyleGAN-V (universome/stylegan-v @ 3fecd69, src/metrics/frechet_video_distance.py):
clips of 16 frames as float RGB in [0, 255] with `rescale=True, resize=True, return_features=True`, so the
detector scales to [−1, 1] and resizes frames to 224×224 itself; the features are the 400 Kinetics logits.

- `stylegan-v` (`fvd2048_16f`, the FVD papers cite): the first 16 frames of 2048 generated clips against
  one window of 16 consecutive frames, at a uniformly random start, in each of the first 2048 real videos
  that have 16 frames (its dataset's `load_n_consecutive` with a random offset and `discard_short_videos`;
  `metric_utils.compute_feature_stats_for_dataset` reads them in dataset order). Statistics as its
  `FeatureStats.get_mean_cov`: covariance Σxxᵀ/n − μμᵀ, i.e. ddof 0. Generated frames become uint8 before the
  detector (its `img * 127.5 + 128` then uint8, round half up; ours round half to even, `video.media`).
- `prepared-clips`: the real clips as `layersync video prepare` cut them (16 frames every `frame_stride`,
  non-overlapping windows from frame 0), any number of clips, ddof 1. For comparisons between our runs.

Every result records the detector file's sha256 and the name `metrics.weight_ids` gives it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .frechet import ArrayLike, FeatureStats, GaussianStats, frechet_distance
from .i3d import NUM_CLASSES, Detector, load_i3d, resolve_i3d
from .weight_ids import identify, in_memory

from layersync.core.errors import UserValueError


@dataclass(frozen=True)
class FvdProtocol:
    """Clip sampling, detector call and statistics of an FVD variant."""

    name: str
    real_clips: str
    ddof: int  # covariance normalisation n − ddof
    num_gen: int = 0  # generated clips scored (0: as many as given)
    num_real: int = 0  # real videos read at most (0: all)
    num_frames: int = 16
    gen_clips: str = "the first num_frames frames of each generated clip, as uint8"
    frame_size: int = 224
    pixel_range: str = "float RGB in [0, 255]; the detector maps x ↦ x/255·2−1 ∈ [−1, 1] (rescale=True)"
    resize: str = "inside the detector to 224×224 (resize=True), frame count unchanged"
    features: str = "I3D Kinetics-400 logits before softmax (return_features=True)"
    feature_dim: int = NUM_CLASSES

    def to_dict(self) -> dict:
        return asdict(self)


STYLEGAN_V = FvdProtocol(
    name="stylegan-v", ddof=0, num_gen=2048, num_real=2048,
    real_clips="16 consecutive frames (at the frame rate the model generates) from a uniformly random start "
               "in each of the first 2048 real videos with at least 16, in ID order (StyleGAN-V fvd2048_16f)",
)
PREPARED_CLIPS = FvdProtocol(
    name="prepared-clips", ddof=1,
    real_clips="the prepared clips: num_frames every frame_stride, non-overlapping windows from frame 0",
)


def detector_record(path: str | os.PathLike) -> dict:
    """What the result says about the detector: its file's digests and known name (see `weight_ids`)."""
    return identify(path).to_dict()


def to_detector_input(clips: ArrayLike, num_frames: int) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 or [0, 255] frames → (B, 3, num_frames, H, W) float32, the first frames."""
    x = torch.as_tensor(clips)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise UserValueError(f"expected (B, T, H, W, 3) RGB clips, got shape {tuple(x.shape)}")
    if x.shape[1] < num_frames:
        raise UserValueError(f"clips have {x.shape[1]} frames; the protocol needs {num_frames}")
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
        raise UserValueError("no clips to evaluate: the batch iterator was empty")
    return torch.cat(out).numpy()


def fvd(features_a: ArrayLike, features_b: ArrayLike, ddof: int = 1) -> float:
    """FVD of two (N, 400) feature sets: Fréchet distance of their Gaussians (covariances with `ddof`)."""
    return frechet_distance(features_a, features_b, ddof=ddof)


@dataclass(frozen=True)
class FvdResult:
    """An FVD value with its protocol, sample counts and detector weights."""

    fvd: float
    protocol: FvdProtocol
    num_gen: int
    num_ref: int | None  # None when the reference came as statistics
    detector: dict  # `detector_record` of the weights used

    def to_dict(self) -> dict:
        return {"fvd": self.fvd, "protocol": self.protocol.to_dict(), "num_gen": self.num_gen,
                "num_ref": self.num_ref, "detector": self.detector}  # fmt: skip


def _take(clips: Iterable[ArrayLike], count: int) -> Iterable[ArrayLike]:
    """The first `count` clips of the batches (all when 0); ValueError if there are fewer."""
    if count == 0:
        yield from clips
        return
    seen = 0
    for batch in clips:
        batch = batch[: count - seen]
        seen += len(batch)
        yield batch
        if seen == count:
            return
    raise UserValueError(f"the protocol scores {count} generated clips, got {seen}; generate {count}")


def fvd_from_clips(
    gen_clips: Iterable[ArrayLike],
    ref_clips_or_stats: Iterable[ArrayLike] | GaussianStats,
    detector: Detector | None = None,
    weights: str | os.PathLike | None = None,
    protocol: FvdProtocol = PREPARED_CLIPS,
    device: torch.device | str = "cpu",
    record: dict | None = None,
) -> FvdResult:
    """FVD of generated clip batches against reference clip batches or their `GaussianStats`.

    `detector` defaults to `load_i3d(weights)` (a path, or `$LAYERSYNC_WEIGHTS`), whose file is digested
    and named in the result; a detector passed as an object is recorded as `record` (`detector_record` of
    its file) or, without one, as unknown weights. Reference
    statistics must have been computed under the same protocol (`ReferenceStats` checks it).
    """
    if detector is None:
        path = resolve_i3d(weights)
        detector, record = load_i3d(path, device), detector_record(path)
    record = record or in_memory("a detector passed as an object")
    gen = clip_features(_take(gen_clips, protocol.num_gen), detector, protocol, device)
    if isinstance(ref_clips_or_stats, GaussianStats):
        stats = FeatureStats(gen.shape[1])
        stats.update(gen)
        distance = stats.gaussian(protocol.ddof).frechet_distance(ref_clips_or_stats)
        return FvdResult(distance, protocol, len(gen), None, record)
    ref = clip_features(ref_clips_or_stats, detector, protocol, device)
    return FvdResult(fvd(gen, ref, protocol.ddof), protocol, len(gen), len(ref), record)


@dataclass(frozen=True)
class ReferenceStats:
    """Real-clip statistics with the protocol and detector they were computed under (one npz)."""

    gaussian: GaussianStats
    protocol: FvdProtocol
    num_clips: int
    detector: dict
    sampling: dict  # how the real clips were drawn (source, split, clip settings, seed)

    def save(self, path: str | os.PathLike) -> None:
        meta = {"protocol": self.protocol.to_dict(), "num_clips": self.num_clips, "detector": self.detector,
                "sampling": self.sampling}
        np.savez(path, mu=self.gaussian.mu, sigma=self.gaussian.sigma, meta=json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        """Read an npz of `save`; one with only `mu`, `sigma` counts as `prepared-clips`, detector unknown."""
        gaussian = GaussianStats.load(path)
        with np.load(path) as data:
            if "meta" not in data.files:
                return cls(gaussian, PREPARED_CLIPS, 0, in_memory(f"not recorded in {path}"), {})
            meta = json.loads(str(data["meta"]))
        return cls(gaussian, FvdProtocol(**meta["protocol"]), meta["num_clips"], meta["detector"],
                   meta["sampling"])

    def check_detector(self, record: dict, path: str | os.PathLike) -> None:
        """ValueError when these statistics came from other detector weights than `record`'s."""
        if self.detector.get("sha256") and record.get("sha256") != self.detector["sha256"]:
            raise UserValueError(f"{path} was computed with detector {self.detector['name']} (sha256 "
                                 f"{self.detector['sha256']}), but this evaluation uses {record['name']} "
                                 "(sha256 "
                                 f"{record['sha256']}); recompute them with `layersync video fvd-stats`")


def stylegan_v_protocol(num_clips: int = 2048) -> FvdProtocol:
    """StyleGAN-V's protocol with `num_clips` generated clips and real videos; named `stylegan-v` only at
    its 2048 (`fvd2048_16f`), `stylegan-v@N` otherwise (small runs and tests that do not claim its number)."""
    if num_clips == STYLEGAN_V.num_gen:
        return STYLEGAN_V
    return replace(STYLEGAN_V, name=f"stylegan-v@{num_clips}", num_gen=num_clips, num_real=num_clips)
