"""Dispersive loss: a parameter-free repulsion between the samples of a batch (Wang & He 2025).

"Diffuse and Disperse: Image Generation with Representation Regularization", InfoNCE-L2 variant (their
Eq. for L_Disp with D = squared L2): InfoNCE with the positive pairs removed,

    L_Disp = log mean_{i,j} exp( −‖z_i − z_j‖² / (F · τ) ),     i, j over the B samples, i = j included,

z_i the flattened (N·D = F) features of sample i at one block. Dividing the squared distance by F follows the
authors' public PyTorch code (raywang4/DispLoss: `pdist(z)² / z.shape[1]`, over the full B×B matrix with its
zero diagonal), which keeps the loss scale independent of width and token count. That code has no
temperature, i.e. τ = 1; the paper's default is τ = 0.5. Pass temperature=1.0 to reproduce the code exactly.
"""

from __future__ import annotations

import math

import torch

from layersync.core.align import AlignContext, Regularizer, check_block


def dispersive_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_Disp of (B, F) features, float32 scalar: log-mean-exp of −‖z_i − z_j‖² / (F·τ) over all B² pairs."""
    z = z.float()
    b, f = z.shape
    sq = (z * z).sum(dim=1)  # (B,)
    # ‖z_i − z_j‖² through the Gram matrix: O(B²) memory, and no sqrt whose gradient is NaN at 0 (pdist's).
    dist = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)  # (B, B)
    logits = -dist / (f * temperature)  # (B, B)
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(b * b)


class Dispersive(Regularizer):
    """Dispersive loss on one block: pushes the flattened features of a batch's samples apart."""

    def __init__(self, block: int, weight: float = 0.5, temperature: float = 0.5, depth: int | None = None):
        super().__init__()
        check_block(block, depth, "Dispersive")
        if temperature <= 0:
            raise ValueError(f"Dispersive temperature must be > 0, got {temperature}")
        self.block, self.weight, self.temperature = int(block), float(weight), float(temperature)

    @property
    def blocks(self) -> tuple[int, ...]:
        return (self.block,)

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = ctx.feature(self.block, "Dispersive").float()  # (B, N, D)
        if h.shape[0] < 2:
            raise ValueError("Dispersive needs at least 2 samples per batch (per device) to repel")
        if ctx.token_mask is not None:
            if ctx.token_mask.shape != h.shape[:2] or ctx.token_mask.dtype != torch.bool:
                raise ValueError(f"token mask must be a bool {tuple(h.shape[:2])} tensor (True = counts), "
                                 f"got {ctx.token_mask.dtype} {tuple(ctx.token_mask.shape)}")
            # Excluded tokens are zeroed, so they add nothing to any distance; F stays N·D.
            h = h * ctx.token_mask[..., None].to(h.dtype)  # (B, N, D)
        loss = dispersive_loss(h.flatten(1), self.temperature) * self.weight  # over (B, N·D)
        return loss, {"dispersive/loss": loss.detach()}
