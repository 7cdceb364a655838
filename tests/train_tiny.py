"""A tiny, fast training run used by the resume and distributed tests (run as a subprocess).

    python tests/train_tiny.py RUN_DIR [--steps N] [--kill-in-save-at STEP] [--reg layersync|sra]
                               [--explode-at STEP --max-nonfinite K]
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from layersync.core import checkpoint as ckpt
from layersync.core.interpolants import Interpolant
from layersync.core.models import DiT, DiTConfig
from layersync.core.regularizers import SRA, LayerSync
from layersync.core.trainer import TensorSource, TrainConfig, Trainer


@dataclass(frozen=True)
class TinyRun:
    resumable_keys: ClassVar[tuple[str, ...]] = ("note",)  # as a recipe's sampling/eval settings

    run_dir: str = ""
    note: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--kill-in-save-at", type=int, default=-1)
    p.add_argument("--disk-full-at", type=int, default=-1, help="the checkpoint of this step hits ENOSPC")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--note", default="", help="a resumable config field (changing it must not block resume)")
    p.add_argument("--reg", choices=("layersync", "sra"), default="layersync",
                   help="sra: an EMA teacher and a trainable head (time gap 0, so no per-process draws)")
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step (kill tests)")
    p.add_argument("--explode-at", type=int, default=-1, help="from this step index on, lr × 1e30 (guard test)")
    p.add_argument("--max-nonfinite", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 4, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    cfg = TrainConfig(seed=3, total_steps=args.steps, global_batch_size=8, grad_accum_steps=args.accum,
                      lr=args.lr, warmup_steps=2, ema_decay=0.9, log_every=1, ckpt_every=5, keep_checkpoints=2,
                      grad_clip=1.0, max_nonfinite_steps=args.max_nonfinite)
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, depth=4, hidden_size=32,
                          num_heads=2, num_classes=3))
    with torch.no_grad():  # move the adaLN gates off zero so LayerSync has a gradient from step 0
        for blk in model.blocks:
            blk.adaLN_modulation[-1].weight.normal_(0, 0.02, generator=g)
    if args.kill_in_save_at >= 0:
        real_save = torch.save

        def dying_save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == args.kill_in_save_at:
                f.write(b"PK\x03\x04 partial checkpoint bytes")  # the write is under way …
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # … when the process dies
            return real_save(obj, f, *a, **k)

        ckpt.torch.save = dying_save
    if args.disk_full_at >= 0:
        real_save = torch.save

        def filling_save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == args.disk_full_at:
                f.write(b"PK\x03\x04 the first bytes fit")  # … then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(obj, f, *a, **k)

        ckpt.torch.save = filling_save
    trainer = Trainer(cfg, model, Interpolant(), TensorSource(x, y), args.run_dir,
                      full_config=TinyRun(run_dir=args.run_dir, note=args.note, train=cfg),
                      regularizer=LayerSync("1:3", weight=0.5, depth=4) if args.reg == "layersync" else
                      SRA(1, 3, hidden_size=32, weight=0.5, time_gap=0.0, depth=4))
    if args.explode_at >= 0:  # an exploding learning rate: the update after it overflows the forward pass
        base = trainer.scheduler.lr_lambdas[0]
        trainer.scheduler.lr_lambdas[0] = lambda s: base(s) * (1e30 if s >= args.explode_at else 1.0)
    if args.step_delay:
        real_step = trainer.train_step

        def slow_step():
            time.sleep(args.step_delay)
            return real_step()

        trainer.train_step = slow_step
    trainer.fit()


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    run_main(main, prog="train_tiny")
