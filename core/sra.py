"""SRA: self-representation alignment to the EMA teacher at a lower noise level (Jiang et al. 2025).

Student block m → trainable head (Linear D→2D, SiLU, Linear 2D→D) → aligned per token to block n ≥ m of the
EMA model run on the same data and the same noise at a less noisy time (DESIGN §1):

    t_T = clamp(t − u, min=0),  u ~ U(0, gap)          (t = 0 is data here, so "less noisy" is t − u)
    L   = λ · mean_{b,n} [ −cos( head(h_m)[b,n,:], stopgrad(h^EMA_n(x_{t_T})[b,n,:]) ) ]

The cosine is over the feature dimension per token (the reference's newest code takes it over the token axis
by mistake). One extra teacher forward per step (~+35% FLOPs). Paper pairs: B/2 3→8, XL/2 8→20; λ 0.2.

variant="released" is vvvvvjdy/SRA's SiT-SRA code as published (loss.py, `--loss-type=cos`, its default):
`1 − F.cosine_similarity(a, b)` on (B, N, D) tensors with torch's default dim=1, i.e. a cosine over the
TOKEN axis per (sample, channel), averaged over (B, D), and train.py's weight 0.5:

    L_released = λ · mean_{b,d} [ 1 − cos( head(h_m)[b,:,d], stopgrad(h^EMA_n)[b,:,d] ) ],   λ = 0.5

Padded tokens (token_mask False) are zeroed in both before that cosine, so they add nothing to it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.align import AlignContext, Regularizer, check_pair, masked_mean, token_cosine
from layersync.core.sample_rng import uniform


class SRA(Regularizer):
    """SRA: an MLP head on the student block, aligned to a deeper EMA block seen at a lower noise level."""

    # The head exists for training only: it lives here, never inside the model, so model/EMA checkpoints
    # are what sampling needs; `reg.state_dict()` (keys "head.*") is saved only to resume training.
    training_only_prefixes = ("head.",)
    uses_ema_model = True  # the trainer gathers a sharded (FSDP) EMA before each step for it

    def __init__(
        self,
        student_block: int,
        teacher_block: int,
        hidden_size: int,
        weight: float = 0.2,
        time_gap: float = 0.2,
        depth: int | None = None,
        variant: Literal["features", "released"] = "features",
    ):
        super().__init__()
        check_pair(student_block, teacher_block, depth, "SRA", allow_equal=True)
        if variant not in ("features", "released"):
            raise ValueError(f"SRA variant must be 'features' or 'released', got {variant!r}")
        self.variant = variant
        if not 0.0 <= time_gap <= 1.0:
            raise ValueError(f"SRA time_gap must be in [0, 1], got {time_gap}")
        self.student_block, self.teacher_block = int(student_block), int(teacher_block)
        self.weight, self.time_gap = float(weight), float(time_gap)
        self.head = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size), nn.SiLU(), nn.Linear(2 * hidden_size, hidden_size)
        )

    @property
    def blocks(self) -> tuple[int, ...]:
        return (self.student_block,)

    def teacher_time(self, t: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """t_T = clamp(t − u, min=0), u ~ U(0, gap) per sample: (B,) → (B,), never noisier than t.

        u comes from each sample's key when the trainer gives them (the same u for any process count),
        else from torch's global RNG."""
        u = torch.rand_like(t) if keys is None else uniform(keys, "sra/teacher_time").to(t)
        return (t - u * self.time_gap).clamp(min=0.0)

    @torch.no_grad()
    def teacher_features(self, ctx: AlignContext, t_teacher: torch.Tensor) -> torch.Tensor:
        """Block n of the EMA model on x_{t_T} built from the SAME x and ε: (B, N, D), no graph.

        Run in eval mode (no random condition dropout), with the student's `cond` and `model_kwargs`: a
        trainer that draws the dropout itself and passes `force_drop` there (ours does) gives the teacher the
        same effective condition as the student, as the reference code does (SiT-SRA loss.py hands the
        teacher the student's dropped labels, `labels_train`; its EMA model is always in eval mode).
        Without `force_drop` the teacher would see the undropped condition.
        """
        ema = ctx.require("ema_model", "SRA")
        interpolant = ctx.require("interpolant", "SRA")
        x, noise = ctx.require("x", "SRA"), ctx.require("noise", "SRA")
        x_teacher = interpolant.x_t(x, noise, t_teacher)  # same ε, lower noise level
        was_training = ema.training
        ema.eval()
        try:
            out = ema(x_teacher, t_teacher, ctx.cond, capture=(self.teacher_block,), **ctx.model_kwargs)
        finally:
            ema.train(was_training)
        return out.hidden[self.teacher_block]  # (B, N, D)

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = ctx.require("t", "SRA")  # (B,)
        pred = self.head(ctx.feature(self.student_block, "SRA"))  # (B, N, D)
        target = self.teacher_features(ctx, self.teacher_time(t, ctx.sample_keys))  # (B, N, D), detached
        if self.variant == "released":
            return self._released(pred, target, ctx.token_mask)
        cos = token_cosine(pred, target)  # (B, N): over the feature dim, per token
        cos_mean = masked_mean(cos, ctx.token_mask)
        loss = -cos_mean * self.weight
        return loss, {"sra/cos": cos_mean.detach(), "sra/loss": loss.detach()}

    def _released(self, pred: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """λ·mean_{b,d}(1 − cos over tokens), as the released code computes it (module docstring)."""
        pred, target = pred.float(), target.float()
        if mask is not None:
            keep = mask[..., None].to(pred.dtype)  # (B, N, 1)
            pred, target = pred * keep, target * keep
        cos = F.cosine_similarity(pred, target, dim=1)  # (B, D): over the token axis, torch's default eps
        loss = (1 - cos).mean() * self.weight
        return loss, {"sra/cos": cos.mean().detach(), "sra/loss": loss.detach()}
