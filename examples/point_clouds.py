"""LayerSync on a modality this toolkit does not ship, from `layersync.core` alone: 3-D point clouds.

    accelerate launch examples/point_clouds.py                   # LayerSync 2←4; ~80 s of CPU, README
    accelerate launch examples/point_clouds.py --preset=vanilla  # the same run without LayerSync
    python examples/point_clouds.py --preset=quick               # seconds; what tests/test_examples.py runs

A cloud is a set, so each point is one token with no position (`DiTConfig(positions="none")`: the model is
permutation-equivariant). Clouds hold 32–64 points, padded to 64: `token_mask` keeps padding out of attention
and LayerSync, `loss_mask` out of the flow loss. The data source draws each cloud from its index (the protocol
is `len()` and `batch(indices) -> Batch`), so nothing is stored and a resumed run sees the same clouds.
Leaves config.json, checkpoints/, log.jsonl, samples_ema.png (a 3-D scatter per class) and evals.jsonl
(MMD/COV/1-NNA on Chamfer distances to held-out clouds, per class, averaged) in `run_dir`.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from layersync.core import (Batch, DiT, DiTConfig, Interpolant, LayerSync, TrainConfig, Trainer, guided, heun,
                            resolve_config, run_main, time_grid)
from layersync.metrics import point_cloud_metrics

SHAPES = ("sphere", "cube", "torus", "cone")  # class labels 0..3, all surfaces


@dataclass(frozen=True)
class PointCloudRun:
    run_dir: str = "runs/point_clouds"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        total_steps=1000, global_batch_size=16, lr=3e-4, warmup_steps=100, ema_decay=0.995, log_every=50,
        ckpt_every=500))
    depth: int = 6
    hidden_size: int = 64
    num_heads: int = 4
    layersync: str = "2:4"  # student:teacher ("" = vanilla); block 4 of 6 is outside the last 20%
    layersync_weight: float = 0.2
    min_points: int = 32
    max_points: int = 64
    sample_steps: int = 20  # Heun steps
    cfg_scale: float = 1.0  # classifier-free guidance (1 = none)
    eval_per_class: int = 32  # samples and held-out references per class
    resumable_keys: ClassVar[tuple[str, ...]] = ("sample_steps", "cfg_scale", "eval_per_class")


PRESETS = {"layersync": {}, "vanilla": {"layersync": "", "run_dir": "runs/point_clouds_vanilla"},
           "quick": {"train.total_steps": 20, "train.global_batch_size": 8, "train.warmup_steps": 0,
                     "train.log_every": 5, "train.ckpt_every": 10, "depth": 3, "hidden_size": 32,
                     "layersync": "1:2", "min_points": 12, "max_points": 24, "sample_steps": 3,
                     "cfg_scale": 2.0, "eval_per_class": 3}}


def shape_points(label: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n points on the surface of shape `label`, randomly rotated about z and scaled: (n, 3)."""
    u = torch.rand(n, 3, generator=g)
    if label == 0:  # sphere: normalised Gaussians are uniform on it
        p = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    elif label == 1:  # cube: a random point pushed onto a random face
        p, face = u * 2 - 1, torch.randint(0, 3, (n,), generator=g)
        p[torch.arange(n), face] = torch.randint(0, 2, (n,), generator=g) * 2.0 - 1
    elif label == 2:  # torus, radii 1 and 0.35
        a, b = 2 * math.pi * u[:, 0], 2 * math.pi * u[:, 1]
        p = torch.stack([(1 + 0.35 * b.cos()) * a.cos(), (1 + 0.35 * b.cos()) * a.sin(), 0.35 * b.sin()], 1)
    else:  # cone (side), apex up; √u makes it uniform in area
        r, a = u[:, 0].sqrt(), 2 * math.pi * u[:, 1]
        p = torch.stack([r * a.cos(), r * a.sin(), 1 - 2 * r], 1)
    angle, scale = (float(v) for v in torch.rand(2, generator=g) * torch.tensor([2 * math.pi, 0.3]))
    c, s = math.cos(angle), math.sin(angle)
    return (0.7 + scale) * p @ torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T


