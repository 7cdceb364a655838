"""LoRA fine-tuning of a diffusers transformer (DiT, Wan) with LayerSync, on the project's Trainer.

    accelerate launch recipes/finetune_lora.py                      # tiny random DiT, embedded digits, CPU
    accelerate launch recipes/finetune_lora.py --preset=wan-balls   # tiny random Wan, embedded balls clips
    accelerate launch recipes/finetune_lora.py --preset=wan2.1-t2v-1.3b \\
        --model_path=/weights/Wan2.1-T2V-1.3B-Diffusers --data=wan_latents.pt
    python recipes/finetune_lora.py --dry-run
Rerunning the same command resumes from the newest checkpoint in its run directory.

The story of a step: the Trainer draws x, ε, t and the condition drop; the backbone (core.diffusers_backbone)
runs the diffusers transformer inside `capture_blocks(transformer.blocks, (student, teacher))`, so the
LayerSync term reads block outputs of that same forward pass; only the LoRA weights (peft) are trained.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.recipe import AlignSpec, PathSpec, SampleSpec
from layersync.core.trainer import TrainConfig


@dataclass(frozen=True)
@checked(lora_rank=">= 1", lora_alpha="> 0", cond_dropout="[0, 1)", sample_count=">= 1")
class LoraRecipe:
    """A diffusers transformer, LoRA on its blocks' attention, LayerSync between two of its blocks."""

    resumable_keys: ClassVar[tuple[str, ...]] = ("sample", "sample_count")

    run_dir: str = "runs/finetune_lora"
    family: Literal["dit", "wan"] = "dit"
    pretrained: bool = False  # False: a tiny random model on the embedded data; True: model_path on data
    model_path: str = ""  # local diffusers folder (save_pretrained, or a pipeline folder with transformer/)
    data: str = ""  # torch file {"x": (N, C, …) latents, "cond": (N,) labels | (N, L, text_dim) embeddings}
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # Linear layers inside the blocks
    cond_dropout: float = 0.1  # probability a condition becomes the null one (classifier-free guidance)
    gradient_checkpointing: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    path: PathSpec = field(default_factory=PathSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    sample_count: int = 20  # EMA samples at every sampling (DiT: labels 0, 1, … cycling over the classes)


# The embedded defaults, sized for 2 CPU cores: an 8-block random-weights model with rank-16 LoRA on its
# attention, LayerSync 3←6 (student after the first block, teacher before the last 20%), as the toy recipes.
_TOY = {"align.layersync": "3:6", "align.layersync_weight": 0.2, "train.lr": 1e-3, "train.warmup_steps": 50,
        "train.ema_decay": 0.99, "train.log_every": 25, "train.ckpt_every": 200, "train.sample_every": 200,
        "train.eval_every": 0, "sample.sampler": "heun", "sample.steps": 16}
PRESETS: dict[str, dict[str, object]] = {
    "dit-digits": {**_TOY, "run_dir": "runs/finetune_lora", "family": "dit", "train.total_steps": 600,
                   "train.global_batch_size": 64},
    "wan-balls": {**_TOY, "run_dir": "runs/finetune_lora_wan", "family": "wan", "cond_dropout": 0.0,
                  "train.total_steps": 200, "train.global_batch_size": 16, "sample_count": 4},
    # facebook/DiT-XL-2-256 on SD-VAE latents: its DDPM linear-β noise prediction is our VP path (see
    # core.diffusers_backbone); LayerSync 8←16 at λ 0.2, the paper's pair for the 28-block SiT-XL/2.
    "dit-xl-2-256": {"run_dir": "runs/finetune_lora_dit_xl", "family": "dit", "pretrained": True,
                     "path.path": "vp", "path.prediction": "noise", "align.layersync": "8:16",
                     "align.layersync_weight": 0.2,
                     "train.total_steps": 20_000, "train.global_batch_size": 32, "train.lr": 1e-4,
                     "train.ckpt_every": 2_000, "train.sample_every": 2_000, "sample.sampler": "sde",
                     "lora_rank": 32, "lora_alpha": 32.0},
    # The LayerSync authors' Wan2.1 fine-tuning (Finetuning-LoRA/ on DiffSynth-Studio): LoRA rank 32, blocks 8
    # and 16 counted from 0 (9←17 here), λ 0.002, flow-matching velocity.
    "wan2.1-t2v-1.3b": {"run_dir": "runs/finetune_lora_wan21", "family": "wan", "pretrained": True,
                        "align.layersync": "9:17",
                        "align.layersync_weight": 0.002, "lora_rank": 32, "lora_alpha": 32.0,
                        "gradient_checkpointing": True, "train.total_steps": 5_000,
                        "train.global_batch_size": 8,
                        "train.lr": 1e-4, "train.ckpt_every": 500, "train.sample_every": 1_000,
                        "sample.sampler": "euler", "sample.steps": 50, "sample_count": 2},
}
DEFAULT_PRESET = "dit-digits"


def check_sources(cfg: LoraRecipe) -> None:
    if cfg.pretrained and not (cfg.model_path and cfg.data):
        raise UserValueError("pretrained=true needs --model_path=FOLDER (diffusers weights) and "
                             "--data=FILE.pt "
                             "(latents in their space: {'x': (N, C, …), 'cond': labels or text embeddings})")
    if not cfg.pretrained and (cfg.model_path or cfg.data):
        raise UserValueError("--model_path and --data are read with --pretrained=true (or a pretrained "
                             "preset, "
                             "e.g. --preset=wan2.1-t2v-1.3b); the default trains a tiny model on embedded "
                             "data")


def load_data(cfg: LoraRecipe):
    """(x (N, C, …) in model space, cond or None): the embedded set of the family, or `--data`'s file."""
    if not cfg.pretrained:
        if cfg.family == "dit":
            from layersync.image.digits import digits_tensors

            return digits_tensors("train")  # (N, 1, 8, 8) in [-1, 1], labels (N,)
        from layersync.video.balls import balls_clips

        return balls_clips("train").clips, None  # (N, 3, 8, 16, 16) in [-1, 1], unconditional
    if not Path(cfg.data).is_file():
        raise UserFileNotFoundError(f"--data={cfg.data}: no such file (a torch file {{'x': …, 'cond': …}})")
    blob = torch.load(cfg.data, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not torch.is_tensor(blob.get("x")):
        raise UserValueError(f"--data={cfg.data} must hold a dict with 'x' (N, C, …) latents and optional "
                             "'cond'")
    return blob["x"].float(), blob.get("cond")


def build_backbone(cfg: LoraRecipe, x: torch.Tensor, cond):
    from layersync.core.diffusers_backbone import (DiffusersBackbone, add_lora, load_transformer,
                                                   tiny_transformer)

    if cfg.pretrained:
        transformer = load_transformer(cfg.family, cfg.model_path)
    else:
        transformer = tiny_transformer(cfg.family, in_channels=x.shape[1], sample_size=x.shape[-1])
    if transformer.config.in_channels != x.shape[1]:
        raise UserValueError(f"the data has {x.shape[1]} channels but the transformer takes "
                             f"{transformer.config.in_channels}")
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()  # non-reentrant: capture_blocks keeps the gradient
    text_tokens = cond.shape[1] if cfg.family == "wan" and cond is not None else 1
    backbone = DiffusersBackbone(transformer, cfg.family, cfg.cond_dropout, null_text_tokens=text_tokens)
    add_lora(backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return backbone


def make_sample_fn(cfg: LoraRecipe, interpolant, shape: tuple[int, ...], cond):
    """EMA samples from a fixed seed: `samples/step_N.pt` always; a PNG grid (digits) or MP4s (balls)."""
    from layersync.core.recipe import sample

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        device = next(ema_model.parameters()).device
        g = torch.Generator(device=device).manual_seed(cfg.train.seed)
        if cfg.family == "dit":
            labels = torch.arange(cfg.sample_count) % ema_model.num_classes
            c = labels.to(device)
        else:
            c = None if cond is None else cond[: cfg.sample_count].to(device)
        noise = torch.randn((cfg.sample_count, *shape), generator=g, device=device)
        x, _ = sample(ema_model, interpolant, noise, c, None, cfg.sample, generator=g)
        folder = Path(run_dir) / "samples"
        folder.mkdir(exist_ok=True)
        torch.save(x.cpu(), folder / f"step_{step:08d}.pt")
        if cfg.pretrained:  # latents: decoding needs the family's VAE, outside this recipe
            return
        if cfg.family == "dit":
            from layersync.image.grid import save_class_grid

            save_class_grid(x.clamp(-1, 1).cpu(), labels, Path(run_dir) / "samples_ema.png")
        else:
            from layersync.video.media import to_uint8, write_clips

            write_clips(to_uint8(x.clamp(-1, 1).cpu()), folder / f"step_{step:08d}")

    return sample_fn


def main(argv: list[str] | None = None) -> dict:
    from layersync.core.cli_util import print_config, resolve_config
    from layersync.core.diffusers_backbone import describe
    from layersync.core.recipe import build_interpolant, build_regularizer
    from layersync.core.trainer import TensorSource, Trainer

    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(LoraRecipe, PRESETS, DEFAULT_PRESET, argv, prog="recipes/finetune_lora.py")
    if dry_run and cfg.pretrained and not cfg.model_path:
        print_config(cfg)
        print("# model: training needs the pretrained transformer (--model_path) and latents (--data)")
        return {}
    check_sources(cfg)
    x, cond = load_data(cfg)
    torch.manual_seed(cfg.train.seed)  # the tiny model's weights and the LoRA initialisation follow the seed
    backbone = build_backbone(cfg, x, cond)
    regularizer = build_regularizer(cfg.align, backbone)
    if dry_run:
        print_config(cfg)
        print(f"# model: {describe(backbone)}; data {tuple(x.shape)}; regularizer: "
              f"{regularizer.__class__.__name__ if regularizer is not None else 'none'}")
        return {}
    torch.manual_seed(cfg.train.seed)
    interpolant = build_interpolant(cfg.path)
    sample_fn = make_sample_fn(cfg, interpolant, tuple(x.shape[1:]), cond)
    trainer = Trainer(cfg.train, backbone, interpolant, TensorSource(x, cond), cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn)
    result = trainer.fit()
    if trainer.acc.is_main_process:
        grid = ", samples_ema.png" if cfg.family == "dit" and not cfg.pretrained else ""
        print(f"run directory: {cfg.run_dir} (config.json, checkpoints/ with the LoRA and EMA weights, "
              f"log.jsonl, tensorboard/, samples/{grid})")
    return result


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="recipes/finetune_lora.py")
