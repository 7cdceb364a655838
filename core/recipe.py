"""What every recipe shares: config sections for the model, the path, the regularizers and sampling,
and the functions that turn them into objects. Domains add their data and evaluation on top."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .config import checked
from .errors import UserValueError
from .interpolants import Interpolant
from .models import PRESETS, DiT, DiTConfig


@dataclass(frozen=True)
@checked(depth=">= 0", hidden_size=">= 0", num_heads=">= 0", patch_size=">= 0", mlp_ratio="> 0",
         cond_dropout="[0, 1)")
class ModelSpec:
    """A DiT preset ("S/2" … "XL/8") with optional overrides (0 keeps the preset's value)."""

    preset: str = "XL/2"
    depth: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    patch_size: int = 0
    mlp_ratio: float = 4.0
    cond_dropout: float = 0.1
    grad_checkpointing: bool = False
    qk_norm: bool = False
    # The time embedding's input: "discrete" 1000·t (DiT, MDM), "continuous" t (REPA, SRA), "reversed" 1 − t
    # (SiT, LayerSync); t = 1 is noise here. The image presets that stand for a reference use its setting.
    time_input: Literal["discrete", "continuous", "reversed"] = "discrete"


@dataclass(frozen=True)
@checked(t_min="[0, 1)")
class PathSpec:
    """The stochastic interpolant: path, what the network predicts, and how t is drawn."""

    path: Literal["linear", "gvp", "vp", "vp_cosine"] = "linear"
    prediction: Literal["velocity", "noise", "score", "x0"] = "velocity"
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    t_min: float = 0.0  # > 0 (e.g. 1e-5, SiT's train_eps) where the target is infinite at t = 0 (VP velocity, score)


@dataclass(frozen=True)
@checked(layersync_weight=">= 0", sra_weight=">= 0", sra_time_gap="[0, 1]", repa_block=">= 0",
         repa_weight=">= 0", dispersive_block=">= 0", dispersive_weight=">= 0", dispersive_temperature="> 0",
         layersync_auto_warmup=">= 1")
class AlignSpec:
    """Which regularizers to add to the flow loss. Empty strings / 0 disable a term; terms combine."""

    layersync: str = ""  # "student:teacher[,…]", blocks from 1, e.g. "8:16"; or "auto"
    layersync_weight: float = 0.2
    layersync_schedule: str = ""  # λ factor over steps: constant, linear_warmup:N, cosine_decay:N, cutoff:N
    layersync_t_range: str = ""  # "LO:HI": align only samples with LO ≤ t ≤ HI ("" = every t)
    layersync_auto_warmup: int = 200  # layersync=auto: steps without alignment before the pair is chosen
    sra: str = ""  # "student:teacher" into the EMA teacher at lower noise, e.g. "8:20"
    sra_weight: float = 0.2
    sra_time_gap: float = 0.2
    # "features": cosine per token over features (DESIGN §1); "released": SRA's published code, 1 − cosine
    # over the token axis (core/sra.py), which its train.py weighs 0.5
    sra_variant: Literal["features", "released"] = "features"
    repa_block: int = 0  # student block for REPA; needs an encoder
    repa_weight: float = 0.5
    repa_encoder: str = ""  # local folder of a transformers DINOv2 checkpoint
    dispersive_block: int = 0
    dispersive_weight: float = 0.5
    dispersive_temperature: float = 0.5


@dataclass(frozen=True)
@checked(steps=">= 1", sde_steps=">= 1", atol="> 0", rtol="> 0", cfg_scale=">= 0", cfg_interval="[0, 1]",
         cfg_channels=">= 0")
class SampleSpec:
    """How samples are drawn: ODE (euler, heun, heun2, dopri5) or SDE (Euler–Maruyama), with optional CFG."""

    sampler: Literal["euler", "heun", "heun2", "dopri5", "sde"] = "heun"  # heun2: Heun's last step corrected
    steps: int = 50  # ODE steps; the SDE uses `sde_steps`
    sde_steps: int = 250
    atol: float = 1e-6
    rtol: float = 1e-3
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] | None = None  # apply guidance only for t in [lo, hi]
    cfg_channels: int = 0  # 0 guides all channels; 3 = SiT/LayerSync's forward_with_cfg (first 3 of 4)