class ShapeClouds:
    """A DataSource: cloud i comes from a generator seeded by i; class i mod 4, min_points to max_points."""

    def __init__(self, cfg: PointCloudRun, size: int = 10_000, offset: int = 0):
        self.cfg, self.size, self.offset = cfg, size, offset  # offset ≥ size: held-out clouds

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: torch.Tensor, keys: torch.Tensor | None = None) -> Batch:
        """Clouds `indices`; each is fixed by its index, so the per-sample RNG `keys` are not needed."""
        cfg, n = self.cfg, len(indices)
        x, mask = torch.zeros(n, 3, cfg.max_points), torch.zeros(n, cfg.max_points, dtype=torch.bool)
        for row, i in enumerate(indices.tolist()):
            g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.offset + i)
            size = int(torch.randint(cfg.min_points, cfg.max_points + 1, (), generator=g))
            x[row, :, :size], mask[row, :size] = shape_points(i % len(SHAPES), size, g).T, True
        return Batch(x=x, cond=indices % len(SHAPES), token_mask=mask, loss_mask=mask[:, None].float())


def build_model(cfg: PointCloudRun) -> DiT:
    """One token per point, no positions: the DiT is permutation-equivariant over each cloud."""
    return DiT(DiTConfig(input_size=(cfg.max_points,), in_channels=3, patch_size=1, depth=cfg.depth,
                         hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_classes=len(SHAPES),
                         positions="none"))


def generate(model: DiT, cfg: PointCloudRun, like: Batch, seed: int) -> torch.Tensor:
    """Clouds of `like`'s classes and sizes, integrated from t = 1 to 0: (B, 3, N), padding meaningless."""
    noise = torch.randn(like.x.shape, generator=torch.Generator().manual_seed(seed))
    model_fn = guided(model.eval(), like.cond, None, cfg.cfg_scale, to_velocity=Interpolant().velocity,
                      token_mask=like.token_mask)
    return heun(model_fn, noise, time_grid(cfg.sample_steps)).x


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(PointCloudRun, PRESETS, "layersync", argv, prog="examples/point_clouds.py")
    torch.manual_seed(cfg.train.seed)  # the initial weights follow the run's seed
    model = build_model(cfg)
    regularizer = LayerSync(cfg.layersync, cfg.layersync_weight, depth=cfg.depth) if cfg.layersync else None
    if dry_run:
        print(cfg)
        return {}
    held_out = ShapeClouds(cfg, offset=10**9).batch(torch.arange(len(SHAPES) * cfg.eval_per_class))

    def sample_fn(ema: DiT, step: int, run_dir: Path) -> None:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close
        cols = min(4, cfg.eval_per_class)
        like = held_out.select(slice(0, cols * len(SHAPES)))  # `cols` of each class, one row per class
        like = like.select(like.cond.argsort(stable=True))
        clouds = generate(ema, cfg, like, seed=cfg.train.seed)
        fig = Figure(figsize=(2 * cols, 2 * len(SHAPES)))
        for k in range(len(like.x)):
            ax = fig.add_subplot(len(SHAPES), cols, k + 1, projection="3d")
            pts = clouds[k][:, like.token_mask[k]]  # (3, n): the real points only
            ax.scatter(*pts, s=4, c=pts[2], cmap="viridis")
            ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), box_aspect=(1, 1, 1), title=SHAPES[like.cond[k]])
            ax.set_axis_off()
        fig.savefig(run_dir / "samples_ema.png", dpi=80)

    def eval_fn(ema: DiT, step: int) -> dict:
        clouds = generate(ema, cfg, held_out, seed=cfg.train.seed + 1).transpose(1, 2)  # (B, N, 3)
        refs, mask = held_out.x.transpose(1, 2), held_out.token_mask
        per_class = [point_cloud_metrics(clouds[sel], refs[sel], mask[sel], mask[sel])
                     for sel in (held_out.cond == c for c in range(len(SHAPES)))]
        return {k: sum(m[k] for m in per_class) / len(per_class) for k in per_class[0]}

    trainer = Trainer(cfg.train, model, Interpolant(), ShapeClouds(cfg), cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn, eval_fn=eval_fn)
    return trainer.fit()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="examples/point_clouds.py")
