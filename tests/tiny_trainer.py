"""An in-process Trainer on a 4-block DiT and 32 random 2×4×4 images, for the fast-path and guard tests."""

from __future__ import annotations

import dataclasses

import torch

from layersync.core.interpolants import Interpolant
from layersync.core.models import DiT, DiTConfig
from layersync.core.regularizers import LayerSync
from layersync.core.trainer import TensorSource, TrainConfig, Trainer


def tiny_trainer(run_dir, mixed_precision: str = "no", **train) -> Trainer:
    """Same data, weights and LayerSync 2:3 for every call; `train` overrides TrainConfig fields."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each test picks its own precision in this one process
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, 4, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    cfg = dataclasses.replace(TrainConfig(seed=1, total_steps=4, global_batch_size=8, lr=1e-3, ema_decay=0.9,
                                          log_every=1, ckpt_every=0), **train)
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, depth=4, hidden_size=32, num_heads=2,
                          num_classes=3))
    with torch.no_grad():  # move the adaLN-Zero gates and output layer off zero: every term has a gradient
        for module in (*model.blocks, model.final_layer):
            module.adaLN_modulation[-1].weight.normal_(0, 0.02, generator=g)
        model.final_layer.linear.weight.normal_(0, 0.02, generator=g)
    return Trainer(cfg, model, Interpolant(), TensorSource(x, y), run_dir, full_config=cfg,
                   regularizer=LayerSync("2:3", weight=0.5, depth=4),
                   accelerator=Accelerator(mixed_precision=mixed_precision, cpu=True))
