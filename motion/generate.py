"""Text-to-motion sampling with any backbone of the core convention, variable lengths and guidance.

MDM samples with ancestral DDPM over its 1000-step cosine table and guidance 2.5 on x̂0 (its default);
`ddim` walks a respaced table, `heun` integrates the probability-flow ODE of the continuous path. Every
sample has its own length: frames past it are passed as `token_mask` (attention keys masked unless the model
attends to padding, as MDM does) and cut from the output unless `keep_padding` (MDM's evaluation keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from layersync.core import samplers
from layersync.core.config import checked
from layersync.core.errors import UserValueError
from layersync.core.interpolants import DiscreteSchedule, Interpolant

MotionSampler = Literal["ddpm", "ddim", "heun"]


@dataclass(frozen=True)
@checked(steps=">= 1", eta="[0, 1]", cfg_scale=">= 0")
class MotionSampleSpec:
    """How motions are drawn: `ddpm` (MDM: 1000 steps), `ddim` or `heun` with `steps`; CFG on x̂0."""

    sampler: MotionSampler = "ddpm"
    steps: int = 1000
    eta: float = 0.0  # ddim only: 0 deterministic, 1 DDPM's variance
    cfg_scale: float = 2.5  # MDM's guidance_param for HumanML3D; 1 = no guidance


def check_sampler(spec: MotionSampleSpec, interpolant: Interpolant) -> None:
    """Raise unless the sampler fits the path and prediction the model was trained with."""
    if spec.sampler not in ("ddpm", "ddim", "heun"):
        raise UserValueError(f"sample.sampler={spec.sampler!r}; choose ddpm, ddim or heun")
    if spec.sampler in ("ddpm", "ddim"):
        if interpolant.path != "vp_cosine":
            raise UserValueError(f"sample.sampler={spec.sampler} walks the 1000-step cosine table: it needs "
                                 f"path.path=vp_cosine (got {interpolant.path}); else use "
                                 "sample.sampler=heun")
        if interpolant.prediction == "velocity":
            raise UserValueError("ddpm/ddim need an x0, noise or score model; sample velocity with heun")
        if not 1 <= spec.steps <= 1000:
            raise UserValueError(f"sample.steps={spec.steps} must be in [1, 1000] for {spec.sampler}")
    elif spec.steps < 1:
        raise UserValueError(f"sample.steps={spec.steps} must be ≥ 1")


def length_mask(lengths: torch.Tensor, max_frames: int) -> torch.Tensor:
    """(B,) frame counts → (B, max_frames) bool, True = a real frame."""
    if (lengths < 1).any() or (lengths > max_frames).any():
        raise UserValueError(f"motion lengths must be in [1, {max_frames}] frames, got {lengths.tolist()}")
    return torch.arange(max_frames, device=lengths.device)[None] < lengths[:, None]


@torch.no_grad()
def generate(model: torch.nn.Module, interpolant: Interpolant, spec: MotionSampleSpec, text: torch.Tensor,
             lengths: torch.Tensor, max_frames: int, seed: int, batch_size: int = 256,
             progress=None, keep_padding: bool = False) -> list[np.ndarray]:
    """Motions in model space (normalised features), one (lengths[i], C) float32 array per row of `text`,
    or (max_frames, C) with the frames past the length as the model made them (`keep_padding`).

    text: (N, D) precomputed text embeddings; lengths: (N,) frames. Noise and sampler draws come from one
    generator seeded with `seed`, so a call is reproducible. `progress(n)` is called after each chunk.
    """
    check_sampler(spec, interpolant)
    if len(text) != len(lengths):
        raise UserValueError(f"{len(text)} texts but {len(lengths)} lengths")
    model.eval()
    device = next(model.parameters()).device
    channels = getattr(model.config, "in_channels")
    g = torch.Generator(device=device).manual_seed(seed)
    out: list[np.ndarray] = []
    for lo in range(0, len(text), batch_size):
        cond = text[lo:lo + batch_size].to(device)
        lens = torch.as_tensor(lengths[lo:lo + batch_size], device=device)
        mask = length_mask(lens, max_frames)  # (b, L)

        def backbone(x, t, c, force_drop=None):
            m = mask if len(x) == len(mask) else mask.repeat(len(x) // len(mask), 1)  # CFG doubles the batch
            return model(x, t, c, token_mask=m, force_drop=force_drop)

        noise = torch.randn((len(cond), channels, max_frames), generator=g, device=device)
        if spec.sampler == "heun":
            fn = samplers.guided(backbone, cond, None, spec.cfg_scale, to_velocity=interpolant.velocity)
            x = samplers.heun(fn, noise, samplers.time_grid(spec.steps)).x
        else:
            fn = samplers.guided(backbone, cond, None, spec.cfg_scale)
            table = DiscreteSchedule("cosine", 1000)
            if spec.sampler == "ddpm":
                x = samplers.ddpm(fn, noise, table, spec.steps, interpolant.prediction, generator=g).x
            else:
                x = samplers.ddim(fn, noise, table, spec.steps, spec.eta, interpolant.prediction,
                                  generator=g).x
        x = x.float().cpu()
        keep = [max_frames if keep_padding else int(n) for n in lens.tolist()]
        out += [x[i, :, :n].T.contiguous().numpy() for i, n in enumerate(keep)]
        if progress is not None:
            progress(len(cond))
    return out
