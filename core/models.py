"""DiT/SiT backbone with adaLN-Zero blocks (Peebles & Xie 2023) that exposes its residual stream per block.

Presets (DiT Table 1), written `<size>/<patch>`:
    S  = depth 12, width  384, heads  6        B  = depth 12, width  768, heads 12
    L  = depth 24, width 1024, heads 16        XL = depth 28, width 1152, heads 16
with patch 2, 4 or 8 ("XL/2" = depth 28, width 1152, patch 2).

`model(x_t, t, cond, capture=(8, 16))` returns `ModelOutput(pred, hidden={8: h_8, 16: h_16})`, h_k the
residual stream after block k (blocks numbered from 1), read from the one forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from layersync.core.embed import (TIME_INPUTS, LabelEmbedder, PatchEmbed, TextEmbedder, TimeInput,
                                  TimestepEmbedder, sincos_positions)

from .errors import UserValueError

CondKind = Literal["class", "text", "none"]

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, D, heads
PRESETS: dict[str, dict[str, int]] = {
    f"{size}/{patch}": dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    for size, (depth, width, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}


@dataclass(frozen=True)
class DiTConfig:
    """Backbone shape and conditioning; `input_size` (1, 2 or 3 sizes) picks the 1-D/2-D/3-D embedder."""

    input_size: tuple[int, ...]  # spatial sizes: (L,), (H, W) or (T, H, W); channels excluded
    in_channels: int
    patch_size: int | tuple[int, ...]  # an int repeats over every axis; stored as a tuple
    depth: int
    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    cond_kind: CondKind = "class"
    num_classes: int = 1000
    text_dim: int = 0
    cond_dropout: float = 0.1  # probability of the null condition in training (classifier-free guidance)
    grad_checkpointing: bool = False
    qk_norm: bool = False  # LayerNorm on queries and keys per head (as timm's `qk_norm`)
    time_input: TimeInput = "discrete"  # what the time embedding sees: 1000·t, t or 1 − t (core/embed.py)
    # "none": tokens carry no position, so the model is permutation-equivariant over them (sets: point clouds,
    # particles, molecules' atoms); use with input_size (N,) and patch 1, one token per element.
    positions: Literal["sincos", "none"] = "sincos"

    def __post_init__(self):
        # Frozen dataclass: normalise lists (from JSON/CLI) and an int patch to tuples once, here.
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        ndim = len(self.input_size)
        if ndim not in (1, 2, 3):
            raise UserValueError(f"input_size must hold 1, 2 or 3 spatial sizes, got {self.input_size}")
        patch = self.patch_size
        patch = (int(patch),) * ndim if isinstance(patch, int) else tuple(int(p) for p in patch)
        object.__setattr__(self, "patch_size", patch)
        if len(patch) != ndim:
            raise UserValueError(f"patch_size {patch} has {len(patch)} sizes but input_size "
                                 f"{self.input_size} "
                                 f"has {ndim}; give one patch size per axis or a single int")
        if any(p < 1 or s % p for s, p in zip(self.input_size, patch)):
            raise UserValueError(f"input_size {self.input_size} is not divisible by patch_size {patch}; "
                                 "pick a patch that divides every axis (or pad the input)")
        if self.hidden_size % self.num_heads:
            raise UserValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                                 f"{self.num_heads}")
        if self.depth < 1 or self.in_channels < 1 or self.mlp_ratio <= 0:
            raise UserValueError(f"depth ({self.depth}), in_channels ({self.in_channels}) and mlp_ratio "
                                 f"({self.mlp_ratio}) must be positive")
        if self.cond_kind not in ("class", "text", "none"):
            raise UserValueError(f"cond_kind must be 'class', 'text' or 'none', got {self.cond_kind!r}")
        if self.cond_kind == "class" and self.num_classes < 1:
            raise UserValueError(f"cond_kind='class' needs num_classes ≥ 1, got {self.num_classes}")
        if self.cond_kind == "text" and self.text_dim < 1:
            raise UserValueError(f"cond_kind='text' needs text_dim ≥ 1 (the pooled text width), "
                                 f"got {self.text_dim}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise UserValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.time_input not in TIME_INPUTS:
            raise UserValueError(f"time_input must be one of {TIME_INPUTS}, got {self.time_input!r}")
        if self.positions not in ("sincos", "none"):
            raise UserValueError(f"positions must be 'sincos' or 'none', got {self.positions!r}")
        if self.positions == "none" and (ndim != 1 or patch != (1,)):
            raise UserValueError(f"positions='none' makes one token per set element: give input_size (N,) "
                                 f"and patch_size 1, got input_size {self.input_size}, patch_size {patch}")
        if self.positions == "sincos":
            sincos_positions(self.hidden_size, (1,) * ndim)  # raises if the width cannot hold the positions

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DiTConfig:
        """A preset such as "XL/2" plus the fields it leaves open (input_size, in_channels, conditioning)."""
        if name not in PRESETS:
            raise UserValueError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def grid(self) -> tuple[int, ...]:
        """Tokens along each axis."""
        return tuple(s // p for s, p in zip(self.input_size, self.patch_size))

    @property
    def num_tokens(self) -> int:
        """Tokens per sample, N."""
        return math.prod(self.grid)


@dataclass(frozen=True)
class ModelOutput:
    """The prediction and the captured residual streams {block k: (B, N, D)}."""

    pred: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)


# A pytree node, so that tools which walk a module's outputs see its tensors: FSDP2 hooks the backward of the
# root's outputs through it (without this, captured blocks reach the loss but the root's parameters stay
# resharded in backward).
torch.utils._pytree.register_dataclass(ModelOutput)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift with per-sample (B, D) shift and scale (DiT §3.2)."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, with an optional key mask."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]  # (B, H, N, Dh)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N): True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Mlp(nn.Module):
    """Linear → GELU(tanh) → Linear, as timm's Mlp in DiT."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: c → (shift, scale, gate) × {attention, MLP} (DiT Fig. 3)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, 1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), key_mask)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → Linear to one patch of output channels per token."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, prod(p)·C)


