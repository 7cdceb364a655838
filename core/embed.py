"""Embedders for the DiT backbone: patches of 1-D/2-D/3-D inputs, fixed sin-cos positions, time, condition.

Module and parameter names follow facebookresearch/DiT (`x_embedder.proj`, `t_embedder.mlp`,
`y_embedder.embedding_table`) so DiT/SiT checkpoints map onto ours key for key.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer positions (Vaswani et al. 2017, §3.5) as DiT lays them out: [sin | cos], float64.

    emb[n, i] = sin(pos_n · ω_i), emb[n, dim/2 + i] = cos(pos_n · ω_i), ω_i = 10000^(−2i/dim).
    """
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim)


def sincos_positions(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sin-cos positions for a token grid flattened row-major (last axis fastest): (N, dim), float32.

    1-D: one `sincos_1d` over the sequence.
    2-D (H, W): DiT's `get_2d_sincos_pos_embed`: the first half of the channels encode the column
      index w, the second half the row index h (DiT builds `meshgrid(w, h)` and calls the first
      half "h"; we keep its layout so DiT/SiT checkpoints see the positions they were trained with).
    3-D (T, H, W): channels split as [t | h | w] with widths d_t = dim − 2·d_s, d_h = d_w = d_s,
      d_s = 2·⌊dim / 6⌋ (an even third for each spatial axis, the remainder, ≥ a third, for time).
    """
    if len(grid) == 1:
        return sincos_1d(dim, torch.arange(grid[0])).float()
    if len(grid) == 2:
        if dim % 4:
            raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")  # (H, W)
        return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()
    if len(grid) == 3:
        if dim % 2 or dim < 6:
            raise ValueError(f"3-D sin-cos positions need an even width ≥ 6, got {dim}")
        d_s = 2 * (dim // 6)
        frames, rows, cols = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")  # (T, H, W)
        parts = [sincos_1d(dim - 2 * d_s, frames), sincos_1d(d_s, rows), sincos_1d(d_s, cols)]
        return torch.cat(parts, dim=1).float()
    raise ValueError(f"sin-cos positions exist for 1-, 2- or 3-D grids, got a {len(grid)}-D grid {grid}")


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens by a strided Conv1d/2d/3d (ViT, Dosovitskiy et al. 2021)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, ...]):
        super().__init__()
        self.proj = _CONVS[len(patch_size)](in_channels, hidden_size, patch_size, stride=patch_size)
        # DiT initialises the patch projection like a Linear on the flattened patch.
        weight = self.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, *S) → (B, D, *G) → (B, N, D)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's frequency embedding [cos | sin] of a (B,) float tensor: (B, dim), float32 (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([args.cos(), args.sin()], dim=1)  # (B, 2·⌊dim/2⌋)
    return nn.functional.pad(emb, (0, dim % 2))  # (B, dim)


# What the sin-cos time features see, given our t (t = 1 noise):
#   "discrete":   1000·t, DiT's and MDM's discrete-step scale;
#   "continuous": t, as REPA and SRA (same direction as ours: t = 1 noise);
#   "reversed":   1 − t, as SiT and LayerSync, whose time runs from noise at 0 to data at 1.
# A model holding a reference's weights then sees the reference's own time input; the velocity sign of the
# reversed references (theirs is x − ε) is folded into `final_layer.linear` by image/reference.py.
TimeInput = Literal["discrete", "continuous", "reversed"]
TIME_INPUTS: tuple[str, ...] = ("discrete", "continuous", "reversed")


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] (t = 1 noise) → sin-cos of `time_input`'s view of t (see TIME_INPUTS) → MLP 256 → D → D."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, time_input: TimeInput = "discrete"):
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        self.frequency_size, self.time_input = frequency_size, time_input
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.time_input == "discrete":
            s = 1000.0 * t
        elif self.time_input == "continuous":
            s = t
        else:
            s = 1.0 - t
        freq = timestep_embedding(s, self.frequency_size)  # (B, 256)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (B, D)


def _drop_mask(batch: int, p: float, training: bool, force_drop: torch.Tensor | None, device) -> torch.Tensor:
    """Which rows take the null condition: `force_drop` when given (CFG), else Bernoulli(p) in training.

    As in DiT's `token_drop`, `force_drop` replaces the random draw rather than adding to it.
    """
    if force_drop is not None:
        if force_drop.shape != (batch,) or force_drop.dtype != torch.bool:
            raise ValueError(f"force_drop must be a ({batch},) bool tensor, got {tuple(force_drop.shape)} "
                             f"{force_drop.dtype}")
        return force_drop.to(device)
    if training and p > 0:
        return torch.rand(batch, device=device) < p  # torch RNG on the model's device
    return torch.zeros(batch, dtype=torch.bool, device=device)


class LabelEmbedder(nn.Module):
    """Class labels → vectors; row `num_classes` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        nn.init.normal_(self.embedding_table.weight, std=0.02)

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if labels.ndim != 1 or labels.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"class conditioning takes (B,) integer labels, got {tuple(labels.shape)} "
                             f"{labels.dtype}")
        drop = _drop_mask(labels.shape[0], self.dropout, self.training, force_drop, labels.device)
        labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)  # (B,)
        return self.embedding_table(labels)  # (B, D)


class TextEmbedder(nn.Module):
    """A pooled text vector (B, text_dim) → Linear → (B, D); dropped rows take a learned null vector."""

    def __init__(self, text_dim: int, hidden_size: int, dropout: float):
        super().__init__()
        self.text_dim, self.dropout = text_dim, dropout
        self.proj = nn.Linear(text_dim, hidden_size)
        self.null = nn.Parameter(torch.randn(hidden_size) * 0.02)  # (D,)

    def forward(self, text: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if text.ndim != 2 or text.shape[1] != self.text_dim or not text.is_floating_point():
            raise ValueError(f"text conditioning takes a (B, {self.text_dim}) float tensor, got "
                             f"{tuple(text.shape)} {text.dtype}")
        drop = _drop_mask(text.shape[0], self.dropout, self.training, force_drop, text.device)
        emb = self.proj(text)  # (B, D)
        return torch.where(drop[:, None], self.null.to(emb.dtype)[None], emb)  # (B, D)
