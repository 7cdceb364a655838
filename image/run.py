"""The image recipe's config, presets and hooks, shared by `recipes/image_sit.py` and `layersync image`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.recipe import AlignSpec, ModelSpec, PathSpec, SampleSpec
from layersync.core.trainer import TrainConfig

LATENT_CHANNELS, VAE_DOWNSAMPLE = 4, 8  # the SD-VAE (kl-f8): 256² RGB ↔ 32×32×4


@dataclass(frozen=True)
@checked(image_size=">= 8", num_classes=">= 1", grid_per_class=">= 1", eval_per_class=">= 0",
         grid_classes=">= 0")
class ImageRecipe:
    """Class-conditional SiT on images; the default is the embedded digits set in pixel space."""

    # Sampling and evaluation only: a run may resume with these changed (core.trainer.fingerprint).
    resumable_keys: ClassVar[tuple[str, ...]] = ("sample", "grid_per_class", "eval_per_class", "grid_classes")

    run_dir: str = "runs/image_sit"
    dataset: Literal["digits", "latents"] = "digits"  # latents: SD-VAE latents from `layersync image prepare`
    data: str = ""  # the prepared folder (dataset=latents)
    image_size: int = 256  # latents: pixels of the prepared images; the model sees (4, size/8, size/8)
    num_classes: int = 1000  # latents: must equal the prepared folder's
    flip: bool = True  # latents: the mirrored image's moments for a random half of each batch
    vae: str = ""  # latents: SD-VAE folder for decoding ("" = the one `prepare` recorded in the index)
    vae_sha256: str = ""  # latents: its weights' checksum ("" = the one recorded in the index)
    # latents: a prepared folder of held-out images for --align.layersync=auto ("" = a few per class of
    # `data`, training data; image/latent_probe.py)
    probe_data: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    path: PathSpec = field(default_factory=PathSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    grid_per_class: int = 10  # EMA samples per class in the PNG grid
    eval_per_class: int = 100  # digits: EMA samples per class for the evaluation
    # latents: classes in the sample grid (those of DiT's sample.py: macaw, otter, husky, panda, …)
    grid_classes: tuple[int, ...] = (207, 360, 387, 974, 88, 979, 417, 279)
    # A run directory whose newest checkpoint's training weights start this run (fine-tuning, e.g. one written
    # by `layersync image import`); the optimizer starts fresh and the EMA at those weights.
    init_from: str = ""


# The default run, sized for 2 CPU cores: a 1.4M-parameter SiT (8 blocks, width 96) on 8×8 digits
# (patch 2 → 16 tokens), LayerSync 3←6: the teacher sits before the last 20% of blocks and the student
# after the first, as the paper advises.
_DIGITS = {
    "run_dir": "runs/image_sit",
    "model.preset": "S/2", "model.depth": 8, "model.hidden_size": 96, "model.num_heads": 4,
    "align.layersync": "3:6", "align.layersync_weight": 0.2,
    "train.total_steps": 2000, "train.global_batch_size": 64, "train.lr": 1e-3, "train.warmup_steps": 100,
    "train.ema_decay": 0.995, "train.log_every": 50, "train.ckpt_every": 500, "train.sample_every": 500,
    "train.eval_every": 0, "sample.sampler": "heun", "sample.steps": 20,
}

# ImageNet 256² on SD-VAE latents as SiT (Ma et al. 2024) trains it: AdamW 1e-4, no weight decay, global
# batch 256, EMA 0.9999, label dropout 0.1, linear path with velocity prediction, 400K steps; FID from the
# Euler–Maruyama SDE with 250 steps and no guidance (SiT Table 4; REPA and SRA report the same; LayerSync's
# README samples with SiT's ODE: --sample-preset sit-ode).
_IMAGENET = {
    "dataset": "latents", "image_size": 256, "num_classes": 1000, "flip": True,
    "train.global_batch_size": 256, "train.lr": 1e-4, "train.weight_decay": 0.0, "train.ema_decay": 0.9999,
    "train.total_steps": 400_000, "train.warmup_steps": 0, "train.log_every": 100, "train.ckpt_every": 50_000,
    "train.sample_every": 10_000, "train.eval_every": 0, "model.cond_dropout": 0.1,
    "path.path": "linear", "path.prediction": "velocity", "sample.sampler": "sde", "sample.sde_steps": 250,
    "sample.cfg_scale": 1.0, "grid_per_class": 4,
}


def _imagenet(name: str, model: str, time_input: str, **align: object) -> tuple[str, dict[str, object]]:
    return name, {**_IMAGENET, "run_dir": f"runs/{name}", "model.preset": model,
                  "model.time_input": time_input, **{f"align.{k}": v for k, v in align.items()}}


# Each preset embeds time as the reference it stands for (core/embed.py): SiT and LayerSync (built on SiT's
# code) embed their t, which is our 1 − t ("reversed"); REPA and SRA embed our t itself ("continuous").
PRESETS: dict[str, dict[str, object]] = {
    "digits": _DIGITS,
    "digits-vanilla": {**_DIGITS, "run_dir": "runs/image_sit_vanilla", "align.layersync": ""},
    **dict([
        _imagenet("sit-b2", "B/2", "reversed"), _imagenet("sit-l2", "L/2", "reversed"),
        _imagenet("sit-xl2", "XL/2", "reversed"),
        # LayerSync (this paper): student ← teacher, λ 0.2.
        _imagenet("sit-xl2-layersync", "XL/2", "reversed", layersync="8:16", layersync_weight=0.2),
        _imagenet("sit-l2-layersync", "L/2", "reversed", layersync="8:18", layersync_weight=0.2),
        # SRA (Jiang et al. 2025): student → EMA teacher at a lower noise level, λ 0.2, time gap 0.2.
        _imagenet("sit-xl2-sra", "XL/2", "continuous", sra="8:20", sra_weight=0.2, sra_time_gap=0.2),
        _imagenet("sit-b2-sra", "B/2", "continuous", sra="3:8", sra_weight=0.2, sra_time_gap=0.2),
        # SRA as its code is released (README's XL command: 8→20, t-max 0.2; loss-type cos, weight 0.5).
        _imagenet("sit-xl2-sra-released", "XL/2", "continuous", sra="8:20", sra_weight=0.5, sra_time_gap=0.2,
                  sra_variant="released"),
        # REPA (Yu et al. 2025): DINOv2-B patch tokens, λ 0.5; needs --align.repa_encoder=DINOV2_FOLDER.
        _imagenet("sit-xl2-repa", "XL/2", "continuous", repa_block=8, repa_weight=0.5),
        _imagenet("sit-l2-repa", "L/2", "continuous", repa_block=8, repa_weight=0.5),
        _imagenet("sit-b2-repa", "B/2", "continuous", repa_block=4, repa_weight=0.5),
    ]),
}
DEFAULT_PRESET = "digits"

# Sampling as the papers report FID (`layersync image sample --sample-preset NAME`), SampleSpec fields:
SAMPLE_PRESETS: dict[str, dict[str, object]] = {
    # SiT (willisma/SiT sample_ddp.py SDE defaults): Euler–Maruyama, 250 grid points, diffusion w = σ_t,
    # the last 0.04 a noise-free "Mean" step; no guidance (SiT Table 4; REPA and SRA w/o CFG too).
    "sit-sde": {"sampler": "sde", "sde_steps": 250, "cfg_scale": 1.0, "cfg_interval": None,
                "cfg_channels": 0},
    # SiT's ODE: torchdiffeq dopri5, atol 1e-6, rtol 1e-3 (train_utils.parse_ode_args); LayerSync's README
    # evaluates with this (its sample_ddp.py ODE, no CFG).
    "sit-ode": {"sampler": "dopri5", "atol": 1e-6, "rtol": 1e-3, "cfg_scale": 1.0, "cfg_interval": None,
                "cfg_channels": 0},
    # SiT-XL/2's FID 2.06 (README table) as its author gives the setting (willisma/SiT issue #18): "second-
    # order Heun ODE solver with 125 steps (250 NFEs) and 1.5 cfg scale", i.e. sample_ddp.py ODE
    # --sampling-method heun2 --num-sampling-steps 126: every step corrected, the last one too (heun2), and
    # CFG applied as its forward_with_cfg does, to the first 3 of the 4 latent channels.
    "sit-xl2-cfg1.5": {"sampler": "heun2", "steps": 125, "cfg_scale": 1.5, "cfg_interval": None,
                       "cfg_channels": 3},
    # REPA's FID 1.42 setting (its README; SRA's gen.sh is the same): generate.py --mode=sde --num-steps=250
    # --cfg-scale=1.8 --guidance-high=0.7: guidance on all channels for t ∈ [0, 0.7] (t = 1 noise, as ours).
    "repa-cfg1.8": {"sampler": "sde", "sde_steps": 250, "cfg_scale": 1.8, "cfg_interval": (0.0, 0.7),
                    "cfg_channels": 0},
}


def model_shape(cfg: ImageRecipe) -> tuple[tuple[int, int], int, int]:
    """(input_size, in_channels, num_classes) the model is built for, from the config alone."""
    if cfg.dataset == "digits":
        from layersync.image.digits import IMAGE_SHAPE, NUM_CLASSES

        return tuple(IMAGE_SHAPE[1:]), IMAGE_SHAPE[0], NUM_CLASSES
    if cfg.image_size % VAE_DOWNSAMPLE:
        raise UserValueError(f"image_size={cfg.image_size} is not a multiple of the SD-VAE's "
                             f"{VAE_DOWNSAMPLE}")
    side = cfg.image_size // VAE_DOWNSAMPLE
    return (side, side), LATENT_CHANNELS, cfg.num_classes


def resolve_data(cfg: ImageRecipe) -> ImageRecipe:
    """Check `--data` against the config; for latents fill the VAE path and checksum from its index."""
    if cfg.data and not Path(cfg.data).exists():
        raise UserFileNotFoundError(f"--data={cfg.data}: no such file or folder (leave it empty for the "
                                    "embedded digits)")
    if cfg.dataset == "digits":
        if cfg.data:
            raise UserValueError(f"--data={cfg.data} is read only with --dataset=latents (an ImageNet preset "
                                 "such as --preset=sit-xl2 sets it)")
        return cfg
    if not cfg.data:
        raise UserValueError("dataset=latents needs --data=FOLDER, written by `layersync image prepare "
                             "SOURCE FOLDER --vae VAE_FOLDER`")
    from layersync.image.latents import LatentIndex

    index = LatentIndex.load(cfg.data)
    expected = (LATENT_CHANNELS, *model_shape(cfg)[0])
    if index.image_size != cfg.image_size or tuple(index.latent_shape) != expected:
        raise UserValueError(f"{cfg.data} holds {index.image_size}² images as latents "
                             f"{list(index.latent_shape)}, but image_size={cfg.image_size} expects "
                             f"{list(expected)}; set --image_size to match")
    if index.num_classes != cfg.num_classes:
        raise UserValueError(f"{cfg.data} has {index.num_classes} classes but num_classes={cfg.num_classes}; "
                             f"add --num_classes={index.num_classes}")
    if cfg.vae_sha256 and cfg.vae_sha256 != index.vae_weights_sha256:
        raise UserValueError(f"vae_sha256={cfg.vae_sha256} differs from the VAE that encoded {cfg.data} "
                             f"({index.vae_weights_sha256})")
    return dataclasses.replace(cfg, vae=cfg.vae or index.vae_path, vae_sha256=index.vae_weights_sha256)


def load_data(cfg: ImageRecipe):
    """The training DataSource for a config passed through `resolve_data`."""
    from layersync.core.trainer import TensorSource

    if cfg.dataset == "latents":
        from layersync.image.latents import LatentSource

        # REPA's encoder sees the cropped images, mirrored with their latents.
        return LatentSource(cfg.data, flip=cfg.flip, with_images=bool(cfg.align.repa_block))
    from layersync.image.digits import digits_tensors

    x, y = digits_tensors("train")
    # Pixel space: the raw media REPA's encoder sees are the training images themselves.
    return TensorSource(x, y, raw=x)


def probe_set(cfg: ImageRecipe, probe_data: str = ""):
    """The labelled set `layersync image analyze` and `--align.layersync=auto` probe (the model is run at the
    null label; the probes split it 2:1 themselves): all 1,797 digits with their classes, or for latents
    `latent_probe.latent_probe_set` (`probe_data`, analyze's --probe-data, overrides `cfg.probe_data`)."""
    from layersync.metrics.representation import ProbeSet

    if cfg.dataset == "latents":
        from layersync.image.latent_probe import latent_probe_set

        return latent_probe_set(cfg, probe_data)
    if probe_data or cfg.probe_data:
        raise UserValueError("--probe-data / --probe_data name a prepared latents folder; a digits run "
                             "probes all 1,797 digits: leave them empty")
    from layersync.image.digits import digits_tensors

    x, y = digits_tensors("all")
    return ProbeSet(x, y, y, "digit class")


def class_batch(num_classes: int, per_class: int, device) -> torch.Tensor:
    """Labels 0,0,…,1,1,… (per_class of each)."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


def generate(model, interpolant, spec: SampleSpec, labels: torch.Tensor, shape: tuple[int, ...],
             seed: int, batch_size: int = 500) -> tuple[torch.Tensor, float]:
    """Class-conditional samples for `labels` (in chunks), with a fixed seed; returns (images, model
    evaluations per sample)."""
    from layersync.core.recipe import sample

    device = next(model.parameters()).device
    out, nfe = [], 0
    g = torch.Generator(device=device).manual_seed(seed)
    for lo in range(0, len(labels), batch_size):
        y = labels[lo:lo + batch_size].to(device)
        noise = torch.randn((len(y), *shape), generator=g, device=device)
        x, n = sample(model, interpolant, noise, y, None, spec, generator=g)  # null: force_drop
        out.append(x.float().cpu())
        nfe += n * len(y)  # each sample of the chunk saw n evaluations
    return torch.cat(out), nfe / max(len(labels), 1)


def make_hooks(cfg: ImageRecipe, interpolant, shape: tuple[int, ...], num_classes: int):
    """The trainer's sample_fn and eval_fn: `make_latent_hooks` for latents, else `make_digits_hooks`."""
    if cfg.dataset == "latents":
        return make_latent_hooks(cfg, interpolant, shape, num_classes)
    return make_digits_hooks(cfg, interpolant, shape, num_classes)


def make_latent_hooks(cfg: ImageRecipe, interpolant, shape: tuple[int, ...], num_classes: int):
    """sample_fn: a PNG grid of decoded EMA samples, a row per class of `grid_classes`; no eval_fn (FID
    needs 50 000 samples: use `layersync image sample` and `layersync image evaluate`)."""
    from layersync.image.grid import save_grid
    from layersync.image.vae import load_vae, vae_folder

    bad = [c for c in cfg.grid_classes if not 0 <= c < num_classes]
    if not cfg.grid_classes or bad:
        raise UserValueError(f"grid_classes must be non-empty class indices in [0, {num_classes}), got "
                         f"{list(cfg.grid_classes)}; e.g. --grid_classes=0,1")
    vae_folder(cfg.vae)  # fail at start-up, not at the first sample, when the VAE has gone
    vae = {}

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        if "v" not in vae:
            vae["v"] = load_vae(cfg.vae, cfg.vae_sha256, next(ema_model.parameters()).device)
        labels = torch.tensor(cfg.grid_classes).repeat_interleave(cfg.grid_per_class)
        latents, _ = generate(ema_model, interpolant, cfg.sample, labels, shape, seed=cfg.train.seed)
        images = vae["v"].decode(latents)  # (B, 3, H, W) in [-1, 1]
        (run_dir / "samples").mkdir(exist_ok=True)
        for path in (run_dir / "samples" / f"ema_step_{step:08d}.png", run_dir / "samples_ema.png"):
            save_grid(images, path, nrow=cfg.grid_per_class, upscale=1)

    return sample_fn, None


def check_eval_size(cfg: ImageRecipe, num_classes: int) -> None:
    """Checked at start-up and by --dry-run, not after training: a Fréchet distance needs more samples than
    feature dimensions."""
    from layersync.image.digits_eval import ClassifierConfig

    needed = ClassifierConfig().feature_dim + 1
    if cfg.dataset == "digits" and 0 < cfg.eval_per_class * num_classes < needed:
        raise UserValueError(f"eval_per_class={cfg.eval_per_class} gives {cfg.eval_per_class * num_classes} "
                             f"samples, but fd_digits needs at least {needed}; use --eval_per_class="
                             f"{-(-needed // num_classes)} or more, or 0 for no evaluation")


def make_digits_hooks(cfg: ImageRecipe, interpolant, shape: tuple[int, ...], num_classes: int):
    """The trainer's sample_fn (PNG grid per class) and eval_fn (digits Fréchet distance + accuracy)."""
    from layersync.image.digits_eval import DigitsEvaluator
    from layersync.image.grid import save_class_grid

    check_eval_size(cfg, num_classes)
    evaluator = {}

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        labels = class_batch(num_classes, cfg.grid_per_class, "cpu")
        images, _ = generate(ema_model, interpolant, cfg.sample, labels, shape, seed=cfg.train.seed)
        (run_dir / "samples").mkdir(exist_ok=True)
        save_class_grid(images.clamp(-1, 1), labels, run_dir / "samples" / f"ema_step_{step:08d}.png")
        save_class_grid(images.clamp(-1, 1), labels, run_dir / "samples_ema.png")

    def eval_fn(ema_model, step: int) -> dict:
        if "e" not in evaluator:
            evaluator["e"] = DigitsEvaluator.load_or_train()
        labels = class_batch(num_classes, cfg.eval_per_class, "cpu")
        images, nfe = generate(ema_model, interpolant, cfg.sample, labels, shape, seed=cfg.train.seed + 1)
        result = evaluator["e"].evaluate(images.clamp(-1, 1), labels)
        result = {**result, "sampler": cfg.sample.sampler, "nfe_per_sample": nfe, "step": step}
        Path(cfg.run_dir, "eval.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
        return result

    return sample_fn, eval_fn if cfg.eval_per_class else None


def save_npz(images: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Samples as an ADM-style batch: arr_0 uint8 NHWC, arr_1 labels."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(path, arr_0=u8, arr_1=labels.numpy())
    return Path(path)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif torch.is_tensor(v):
            v = v.tolist()
        out[k] = v
    return out
