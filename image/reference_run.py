"""A reference checkpoint as a run directory (`layersync image import`), and a run as the start of another
(`--init_from=RUN`).

The imported run holds `checkpoints/step_00000000.pt` with "model" and "ema" (the file's training and EMA
weights; a released bare state dict gives both), the resolved config of an ImageNet-latents SiT of the
checkpoint's shape and time input, and "imported" = {format, source, sha256}. `layersync image sample` and
`evaluate` read it as any run; `imported.json` beside it says where it came from. It has no optimizer state,
so it is not resumed: training starts from it with `--init_from=RUN` in a new run directory (the weights, a
fresh optimizer, the EMA starting at the weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.checkpoint import CheckpointError, atomic_save, checkpoint_path, list_checkpoints
from ..core.config import apply_overrides, to_dict
from ..core.errors import UserValueError
from ..core.models import PRESETS as MODEL_PRESETS
from ..core.models import DiT
from ..core.weights import sha256sum
from .reference import FORMATS, model_from_reference, read_weights_only, reference_state_dict
from .run import LATENT_CHANNELS, PRESETS, VAE_DOWNSAMPLE, ImageRecipe

# The recipe preset an import's config starts from, per format: the evaluation settings of that paper
# (SDE, 250 steps, no guidance), no regularizer (the import trains nothing; a fine-tune picks its own).
_BASE_PRESET = "sit-xl2"
IMPORTED = "imported.json"  # in the run directory: {format, source, sha256}


def imported_recipe(model: DiT, run: str | os.PathLike) -> ImageRecipe:
    """The ImageRecipe a run of `model` would have had: latents of image_size = 8·latent side."""
    cfg = model.config
    square = len(cfg.input_size) == 2 and cfg.input_size[0] == cfg.input_size[1]
    if cfg.in_channels != LATENT_CHANNELS or not square:
        raise UserValueError(f"an image run holds SD-VAE latents ({LATENT_CHANNELS}, S, S); this checkpoint "
                             f"takes {cfg.in_channels} channels of {cfg.input_size}: use "
                             "load_reference_checkpoint directly")
    shape = dict(depth=cfg.depth, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                 patch_size=cfg.patch_size[0])
    preset = next((name for name, p in MODEL_PRESETS.items() if p == shape), "XL/2")
    return apply_overrides(ImageRecipe(), {
        **PRESETS[_BASE_PRESET], "run_dir": str(run), "image_size": cfg.input_size[0] * VAE_DOWNSAMPLE,
        "num_classes": cfg.num_classes, "model.preset": preset, "model.mlp_ratio": cfg.mlp_ratio,
        "model.time_input": cfg.time_input, **{f"model.{k}": v for k, v in shape.items()}})


def import_reference(source: str | os.PathLike, format: str, run: str | os.PathLike,
                     num_heads: int | None = None) -> Path:
    """Write `source` (a sit/layersync/repa/sra checkpoint) as run directory `run`; returns the checkpoint."""
    if format not in FORMATS:
        raise UserValueError(f"--format must be one of {FORMATS}, got {format!r}")
    run = Path(run)
    if list_checkpoints(run):
        raise UserValueError(f"{run} already holds checkpoints; import into a new run directory")
    obj = read_weights_only(source)
    ema = model_from_reference(reference_state_dict(obj, source, use_ema=True), format, source, num_heads)
    has_model = isinstance(obj, dict) and "model" in obj and "ema" in obj
    model = model_from_reference(reference_state_dict(obj, source, use_ema=False), format, source,
                                 ema.config.num_heads) if has_model else ema
    cfg = imported_recipe(ema, run)
    path = checkpoint_path(run, 0)
    record = {"format": format, "source": str(Path(source).resolve()), "sha256": sha256sum(source)}
    atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "config": to_dict(cfg), "step": 0,
                 "imported": record}, path)
    (run / IMPORTED).write_text(json.dumps(record, indent=2) + "\n")
    (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    return path


def init_weights(model: torch.nn.Module, cfg: ImageRecipe) -> Path | None:
    """Load `cfg.init_from`'s newest checkpoint's training weights into `model` (fine-tuning start); None
    when init_from is empty. The run's time input must equal ours: the weights would load, the field not."""
    if not cfg.init_from:
        return None
    from ..core.runs import load_run_state, load_weights

    init_cfg, state, path = load_run_state(cfg.init_from, None, ImageRecipe, "image", "recipes/image_sit.py")
    if init_cfg.model.time_input != cfg.model.time_input:
        raise UserValueError(f"--init_from={cfg.init_from} embeds time as {init_cfg.model.time_input!r}, "
                             f"this config as {cfg.model.time_input!r}; add "
                             f"--model.time_input={init_cfg.model.time_input}")
    load_weights(model, state["model"], path, what="training weights")
    return path


def refuse_imported_resume(run_dir: str | os.PathLike) -> None:
    """An imported run has no optimizer to resume: point to --init_from, not fail on a missing key."""
    if (Path(run_dir) / IMPORTED).is_file():
        raise CheckpointError(f"{run_dir} holds an imported checkpoint (no optimizer state): train from it "
                              f"with --init_from={run_dir} and another --run_dir")
