"""MDM, the Motion Diffusion Model (Tevet et al., ICLR 2023), in the core backbone's call convention.

A transformer encoder over the frames, with the diffusion step and the text as one extra token in front:

    z_0   = MLP(PE(step)) + Linear(text)                         the conditioning token (MDM's `emb`)
    z_1…L = Linear_263→D(x_t[:, :, l])                             one token per frame
    h     = Encoder([z_0, z_1…L] + PE) ;  x̂ = Linear_D→263(h[1:])  8 post-norm layers, 4 heads, FF 1024, GELU

Paper setting (HumanML3D): D = 512, dropout 0.1, frozen CLIP ViT-B/32 text features, the text replaced by
zeros with probability 0.1 in training (its null condition), x0 prediction, cosine schedule, 1000 steps.
PE is MDM's interleaved sin/cos table; the step of continuous time t is read at position 1000·t − 1, which
is step i exactly on the DDPM grid t = (i + 1)/1000 (`DiscreteSchedule`).

As MDM's code (GuyTevet/motion-diffusion-model @ d4fd88c, model/mdm.py), by default the layers start
identical (`identical_init`: nn.TransformerEncoder deep-copies one layer, which matters to a regularizer that
compares layers) and attention reads the padded frames too (`attend_padding`; MDM's `--mask_frames` masks
them, which `attend_padding=False` does with `token_mask`). Differences from MDM's code, all from the core
contract: x_t is (B, 263, L) rather than (B, 263, 1, L); blocks are numbered from 1 and `capture=(k,)`
returns the residual stream after layer k at the motion tokens only, (B, L, D), without the conditioning
token, for LayerSync and its peers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.errors import UserValueError
from layersync.core.models import ModelOutput
from layersync.motion.features import FEATURE_DIM


@dataclass(frozen=True)
class MDMConfig:
    """MDM's shape; the defaults are the paper's HumanML3D model."""

    text_dim: int = 512  # CLIP ViT-B/32 projection
    in_channels: int = FEATURE_DIM
    max_frames: int = 196
    depth: int = 8
    hidden_size: int = 512
    num_heads: int = 4
    ff_size: int = 1024
    dropout: float = 0.1
    cond_dropout: float = 0.1  # MDM's cond_mask_prob: the text is zeroed for classifier-free guidance
    diffusion_steps: int = 1000  # the timestep embedding's scale: position 1000·t − 1
    identical_init: bool = True  # MDM: every layer starts as a copy of the first (nn.TransformerEncoder)
    attend_padding: bool = True  # MDM's default; False = its --mask_frames (padded frames are not keys)

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.hidden_size % 2:
            raise UserValueError(f"hidden_size {self.hidden_size} must be even and divisible by num_heads "
                                 f"{self.num_heads}")
        if min(self.depth, self.ff_size, self.text_dim, self.in_channels, self.max_frames) < 1:
            raise UserValueError("depth, ff_size, text_dim, in_channels and max_frames must be positive")
        if not 0.0 <= self.cond_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise UserValueError(f"cond_dropout ({self.cond_dropout}) and dropout ({self.dropout}) must be "
                                 "in [0, 1)")


def interleaved_sincos(position: torch.Tensor, dim: int) -> torch.Tensor:
    """MDM's PositionalEncoding row at (possibly fractional) positions: pe[:, 2i] = sin, pe[:, 2i+1] = cos,
    frequency 10000^(−2i/dim). position (N,) → (N, dim) float32."""
    even = torch.arange(0, dim, 2, dtype=torch.float64, device=position.device)
    freq = torch.exp(even * (-math.log(1e4) / dim))
    angles = position.to(torch.float64)[:, None] * freq[None]  # (N, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()  # (N, dim)


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's post-norm layer (GELU, dropout), with a boolean key mask."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.qkv.weight)  # as nn.MultiheadAttention's in_proj, biases zero
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, Dh) each
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = self.norm1(x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d))))
        return self.norm2(x + self.drop(self.linear2(self.drop(F.gelu(self.linear1(x))))))  # (B, N, D)


class MDM(nn.Module):
    """Text-to-motion transformer encoder; `model(x_t, t, cond, capture=, token_mask=, force_drop=)`."""

    def __init__(self, config: MDMConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.depth = config.depth
        self.input_process = nn.Linear(config.in_channels, d)
        self.time_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.embed_text = nn.Linear(config.text_dim, d)
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderLayer(d, config.num_heads, config.ff_size, config.dropout)
                                    for _ in range(config.depth))
        if config.identical_init:  # nn.TransformerEncoder's _get_clones: deep copies of one initialised layer
            for block in self.blocks[1:]:
                block.load_state_dict(self.blocks[0].state_dict())
        self.output_process = nn.Linear(d, config.in_channels)
        pe = interleaved_sincos(torch.arange(config.max_frames + 1), d)  # (1 + L, D): condition token first
        self.register_buffer("pe", pe, persistent=False)

    def condition(self, t: torch.Tensor, cond: torch.Tensor, force_drop: torch.Tensor | None) -> torch.Tensor:
        """The conditioning token (B, D): time MLP of PE(1000·t − 1) plus the (possibly zeroed) text."""
        if cond is None or cond.ndim != 2 or cond.shape[1] != self.config.text_dim:
            raise UserValueError(f"MDM takes text conditioning as a (B, {self.config.text_dim}) float "
                                 f"tensor, got {None if cond is None else tuple(cond.shape)}")
        b = cond.shape[0]
        if force_drop is not None:
            if force_drop.shape != (b,) or force_drop.dtype != torch.bool:
                raise UserValueError(f"force_drop must be a ({b},) bool tensor, got "
                                     f"{tuple(force_drop.shape)} {force_drop.dtype}")
            drop = force_drop
        elif self.training and self.config.cond_dropout > 0:
            drop = torch.rand(b, device=cond.device) < self.config.cond_dropout
        else:
            drop = torch.zeros(b, dtype=torch.bool, device=cond.device)
        text = cond.float() * (~drop).float()[:, None]  # MDM's null condition: the zero text vector
        step = self.config.diffusion_steps * t.float() - 1.0
        return self.time_embed(interleaved_sincos(step, self.config.hidden_size)) + self.embed_text(text)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                capture: tuple[int, ...] = (), token_mask: torch.Tensor | None = None,
                force_drop: torch.Tensor | None = None) -> torch.Tensor | ModelOutput:
        """x̂0 (B, 263, L) for x_t (B, 263, L); with `capture`, also the motion tokens after those layers."""
        b, c, length = x_t.shape
        if c != self.config.in_channels or length > self.config.max_frames:
            raise UserValueError(f"x_t must be (B, {self.config.in_channels}, L ≤ {self.config.max_frames}), "
                                 f"got {tuple(x_t.shape)}")
        bad = [k for k in capture if not 1 <= k <= self.depth]
        if bad:
            raise UserValueError(f"capture blocks {bad} are out of range; blocks are numbered "
                                 f"1..{self.depth}")
        t = t.expand(b) if t.ndim == 0 else t
        key_mask = None
        if token_mask is not None:
            if token_mask.shape != (b, length) or token_mask.dtype != torch.bool:
                raise UserValueError(f"token_mask must be a ({b}, {length}) bool tensor (True = real frame), "
                                 f"got {tuple(token_mask.shape)} {token_mask.dtype}")
            if not self.config.attend_padding:
                key_mask = torch.cat([token_mask.new_ones(b, 1), token_mask], dim=1)  # condition always seen
        frames = self.input_process(x_t.transpose(1, 2))  # (B, L, D)
        seq = torch.cat([self.condition(t, cond, force_drop)[:, None].to(frames.dtype), frames], dim=1)
        h = self.pos_drop(seq + self.pe[: length + 1].to(seq.dtype))  # (B, 1 + L, D)
        wanted, hidden = set(capture), {}
        for k, block in enumerate(self.blocks, start=1):
            h = block(h, key_mask)
            if k in wanted:
                hidden[k] = h[:, 1:]  # motion tokens only: the conditioning token is not aligned
        pred = self.output_process(h[:, 1:]).transpose(1, 2)  # (B, 263, L)
        return ModelOutput(pred, {k: hidden[k] for k in capture}) if capture else pred
