"""Exponential moving average of a model's weights (DiT/SiT use decay 0.9999, updated every step)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds a frozen copy of `model`; `update(model)` applies θ_ema ← d·θ_ema + (1 − d)·θ."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step; a fused foreach lerp, no host synchronisation."""
        ema_params = list(self.model.parameters())
        params = list(model.parameters())
        if len(ema_params) != len(params):
            raise ValueError("EMA.update got a model with a different parameter list than it was built from")
        # θ_ema + (1 − d)(θ − θ_ema) == d·θ_ema + (1 − d)·θ
        torch._foreach_lerp_(ema_params, [p.detach().to(e.dtype) for p, e in zip(params, ema_params)],
                             1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
