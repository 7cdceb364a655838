"""The image recipe's config, presets and hooks, shared by `recipes/image_sit.py` and `layersync image`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layersync.core.recipe import AlignSpec, ModelSpec, PathSpec, SampleSpec
from layersync.core.trainer import TrainConfig


@dataclass(frozen=True)
class ImageRecipe:
    """Class-conditional SiT on images; the default is the embedded digits set in pixel space."""

    run_dir: str = "runs/image_sit"
    data: str = ""  # "" = embedded scikit-learn digits (8×8 pixels); a path = pre-encoded latents
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    path: PathSpec = field(default_factory=PathSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    grid_per_class: int = 10  # EMA samples per class in the PNG grid
    eval_per_class: int = 100  # EMA samples per class for the evaluation


# The default run, sized for 2 CPU cores: a 1.4M-parameter SiT (8 blocks, width 96) on 8×8 digits
# (patch 2 → 16 tokens), LayerSync 3←6: the teacher sits before the last 20% of blocks and the student
# after the first, as the paper advises.
_DIGITS = {
    "run_dir": "runs/image_sit",
    "model.preset": "S/2", "model.depth": 8, "model.hidden_size": 96, "model.num_heads": 4,
    "align.layersync": "3:6", "align.layersync_weight": 0.2,
    "train.total_steps": 2000, "train.global_batch_size": 64, "train.lr": 1e-3, "train.warmup_steps": 100,
    "train.ema_decay": 0.999, "train.log_every": 50, "train.ckpt_every": 500, "train.sample_every": 500,
    "train.eval_every": 0, "sample.sampler": "heun", "sample.steps": 20,
}

PRESETS: dict[str, dict[str, object]] = {
    "digits": _DIGITS,
    "digits-vanilla": {**_DIGITS, "run_dir": "runs/image_sit_vanilla", "align.layersync": ""},
}
DEFAULT_PRESET = "digits"


def load_data(cfg: ImageRecipe):
    """(train source, input_size, in_channels, num_classes, evaluator factory) for `cfg.data`."""
    from layersync.core.trainer import TensorSource

    if cfg.data and not Path(cfg.data).exists():
        raise FileNotFoundError(f"--data={cfg.data}: no such file or folder (leave it empty for the embedded "
                                "digits)")
    if cfg.data:
        raise NotImplementedError(
            f"--data={cfg.data}: pre-encoded ImageNet latents are not supported yet (the image-domain "
            "pipeline builds them); run without --data for the embedded digits")
    from layersync.image.digits import NUM_CLASSES, digits_tensors

    x, y = digits_tensors("train")
    # Pixel space: the raw media REPA's encoder sees are the training images themselves.
    return TensorSource(x, y, raw=x), tuple(x.shape[2:]), x.shape[1], NUM_CLASSES


def class_batch(num_classes: int, per_class: int, device) -> torch.Tensor:
    """Labels 0,0,…,1,1,… (per_class of each)."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


def generate(model, interpolant, spec: SampleSpec, labels: torch.Tensor, shape: tuple[int, ...],
             seed: int, batch_size: int = 500) -> tuple[torch.Tensor, int]:
    """Class-conditional samples for `labels` (in chunks), with a fixed seed; returns (images, nfe)."""
    from layersync.core.recipe import sample

    device = next(model.parameters()).device
    out, nfe = [], 0
    g = torch.Generator(device=device).manual_seed(seed)
    for lo in range(0, len(labels), batch_size):
        y = labels[lo:lo + batch_size].to(device)
        noise = torch.randn((len(y), *shape), generator=g, device=device)
        x, n = sample(model, interpolant, noise, y, None, spec, generator=g)  # null: force_drop
        out.append(x.float().cpu())
        nfe += n
    return torch.cat(out), nfe


def make_hooks(cfg: ImageRecipe, interpolant, shape: tuple[int, ...], num_classes: int):
    """The trainer's sample_fn (PNG grid per class) and eval_fn (digits Fréchet distance + accuracy)."""
    from layersync.image.digits_eval import DigitsEvaluator
    from layersync.image.grid import save_class_grid

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
        result = {**result, "sampler": cfg.sample.sampler, "nfe_per_sample": nfe / len(labels), "step": step}
        Path(cfg.run_dir, "eval.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
        return result

    return sample_fn, eval_fn


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
