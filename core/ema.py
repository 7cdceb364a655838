"""Exponential moving average of a model's weights (DiT/SiT use decay 0.9999, updated every step)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds a frozen copy of `model`; `update(model)` applies θ_ema ← d·θ_ema + (1 − d)·θ.

    Under FSDP call `shard_like(sharded_model)` once: from then on the running average lives in this rank's
    shards only (no communication per step) and `materialize()`, a collective, refreshes the full copy
    `self.model` when it is read (sampling, evaluation, SRA's teacher, checkpoints)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._shards: list[torch.Tensor] | None = None  # this rank's EMA shards, parameter order
        self._specs: list | None = None  # (mesh, placements, shape, stride) to rebuild each full tensor
        self._names: list[str] | None = None  # the sharded model's parameter names, in its order
        self._stale = False

    @property
    def sharded(self) -> bool:
        return self._shards is not None

    @torch.no_grad()
    def shard_like(self, sharded: nn.Module) -> None:
        """Keep the average as this rank's shards of `sharded`'s parameters (DTensors), started from the current
        full copy."""
        from torch.distributed.tensor import distribute_tensor

        full = dict(self.model.named_parameters())
        self._shards, self._specs, self._names = [], [], []
        for name, p in sharded.named_parameters():
            self._names.append(name)
            if name not in full:
                raise ValueError(f"EMA.shard_like: the EMA copy has no parameter {name}")
            if hasattr(p, "device_mesh"):
                piece = distribute_tensor(full[name].to(p.device), p.device_mesh, p.placements,
                                          src_data_rank=None).to_local()
                self._specs.append((p.device_mesh, p.placements, p.shape, p.stride()))
            else:
                piece = full[name].detach().to(p.device)
                self._specs.append(None)
            self._shards.append(piece.clone())
        self._stale = False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step; a fused foreach lerp on whatever this rank holds, no host synchronisation."""
        if self.sharded:
            from .fsdp import local

            params = [local(p).detach() for p in model.parameters()]
            ema_params = self._shards
        else:
            params, ema_params = [p.detach() for p in model.parameters()], list(self.model.parameters())
        if len(ema_params) != len(params):
            raise ValueError("EMA.update got a model with a different parameter list than it was built from")
        # θ_ema + (1 − d)(θ − θ_ema) == d·θ_ema + (1 − d)·θ
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self._stale = self.sharded

    def local_parameters(self) -> list[torch.Tensor]:
        """What this rank holds of the average: its shards under FSDP, else the full copy's parameters."""
        return list(self._shards) if self.sharded else list(self.model.parameters())

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """The full EMA model, gathered from every rank's shards when they changed (every rank must call it)."""
        if self.sharded and self._stale:
            from torch.distributed.tensor import DTensor

            full = dict(self.model.named_parameters())
            for name, piece, spec in zip(self._names, self._shards, self._specs):
                e = full[name]
                if spec is None:
                    e.copy_(piece)
                else:
                    mesh, placements, shape, stride = spec
                    e.copy_(DTensor.from_local(piece, mesh, placements, shape=shape, stride=stride).full_tensor())
            self._stale = False
        return self.model

    @torch.no_grad()
    def load_full(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full EMA state dict (and re-slice this rank's shards from it)."""
        self.model.load_state_dict(state)
        if self.sharded:
            from torch.distributed.tensor import distribute_tensor

            full = dict(self.model.named_parameters())
            for i, (name, spec) in enumerate(zip(self._names, self._specs)):
                e = full[name]
                self._shards[i].copy_(e if spec is None else
                                      distribute_tensor(e, spec[0], spec[1], src_data_rank=None).to_local())
        self._stale = False

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