def build_model(spec: ModelSpec, input_size: tuple[int, ...], in_channels: int,
                cond_kind: Literal["class", "text", "none"] = "class", num_classes: int = 0,
                text_dim: int = 0, patch_size: tuple[int, ...] | None = None) -> DiT:
    """A DiT from a preset plus the overrides and the domain's token layout; `patch_size` (one size per axis)
    is for domains whose patch is not the same on every axis (video's (t, h, w))."""
    if spec.preset not in PRESETS:
        raise UserValueError(f"unknown model preset {spec.preset!r}; choose one of "
                             f"{', '.join(sorted(PRESETS))}")
    overrides = {k: getattr(spec, k) for k in ("depth", "hidden_size", "num_heads", "patch_size")
                 if getattr(spec, k)}
    if patch_size is not None:
        if spec.patch_size:
            raise UserValueError(f"this domain sets the patch per axis ({tuple(patch_size)}); leave "
                                 "model.patch_size at 0")
        overrides["patch_size"] = tuple(patch_size)
    config = DiTConfig.from_preset(
        spec.preset, **overrides, input_size=tuple(input_size), in_channels=in_channels,
        mlp_ratio=spec.mlp_ratio, cond_kind=cond_kind, num_classes=num_classes, text_dim=text_dim,
        cond_dropout=spec.cond_dropout if cond_kind != "none" else 0.0,
        grad_checkpointing=spec.grad_checkpointing, qk_norm=spec.qk_norm, time_input=spec.time_input)
    return DiT(config)


def build_interpolant(spec: PathSpec) -> Interpolant:
    return Interpolant(path=spec.path, prediction=spec.prediction, time_sampling=spec.time_sampling,
                       t_min=spec.t_min)


def _pair(text: str, name: str) -> tuple[int, int]:
    try:
        student, teacher = (int(v) for v in text.split(":"))
    except ValueError:
        raise UserValueError(f"{name}={text!r}: expected 'student:teacher', e.g. '8:20'") from None
    return student, teacher


def build_regularizer(spec: AlignSpec, model: DiT, choose_pair=None, run_dir=None) -> nn.Module | None:
    """Sum of the enabled regularizers, validated against the model's depth; None when all are off.

    `layersync=auto` needs `choose_pair(model) -> ((student, teacher), reason)` from the domain (its labelled
    probe set; see `metrics.representation.choose_pair`) and records the choice in `run_dir`."""
    from .auto_pair import AutoLayerSync
    from .regularizers import REPA, SRA, Combined, Dispersive, DinoV2Encoder, LayerSync
    from .schedules import parse_schedule, parse_t_range

    depth, width = model.config.depth, model.config.hidden_size
    terms: list[nn.Module] = []
    layersync = {"weight": spec.layersync_weight, "t_range": parse_t_range(spec.layersync_t_range),
                 "weight_schedule": parse_schedule(spec.layersync_schedule)}
    if spec.layersync == "auto":
        if choose_pair is None:
            raise UserValueError("align.layersync=auto chooses the pair with a labelled probe set, which "
                                 "this recipe does not provide; give the pair, e.g. --align.layersync=2:5")
        terms.append(AutoLayerSync(model, choose_pair, spec.layersync_auto_warmup, run_dir=run_dir,
                                   **layersync))
    elif spec.layersync:
        terms.append(LayerSync(spec.layersync, depth=depth, **layersync))
    elif spec.layersync_schedule or spec.layersync_t_range:
        raise UserValueError("align.layersync_schedule and align.layersync_t_range shape LayerSync, which is "
                             "off; set --align.layersync too")
    if spec.sra:
        student, teacher = _pair(spec.sra, "sra")
        terms.append(SRA(student, teacher, hidden_size=width, weight=spec.sra_weight,
                         time_gap=spec.sra_time_gap, depth=depth, variant=spec.sra_variant))
    if spec.repa_block:
        if not spec.repa_encoder:
            raise UserValueError("repa_block is set but repa_encoder is empty: give the local DINOv2 folder")
        encoder = DinoV2Encoder.from_local(spec.repa_encoder)
        terms.append(REPA(spec.repa_block, hidden_size=width, encoder_dim=encoder.dim,
                          weight=spec.repa_weight, encoder=encoder, depth=depth))
    if spec.dispersive_block:
        terms.append(Dispersive(spec.dispersive_block, weight=spec.dispersive_weight,
                                temperature=spec.dispersive_temperature, depth=depth))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else Combined(terms)


@torch.no_grad()
def sample(model: nn.Module, interpolant: Interpolant, noise: torch.Tensor, cond, null_cond,
           spec: SampleSpec, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Integrate from noise (t = 1) to data (t = 0); returns (samples, number of model evaluations)."""
    from . import samplers

    model.eval()
    scale = spec.cfg_scale if cond is not None else 1.0
    model_fn = samplers.guided(model, cond, null_cond, scale, interval=spec.cfg_interval,
                               to_velocity=interpolant.velocity, channels=spec.cfg_channels or None)
    if spec.sampler == "euler":
        out = samplers.euler(model_fn, noise, samplers.time_grid(spec.steps))
    elif spec.sampler in ("heun", "heun2"):
        out = samplers.heun(model_fn, noise, samplers.time_grid(spec.steps),
                            correct_last=spec.sampler == "heun2")
    elif spec.sampler == "dopri5":
        out = samplers.dopri5(model_fn, noise, atol=spec.atol, rtol=spec.rtol)
    else:
        out = samplers.euler_maruyama(model_fn, noise, interpolant, steps=spec.sde_steps, generator=generator)
    return out.x, out.nfe