class DiT(nn.Module):
    """Diffusion/flow transformer over 1-D, 2-D or 3-D inputs; predicts a tensor shaped like x_t."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.hidden_size, self.depth, self.num_tokens = config.hidden_size, config.depth, config.num_tokens
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, d, config.patch_size)
        # Fixed positions, rebuilt from the config (never learned, never saved); None for sets.
        pos = sincos_positions(d, config.grid)[None] if config.positions == "sincos" else None  # (1, N, D)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.t_embedder = TimestepEmbedder(d, time_input=config.time_input)
        if config.cond_kind == "class":
            self.y_embedder = LabelEmbedder(config.num_classes, d, config.cond_dropout)
        elif config.cond_kind == "text":
            self.y_embedder = TextEmbedder(config.text_dim, d, config.cond_dropout)
        else:
            self.y_embedder = None
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, math.prod(config.patch_size), config.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier-uniform Linears, N(0, 0.02) time MLP, zero adaLN and output (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):  # output starts at 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, prod(p)·C) → (B, C, *input_size); per token the layout is (*patch, C), as DiT's."""
        grid, patch, c = self.config.grid, self.config.patch_size, self.config.in_channels
        nd = len(grid)
        x = tokens.reshape(tokens.shape[0], *grid, *patch, c)  # (B, *G, *P, C)
        order = [0, 2 * nd + 1] + [i for axis in range(nd) for i in (1 + axis, 1 + nd + axis)]
        x = x.permute(*order)  # (B, C, G1, P1, G2, P2, ...)
        return x.reshape(tokens.shape[0], c, *self.config.input_size)

    def condition(self, t: torch.Tensor, cond: torch.Tensor | None, force_drop: torch.Tensor | None):
        """The adaLN conditioning vector c = t_emb + cond_emb: (B, D)."""
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is None:
            if cond is not None or force_drop is not None:
                raise UserValueError("this model has cond_kind='none': pass cond=None and no force_drop")
            return c
        if cond is None:
            raise UserValueError(f"this model has cond_kind={self.config.cond_kind!r} and needs cond; for "
                                 "the unconditional branch pass any cond with force_drop=torch.ones(B, "
                                 "dtype=bool)")
        return c + self.y_embedder(cond, force_drop).to(c.dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        capture: tuple[int, ...] = (),
        token_mask: torch.Tensor | None = None,
        force_drop: torch.Tensor | None = None,
    ) -> torch.Tensor | ModelOutput:
        """Prediction shaped like x_t; with `capture`, a ModelOutput holding the residual stream after those
        blocks (1-based). `token_mask` (B, N) bool, True = real token, masks padded tokens out as keys
        (each row needs one real token; predictions at padded tokens are computed but meaningless)."""
        expected = (self.config.in_channels, *self.config.input_size)
        if tuple(x_t.shape[1:]) != expected:
            raise UserValueError(f"x_t must be (B, {', '.join(map(str, expected))}), got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        bad = [k for k in capture if not 1 <= k <= self.depth]
        if bad:
            raise UserValueError(f"capture blocks {bad} are out of range; blocks are numbered "
                                 f"1..{self.depth}")
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise UserValueError(f"t must be a scalar or ({b},), got {tuple(t.shape)}")
        n = self.num_tokens
        if token_mask is not None and (token_mask.shape != (b, n) or token_mask.dtype != torch.bool):
            raise UserValueError(f"token_mask must be a ({b}, {n}) bool tensor (True = real token), "
                                 f"got {tuple(token_mask.shape)} {token_mask.dtype}")

        x = self.x_embedder(x_t)  # (B, N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        c = self.condition(t, cond, force_drop)  # (B, D)
        wanted, hidden = set(capture), {}
        use_checkpoint = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for k, block in enumerate(self.blocks, start=1):
            if use_checkpoint:
                x = checkpoint(block, x, c, token_mask, use_reentrant=False)
            else:
                x = block(x, c, token_mask)  # (B, N, D)
            if k in wanted:
                hidden[k] = x  # a reference into the graph: capturing costs no compute or copy
        pred = self.unpatchify(self.final_layer(x, c))  # (B, C, *S)
        return ModelOutput(pred, {k: hidden[k] for k in capture}) if capture else pred
