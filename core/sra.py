"""SRA: self-representation alignment to the EMA teacher at a lower noise level (Jiang et al. 2025).

Student block m → trainable head (Linear D→2D, SiLU, Linear 2D→D) → aligned per token to block n ≥ m of the
EMA model run on the same data and the same noise at a less noisy time (DESIGN §1):

    t_T = clamp(t − u, min=0),  u ~ U(0, gap)          (t = 0 is data here, so "less noisy" is t − u)
    L   = λ · mean_{b,n} [ −cos( head(h_m)[b,n,:], stopgrad(h^EMA_n(x_{t_T})[b,n,:]) ) ]

The cosine is over the feature dimension per token (the reference's newest code takes it over the token axis
by mistake). One extra teacher forward per step (~+35% FLOPs). Paper pairs: B/2 3→8, XL/2 8→20; λ 0.2.
"""

from __future__ import annotations

import torch
from torch import nn

from layersync.core.align import AlignContext, Regularizer, check_pair, masked_mean, token_cosine


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
    ):
        super().__init__()
        check_pair(student_block, teacher_block, depth, "SRA", allow_equal=True)
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

    def teacher_time(self, t: torch.Tensor) -> torch.Tensor:
        """t_T = clamp(t − u, min=0), u ~ U(0, gap) per sample: (B,) → (B,), never noisier than t."""
        return (t - torch.rand_like(t) * self.time_gap).clamp(min=0.0)

    @torch.no_grad()
    def teacher_features(self, ctx: AlignContext, t_teacher: torch.Tensor) -> torch.Tensor:
        """Block n of the EMA model on x_{t_T} built from the SAME x and ε: (B, N, D), no graph.

        Run in eval mode (no random condition dropout), with the student's `cond` and `model_kwargs`: a
        trainer that draws the dropout itself and passes `force_drop` there gives the teacher the same
        effective condition as the student; otherwise the teacher sees the undropped condition, as in the
        reference code, whose EMA model is always in eval mode.
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
        target = self.teacher_features(ctx, self.teacher_time(t))  # (B, N, D), detached
        cos = token_cosine(pred, target)  # (B, N): over the feature dim, per token
        cos_mean = masked_mean(cos, ctx.token_mask)
        loss = -cos_mean * self.weight
        return loss, {"sra/cos": cos_mean.detach(), "sra/loss": loss.detach()}
