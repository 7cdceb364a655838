"""The alignment regularizers, in one import: LayerSync, SRA, REPA, dispersive loss, and sums of them.

    reg = Combined([LayerSync([(8, 16)], weight=0.2, depth=28), REPA(8, 1152, 768)])
    out = model(x_t, t, cond, capture=reg.blocks)                  # hidden: {8: (B, N, D), 16: (B, N, D)}
    loss, logs = reg(AlignContext(hidden=out.hidden, x=x, noise=eps, t=t, x_t=x_t, cond=cond, raw=images))

Every loss is a float32 scalar already weighted by its λ; logs are detached 0-d tensors named "<reg>/<what>".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from layersync.core.align import (
    AlignContext,
    LayerSync,
    Regularizer,
    layersync_loss,
    masked_mean,
    parse_pairs,
    token_cosine,
)
from layersync.core.dispersive import Dispersive, dispersive_loss
from layersync.core.repa import REPA, DinoV2Encoder, resample_tokens
from layersync.core.sra import SRA

from .errors import UserValueError

__all__ = [
    "AlignContext",
    "Combined",
    "DinoV2Encoder",
    "Dispersive",
    "LayerSync",
    "REPA",
    "Regularizer",
    "SRA",
    "dispersive_loss",
    "layersync_loss",
    "masked_mean",
    "parse_pairs",
    "resample_tokens",
    "token_cosine",
]


class Combined(Regularizer):
    """A sum of regularizers: losses add, logs merge, `blocks` is the sorted union."""

    def __init__(self, regs: Iterable[Regularizer]):
        super().__init__()
        self.regs = nn.ModuleList(regs)
        if len(self.regs) == 0:
            raise UserValueError("Combined needs at least one regularizer")
        # Each child's training-only parts, as they appear in this module's state_dict.
        self.training_only_prefixes = tuple(
            f"regs.{i}.{p}" for i, reg in enumerate(self.regs) for p in reg.training_only_prefixes
        )

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted({b for reg in self.regs for b in reg.blocks}))

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logs = None, {}
        for reg in self.regs:
            loss, reg_logs = reg(ctx)
            clash = logs.keys() & reg_logs.keys()
            if clash:
                raise UserValueError(f"two regularizers log the same names {sorted(clash)}; combine pairs of "
                                     "the same kind in one regularizer (e.g. LayerSync(pairs=[(4, 12), (8, "
                                     "16)]))")
            logs.update(reg_logs)
            total = loss if total is None else total + loss
        return total, logs
