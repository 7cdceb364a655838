"""The embedded video dataset of the default run: CLEVRER-like clips of coloured balls bouncing on a floor.

CLEVRER (Yi et al. 2020) films rigid objects sliding and colliding on a grey floor. Its 20,000 videos are
tens of gigabytes, so the default run uses clips generated here, deterministically, in a fraction of a second:

- 1–3 balls (uniform) of distinct colours from `COLOURS`, radius `radius_px`, on a grey floor with a
  vertical brightness gradient, each with a soft shadow, shaded as a sphere with a highlight;
- every ball moves at constant speed (uniform in [min_speed, max_speed] px/frame, uniform direction) and
  bounces elastically off the walls and off each other (equal masses: the velocity components along the
  line of centres are exchanged), integrated in `substeps` steps per frame;
- edges are anti-aliased analytically (pixel coverage of each disc).

Clips are float32 (N, 3, T, H, W) in [-1, 1] (x · 2 − 1 from [0, 1] intensities). Each clip comes with
labels that the evaluation encoder learns from: the number of balls, which colours appear, and whether two
balls collide during the clip. The "train" and "test" splits are drawn from different seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from layersync.core.config import checked
from layersync.core.errors import UserValueError

Split = Literal["train", "test"]
SPLIT_SEEDS = {"train": 0, "test": 1}

# CLEVRER's palette minus grey (invisible on the grey floor), saturated for 16×16 pixels; RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.14), "blue": (0.16, 0.32, 0.92), "green": (0.14, 0.68, 0.24),
    "yellow": (0.95, 0.84, 0.18), "purple": (0.56, 0.22, 0.78), "cyan": (0.18, 0.80, 0.86),
    "brown": (0.56, 0.34, 0.14),
}
NUM_COLOURS = len(COLOURS)


@dataclass(frozen=True)
@checked(num_frames=">= 2", size=">= 4", max_balls=">= 1", radius_px="> 0", min_speed="> 0",
         max_speed="> 0", substeps=">= 1", train_clips=">= 1", test_clips=">= 1")
class BallsConfig:
    """Size and physics of the generated clips; the default is 8 frames of 16×16 RGB."""

    num_frames: int = 8
    size: int = 16  # H = W, pixels
    max_balls: int = 3
    radius_px: float = 2.5
    min_speed: float = 0.7  # px per frame
    max_speed: float = 1.5
    substeps: int = 4  # physics steps per frame
    train_clips: int = 4096
    test_clips: int = 1024

    def __post_init__(self):
        if not 1 <= self.max_balls <= NUM_COLOURS:
            raise UserValueError(f"max_balls must be in [1, {NUM_COLOURS}] (one colour each), "
                                 f"got {self.max_balls}")
        if not 0 < self.radius_px < self.size / 4:
            raise UserValueError(f"radius_px must be in (0, size/4) so the balls fit, got {self.radius_px}")
        if not 0 < self.min_speed <= self.max_speed < self.radius_px:
            raise UserValueError(f"need 0 < min_speed ≤ max_speed < radius_px, got {self.min_speed}, "
                                 f"{self.max_speed}, {self.radius_px}")
        if self.train_clips < 1 or self.test_clips < 1:
            raise UserValueError(f"train_clips and test_clips must be ≥ 1, got {self.train_clips}, "
                                 f"{self.test_clips}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return 3, self.num_frames, self.size, self.size


@dataclass(frozen=True)
class BallsClips:
    """Clips (N, 3, T, H, W) in [-1, 1] and their labels."""

    clips: torch.Tensor  # (N, 3, T, H, W) float32
    count: torch.Tensor  # (N,) long, number of balls (1..max_balls)
    colours: torch.Tensor  # (N, NUM_COLOURS) float32, 1 = that colour appears
    collided: torch.Tensor  # (N,) float32, 1 = two balls collide between the first and the last frame


def _initial_state(rng: np.random.Generator, n: int, cfg: BallsConfig):
    """Ball counts, colours, positions and velocities: (n,), (n, K), (n, K, 2), (n, K, 2); K = max_balls."""
    k_max, r, s = cfg.max_balls, cfg.radius_px, cfg.size
    count = rng.integers(1, k_max + 1, size=n)
    colour = np.stack([rng.permutation(NUM_COLOURS)[:k_max] for _ in range(n)])  # distinct per clip
    pos = np.zeros((n, k_max, 2))
    for i in range(n):  # rejection sampling: no two balls overlap at the start
        for k in range(count[i]):
            while True:
                p = rng.uniform(r, s - r, size=2)
                if all(np.linalg.norm(p - pos[i, j]) >= 2 * r + 0.5 for j in range(k)):
                    pos[i, k] = p
                    break
    speed = rng.uniform(cfg.min_speed, cfg.max_speed, size=(n, k_max))
    angle = rng.uniform(0, 2 * np.pi, size=(n, k_max))
    vel = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=-1)  # (n, K, 2), (x, y) px/frame
    return count, colour, pos, vel


def _step(pos: np.ndarray, vel: np.ndarray, active: np.ndarray, cfg: BallsConfig, dt: float) -> np.ndarray:
    """Advance (n, K, 2) positions and velocities in place by dt frames; (n,) bool: two balls collided."""
    r, s = cfg.radius_px, cfg.size
    pos += vel * dt
    hit = np.zeros(len(pos), dtype=bool)
    for i in range(cfg.max_balls):
        for j in range(i + 1, cfg.max_balls):
            d = pos[:, j] - pos[:, i]  # (n, 2)
            dist = np.linalg.norm(d, axis=-1)  # (n,)
            normal = d / np.maximum(dist, 1e-9)[:, None]  # (n, 2)
            closing = ((vel[:, i] - vel[:, j]) * normal).sum(-1)  # > 0: moving towards each other
            touch = active[:, i] & active[:, j] & (dist < 2 * r) & (closing > 0)  # (n,)
            # Equal masses, elastic: exchange the normal velocity components; push the overlap apart.
            dv = np.where(touch[:, None], closing[:, None] * normal, 0.0)
            vel[:, i] -= dv
            vel[:, j] += dv
            push = np.where(touch, (2 * r - dist) / 2, 0.0)[:, None] * normal
            pos[:, i] -= push
            pos[:, j] += push
            hit |= touch
    # Walls last, so that a ball pushed by another is still reflected back onto the floor.
    low, high = pos < r, pos > s - r
    pos[:] = np.where(low, 2 * r - pos, np.where(high, 2 * (s - r) - pos, pos))
    vel[:] = np.where(low, np.abs(vel), np.where(high, -np.abs(vel), vel))
    return hit


def _render(pos: np.ndarray, colour: np.ndarray, active: np.ndarray, cfg: BallsConfig) -> np.ndarray:
    """One frame of n clips: positions (n, K, 2) → RGB (n, 3, H, W) in [0, 1].

    Edges are anti-aliased analytically: a pixel's coverage by a disc of radius r at distance d from its
    centre is clip(r − d + ½, 0, 1), the fraction of a unit pixel inside the disc up to its curvature.
    """
    n, r, s = len(pos), cfg.radius_px, cfg.size
    coords = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
    yy, xx = coords[:, None], coords[None, :]  # (H, 1), (1, W)
    floor = (0.42 + 0.18 * coords / s)[:, None]  # (H, 1): brighter towards the viewer (bottom)
    img = np.broadcast_to(floor, (n, 3, s, s)).astype(np.float32).copy()  # (n, 3, H, W)
    palette = np.asarray(list(COLOURS.values()), dtype=np.float32)  # (C, 3)
    cx, cy = pos[..., 0].astype(np.float32), pos[..., 1].astype(np.float32)  # (n, K)
    for k in range(cfg.max_balls):  # shadows first, so no ball is darkened by another's shadow
        on = active[:, k, None, None]
        d2 = (xx - cx[:, k, None, None] - 0.5 * r) ** 2 + (yy - cy[:, k, None, None] - 0.6 * r) ** 2
        img *= 1 - np.where(on, 0.35 * np.exp(-d2 / (0.9 * r) ** 2), 0.0)[:, None]
    for k in range(cfg.max_balls):
        dx, dy = xx - cx[:, k, None, None], yy - cy[:, k, None, None]  # (n, H, W)
        dist = np.sqrt(dx**2 + dy**2)
        coverage = np.clip(r - dist + 0.5, 0, 1)  # (n, H, W)
        alpha = np.where(active[:, k, None, None], coverage, 0.0)[:, None]  # (n, 1, H, W)
        lambert = 0.55 + 0.45 * np.sqrt(np.clip(1 - (dist / r) ** 2, 0, 1))  # a sphere lit from the viewer
        spec = 0.35 * np.exp(-((dx + 0.35 * r) ** 2 + (dy + 0.35 * r) ** 2) / (0.3 * r) ** 2)
        ball = palette[colour[:, k]][:, :, None, None] * lambert[:, None] + spec[:, None]  # (n, 3, H, W)
        img = img * (1 - alpha) + ball * alpha
    return np.clip(img, 0, 1)


def generate(cfg: BallsConfig, n: int, seed: int, chunk: int = 512) -> BallsClips:
    """`n` clips from `seed`; the same (cfg, n, seed) gives the same clips, bit for bit."""
    rng = np.random.default_rng(seed)
    count, colour, pos, vel = _initial_state(rng, n, cfg)
    active = np.arange(cfg.max_balls)[None] < count[:, None]  # (n, K)
    frames = np.empty((n, 3, cfg.num_frames, cfg.size, cfg.size), dtype=np.float32)
    collided = np.zeros(n, dtype=bool)
    for t in range(cfg.num_frames):
        if t > 0:
            for _ in range(cfg.substeps):
                collided |= _step(pos, vel, active, cfg, 1.0 / cfg.substeps)
        for lo in range(0, n, chunk):
            sl = slice(lo, lo + chunk)
            frames[sl, :, t] = _render(pos[sl], colour[sl], active[sl], cfg)
    present = np.zeros((n, NUM_COLOURS), dtype=np.float32)
    for k in range(cfg.max_balls):
        present[np.arange(n)[active[:, k]], colour[active[:, k], k]] = 1.0
    return BallsClips(torch.from_numpy(frames * 2 - 1), torch.from_numpy(count).long(),
                      torch.from_numpy(present), torch.from_numpy(collided.astype(np.float32)))


@lru_cache(maxsize=4)
def _cached(cfg: BallsConfig, split: Split) -> BallsClips:
    if split not in SPLIT_SEEDS:
        raise UserValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    n = cfg.train_clips if split == "train" else cfg.test_clips
    return generate(cfg, n, seed=SPLIT_SEEDS[split])


def balls_clips(split: Split, cfg: BallsConfig = BallsConfig()) -> BallsClips:
    """The whole split (generated once per process and config); tensors are shared, do not modify them."""
    return _cached(cfg, split)
