"""Honest evaluation for the embedded balls run: a Fréchet distance under a small, cached video encoder.

FVD (Unterthiner et al. 2019) measures clips with I3D, trained on Kinetics; its weights are not available
offline and its features mean little on 8 frames of 16×16. The default run therefore measures samples with a
small 3-D CNN trained here on the embedded clips, the way FVD uses I3D:

    FD = ‖μ_s − μ_r‖² + Tr(Σ_s + Σ_r − 2 (Σ_s Σ_r)^{1/2})

over its 64-d penultimate features, against the held-out "test" split (clips the generator never sees).
The encoder learns, from the labels the generator knows, the number of balls (cross-entropy), which colours
appear and whether two balls collide (binary cross-entropy), plus a self-supervised task: whether the frames
of a clip were shuffled (half of every batch is, by a random non-identity, non-reversing permutation), so
that its features respond to broken motion as well as to wrong appearance. The number is named `fd_balls`
and is only comparable between runs that use the same encoder (the same cache key on the same torch build).

Training is deterministic (fixed seed, deterministic algorithms, one CPU thread, fixed batch order) and the
result is cached in `$LAYERSYNC_CACHE` (default `~/.cache/layersync`) as `balls_encoder-<key>.pt`, written
atomically and verified by sha256 when loaded.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import cached
from ..core.determinism import deterministic_cpu
from ..core.errors import UserValueError
from ..metrics.frechet import FeatureStats, GaussianStats
from . import balls
from .balls import NUM_COLOURS, BallsConfig, balls_clips

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
METRIC = ("fd_balls: Fréchet distance on the {}-d features of a small 3-D CNN trained on the embedded balls "
          "clips (not I3D FVD)")


@dataclass(frozen=True)
class EncoderConfig:
    """Training recipe of the evaluation encoder and the clips it learns from; hashed into the cache name."""

    data: BallsConfig = field(default_factory=BallsConfig)
    seed: int = 0
    epochs: int = 6
    batch_size: int = 64
    peak_lr: float = 3e-3  # one-cycle schedule (Smith & Topin 2019) over all steps
    weight_decay: float = 1e-4
    shuffle_weight: float = 3.0  # the slowest task to learn; ×3 brings it to ~99% test accuracy
    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 64


class BallsEncoder(nn.Module):
    """Three conv3×3×3 + ReLU + max-pool stages → Linear to F features → ReLU → task logits."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        c, t, h, w = cfg.data.shape
        if t % 4 or h % 8 or w % 8:
            raise UserValueError(f"the encoder pools time by 4 and space by 8: clips (T, H, W) = ({t}, {h}, "
                                 f"{w}) must be divisible by (4, 8, 8)")
        w1, w2, w3 = cfg.widths
        self.conv1 = nn.Conv3d(c, w1, 3, padding=1)
        self.conv2 = nn.Conv3d(w1, w2, 3, padding=1)
        self.conv3 = nn.Conv3d(w2, w3, 3, padding=1)
        self.fc = nn.Linear(w3 * (t // 4) * (h // 8) * (w // 8), cfg.feature_dim)
        self.max_balls = cfg.data.max_balls
        self.head = nn.Linear(cfg.feature_dim, self.max_balls + NUM_COLOURS + 2)  # count|colours|hit|shuffled

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, F) of clips (B, 3, T, H, W), before the ReLU so no unit is dead."""
        h = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2))  # (B, w1, T, H/2, W/2): space first
        h = F.max_pool3d(F.relu(self.conv2(h)), 2)  # (B, w2, T/2, H/4, W/4)
        h = F.max_pool3d(F.relu(self.conv3(h)), 2)  # (B, w3, T/4, H/8, W/8)
        return self.fc(h.flatten(1))  # (B, F)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(F.relu(self.features(x)))  # (B, K + C + 2)
        k = self.max_balls
        return {"count": logits[:, :k], "colours": logits[:, k : k + NUM_COLOURS],
                "collided": logits[:, -2], "shuffled": logits[:, -1]}


def cache_key(cfg: EncoderConfig) -> str:
    """16 hex digits of sha256(config, cache format, source of this module, of the clip generator and of
    core/cached.py)."""
    return cached.cache_key(cfg, CACHE_FORMAT, (__file__, balls.__file__))


def shuffle_frames(x: torch.Tensor, which: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Clips (B, C, T, H, W) with the frames of rows `which` (B,) bool permuted, never to the identity or
    the reversal (elastic bounces are time-reversible, so a reversed clip is a valid clip)."""
    t = x.shape[2]
    identity, reverse = torch.arange(t), torch.arange(t).flip(0)
    out = x.clone()
    for i in torch.nonzero(which).flatten().tolist():
        perm = identity
        while torch.equal(perm, identity) or torch.equal(perm, reverse):
            perm = torch.randperm(t, generator=generator)
        out[i] = x[i][:, perm]
    return out


def _losses(model: BallsEncoder, cfg: EncoderConfig, x, count, colours, collided, shuffled) -> torch.Tensor:
    """Sum of the task losses. The colour loss sums over the colours: averaged, it is drowned by the other
    tasks (~81% test accuracy instead of 99%+)."""
    out = model(x)
    return (F.cross_entropy(out["count"], count - 1)
            + F.binary_cross_entropy_with_logits(out["colours"], colours, reduction="none").sum(1).mean()
            + F.binary_cross_entropy_with_logits(out["collided"], collided)
            + cfg.shuffle_weight * F.binary_cross_entropy_with_logits(out["shuffled"], shuffled))


def train_encoder(cfg: EncoderConfig) -> BallsEncoder:
    """Train the encoder on the train split, bit-for-bit reproducibly on a given machine and torch build.

    One CPU thread (the reduction order then does not depend on the core count), deterministic algorithms
    and a forked RNG: the caller's RNG, thread count and determinism flag are left as they were.
    """
    data = balls_clips("train", cfg.data)
    n = len(data.count)
    steps = cfg.epochs * -(-n // cfg.batch_size)
    start = time.perf_counter()
    with deterministic_cpu(cfg.seed):  # the seeded CPU generator draws the initialisation
        order = torch.Generator().manual_seed(cfg.seed)  # batch order, shuffled rows and permutations
        model = BallsEncoder(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.peak_lr, total_steps=steps)
        model.train()
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n, generator=order).split(cfg.batch_size):
                which = torch.rand(len(idx), generator=order) < 0.5
                x = shuffle_frames(data.clips[idx], which, order)
                loss = _losses(model, cfg, x, data.count[idx], data.colours[idx], data.collided[idx],
                               which.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    log.info("trained the balls evaluation encoder in %.1f s (%d epochs on %d clips)",
             time.perf_counter() - start, cfg.epochs, n)
    return model.eval()


class BallsEvaluator:
    """Scores unconditional clips: Fréchet distance to the held-out balls clips under `BallsEncoder`."""

    def __init__(self, model: BallsEncoder, cfg: EncoderConfig, reference: dict | None = None):
        """`reference`: the cached statistics and accuracies (see `reference_stats`); computed if None."""
        self.model, self.cfg = model.eval(), cfg
        reference = reference_stats(self) if reference is None else reference
        self.reference = GaussianStats(np.asarray(reference["mu"]), np.asarray(reference["sigma"]))
        self.test_accuracy = {k: float(v) for k, v in reference["test_accuracy"].items()}

    @classmethod
    def load_or_train(cls, cfg: EncoderConfig = EncoderConfig(),
                      cache_dir: str | os.PathLike | None = None) -> BallsEvaluator:
        """The cached encoder for `cfg` in `cache_dir` (default `$LAYERSYNC_CACHE`), trained if absent.

        A file that fails its checksum or cannot be read is logged as a warning, retrained and replaced.
        """
        return cached.load_or_build("balls_encoder", cache_key(cfg), CACHE_FORMAT,
                                    lambda: cls(train_encoder(cfg), cfg), _payload,
                                    lambda state: cls(_model(state, cfg), cfg, state["reference"]), cache_dir)

    @property
    def name(self) -> str:
        return f"balls_encoder-{cache_key(self.cfg)}"

    @torch.no_grad()
    def features(self, clips: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Features (N, F) float64 of clips (N, 3, T, H, W) in [-1, 1] (clamped: what a video file holds)."""
        shape = self.cfg.data.shape
        if clips.ndim != 5 or tuple(clips.shape[1:]) != shape:
            raise UserValueError(f"clips must be (N, {', '.join(map(str, shape))}), got {tuple(clips.shape)}")
        if not torch.isfinite(clips).all():
            raise UserValueError("clips contain NaN or inf values; the sampler diverged")
        out = [self.model.features(c.float().clamp(-1, 1)).double() for c in clips.split(batch_size)]
        return torch.cat(out).numpy()

    def evaluate(self, clips: torch.Tensor) -> dict:
        """fd_balls of clips (N, 3, T, H, W) in [-1, 1] against the test split, and the same distance for N
        train clips (real against real: the value a perfect generator would reach with N samples)."""
        n = len(clips)
        if n < self.cfg.feature_dim + 1:
            raise UserValueError(f"fd_balls needs at least {self.cfg.feature_dim + 1} clips (feature "
                                 f"dimension {self.cfg.feature_dim} + 1) for a full-rank covariance, got {n}")
        train = balls_clips("train", self.cfg.data).clips
        if n > len(train):
            raise UserValueError(f"at most {len(train)} clips can be scored (the train split's size), got "
                                 f"{n}")
        fd = _gaussian(self.features(clips)).frechet_distance(self.reference)
        floor = _gaussian(self.features(train[:n])).frechet_distance(self.reference)
        return {
            "fd_balls": float(fd),
            "fd_balls_train_clips": float(floor),
            "n_samples": n,
            "metric": METRIC.format(self.cfg.feature_dim),
            "reference": f"embedded balls test split, {self.cfg.data.test_clips} clips",
            "encoder": self.name,
            "encoder_test_accuracy": self.test_accuracy,
        }


def _gaussian(features: np.ndarray) -> GaussianStats:
    stats = FeatureStats(features.shape[1])
    stats.update(features)
    return stats.gaussian()


@torch.no_grad()
def reference_stats(evaluator: BallsEvaluator) -> dict:
    """Feature mean and covariance of the test split, and the encoder's accuracy on each task there."""
    test = balls_clips("test", evaluator.cfg.data)
    stats = _gaussian(evaluator.features(test.clips))
    gen = torch.Generator().manual_seed(evaluator.cfg.seed + 1)
    which = torch.rand(len(test.count), generator=gen) < 0.5
    out = evaluator.model(shuffle_frames(test.clips, which, gen))
    accuracy = {
        "count": (out["count"].argmax(1) + 1 == test.count).double().mean(),
        "colours": ((out["colours"] > 0).float() == test.colours).double().mean(),
        "collided": ((out["collided"] > 0).float() == test.collided).double().mean(),
        "shuffled": ((out["shuffled"] > 0) == which).double().mean(),
    }
    return {"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma),
            "test_accuracy": {k: float(v) for k, v in accuracy.items()}}


def _payload(evaluator: BallsEvaluator) -> dict:
    """What the cache holds: the encoder and its reference statistics."""
    reference = {"mu": torch.from_numpy(evaluator.reference.mu),
                 "sigma": torch.from_numpy(evaluator.reference.sigma),
                 "test_accuracy": evaluator.test_accuracy}
    return {"state_dict": evaluator.model.state_dict(), "reference": reference}


def _model(state: dict, cfg: EncoderConfig) -> BallsEncoder:
    model = BallsEncoder(cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval()
