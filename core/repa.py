"""REPA: align a block, through a projector, to a frozen encoder's patch tokens (Yu et al. 2025).

    L = λ · mean_{b,n} [ −cos( proj(h_k)[b,n,:], z[b,n,:] ) ],  proj = Linear D→P, SiLU, Linear P→P, SiLU,
                                                                 Linear P→d_enc  (P = 2048)

z are the encoder's patch tokens (DINOv2-B in the paper), resampled to the student's token grid when the
two grids differ. Paper: λ 0.5, block 8 (4 for B/2). Combinable with LayerSync (the paper: complementary).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.align import AlignContext, Regularizer, check_block, masked_mean, token_cosine
from layersync.core.weights import MissingWeightsError, WeightFile, resolve, sha256sum

from .errors import UserValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_B = WeightFile(
    filename="dinov2-base",
    sha256=None,  # a folder (config.json + weights); pass `sha256=` to from_local to pin the weights file
    source="https://huggingface.co/facebook/dinov2-base (save_pretrained / the repo's files in one folder)",
    description="DINOv2 ViT-B/14 for REPA targets",
)
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def resample_tokens(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bilinearly resample a square token grid (B, M, C) to (B, num_tokens, C), both row-major.

    The identity when M == num_tokens; raises when they differ and either is not a square.
    """
    b, m, c = tokens.shape
    if m == num_tokens:
        return tokens
    src, dst = math.isqrt(m), math.isqrt(num_tokens)
    if src * src != m or dst * dst != num_tokens:
        raise UserValueError(
            f"REPA cannot match {m} encoder tokens to {num_tokens} model tokens: resampling needs two square "
            f"grids; choose an encoder resolution that gives {num_tokens} tokens."
        )
    grid = tokens.transpose(1, 2).reshape(b, c, src, src)  # (B, C, s, s)
    grid = F.interpolate(grid.float(), size=(dst, dst), mode="bilinear", align_corners=False)  # (B, C, g, g)
    return grid.reshape(b, c, num_tokens).transpose(1, 2)  # (B, N, C)


class REPA(Regularizer):
    """REPA: a projector MLP on block k, aligned per patch to a frozen encoder's patch tokens."""

    training_only_prefixes = ("projector.",)

    def __init__(
        self,
        block: int,
        hidden_size: int,
        encoder_dim: int,
        weight: float = 0.5,
        projector_dim: int = 2048,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        depth: int | None = None,
    ):
        """encoder: maps `ctx.raw` to (B, N_enc, encoder_dim) patch tokens (e.g. DinoV2Encoder).
        None: `ctx.raw` already holds those tokens (precomputed offline, as REPA users cache DINOv2 features).
        The encoder is held, not owned: it stays out of parameters() and state_dict(), so neither the
        optimizer nor checkpoints see it; put it on the training device yourself.
        """
        super().__init__()
        check_block(block, depth, "REPA")
        self.block, self.encoder_dim, self.weight = int(block), int(encoder_dim), float(weight)
        self.projector = nn.Sequential(
            nn.Linear(hidden_size, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, projector_dim), nn.SiLU(),
            nn.Linear(projector_dim, encoder_dim),
        )
        self.__dict__["encoder"] = encoder  # bypass nn.Module registration (see docstring)

    def _apply(self, fn, *args, **kwargs):
        """`.to(device)` moves the held encoder too (it is frozen and out of state_dict, not out of reach)."""
        if isinstance(self.encoder, nn.Module):
            self.encoder._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @property
    def blocks(self) -> tuple[int, ...]:
        return (self.block,)

    def targets(self, ctx: AlignContext, num_tokens: int) -> torch.Tensor:
        """Encoder patch tokens on the student's grid: (B, N, d_enc), no graph."""
        raw = ctx.require("raw", "REPA")
        with torch.no_grad():
            tokens = raw if self.encoder is None else self.encoder(raw)  # (B, N_enc, d_enc)
        if tokens.ndim != 3 or tokens.shape[-1] != self.encoder_dim:
            source = "ctx.raw (precomputed tokens)" if self.encoder is None else "the encoder"
            raise UserValueError(
                f"REPA expects (B, N_enc, {self.encoder_dim}) tokens from {source}, got {tuple(tokens.shape)}"
            )
        return resample_tokens(tokens.detach(), num_tokens)

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = ctx.feature(self.block, "REPA")  # (B, N, D)
        target = self.targets(ctx, h.shape[1])  # (B, N, d_enc)
        cos = token_cosine(self.projector(h), target)  # (B, N), float32
        cos_mean = masked_mean(cos, ctx.token_mask)
        loss = -cos_mean * self.weight
        return loss, {"repa/cos": cos_mean.detach(), "repa/loss": loss.detach()}


class DinoV2Encoder(nn.Module):
    """Frozen DINOv2 (transformers) → patch tokens without CLS/register tokens, with REPA's preprocessing.

    Input: images (B, 3, H, W) in [-1, 1] (the range the SD-VAE encodes). They are mapped to [0, 1],
    normalised with ImageNet mean/std, then resized bicubically to `resolution` (REPA: 224 for 256² images,
    448 for 512²), in that order, as REPA's `preprocess_raw_image`.
    """

    def __init__(self, model: nn.Module, resolution: int = 224):
        super().__init__()
        patch = model.config.patch_size
        if resolution % patch:
            raise UserValueError(f"resolution {resolution} is not a multiple of the encoder patch size "
                                 f"{patch}")
        self.model = model.eval().requires_grad_(False)
        self.resolution = resolution
        # CLS first, then register tokens (DINOv2-with-registers), then patches (transformers' layout).
        self.num_prefix_tokens = 1 + getattr(model.config, "num_register_tokens", 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        """Token width d_enc."""
        return self.model.config.hidden_size

    @property
    def num_tokens(self) -> int:
        """Patch tokens per image at `resolution`."""
        return (self.resolution // self.model.config.patch_size) ** 2

    @classmethod
    def from_local(
        cls, path: str | os.PathLike | None = None, resolution: int = 224, sha256: str | None = None
    ) -> DinoV2Encoder:
        """Load from a local folder holding config.json and model.safetensors (or pytorch_model.bin).

        path: that folder; None looks for `$LAYERSYNC_WEIGHTS/dinov2-base`. Never downloads.
        sha256: when given, the weights file must have this checksum.
        """
        from transformers import AutoModel

        folder = Path(path).expanduser() if path is not None else resolve(DINOV2_B)
        weights = [folder / name for name in _WEIGHT_NAMES if (folder / name).is_file()]
        if not (folder / "config.json").is_file() or not weights:
            raise MissingWeightsError(
                f"DINOv2 folder {folder} must hold config.json and one of {', '.join(_WEIGHT_NAMES)}; "
                f"obtain them from {DINOV2_B.source}."
            )
        if sha256 is not None and (got := sha256sum(weights[0])) != sha256:
            raise MissingWeightsError(f"{weights[0]} has sha256 {got}, expected {sha256}; re-download it "
                                      f"from {DINOV2_B.source}.")
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        if model.config.model_type not in ("dinov2", "dinov2_with_registers"):
            raise UserValueError(f"{folder} holds a {model.config.model_type!r} model, not DINOv2")
        return cls(model, resolution)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → patch tokens (B, (resolution/14)², d_enc)."""
        x = (images.float() + 1.0) / 2.0  # [-1, 1] → [0, 1]
        x = (x - self.mean) / self.std
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        hidden = self.model(pixel_values=x).last_hidden_state  # (B, prefix + N_enc, d_enc), after final LN
        return hidden[:, self.num_prefix_tokens :]  # (B, N_enc, d_enc)
