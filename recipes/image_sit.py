"""Class-conditional SiT with LayerSync on images: train, sample, evaluate.

    accelerate launch recipes/image_sit.py                       # embedded digits, ~9 min on 2 CPU cores
    accelerate launch recipes/image_sit.py --preset=digits-vanilla
    accelerate launch recipes/image_sit.py --preset=sit-xl2-layersync --data=LATENTS   # ImageNet 256², paper
    python recipes/image_sit.py --dry-run --train.total_steps=100
    accelerate launch recipes/image_sit.py --preset=sit-xl2-layersync --data=LATENTS --init_from=IMPORTED_RUN
Rerunning the same command resumes from the newest checkpoint in its run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import torch


def main(argv: list[str] | None = None) -> dict:
    from layersync.core.cli_util import print_config, resolve_config
    from layersync.core.recipe import build_interpolant, build_model, build_regularizer
    from layersync.core.runs import run_directory_line
    from layersync.core.trainer import Trainer
    from layersync.image.run import (DEFAULT_PRESET, PRESETS, ImageRecipe, check_eval_size, load_data,
                                     make_hooks, model_shape, probe_set, resolve_data)
    from layersync.image.reference_run import init_weights, refuse_imported_resume
    from layersync.metrics.representation import pair_chooser

    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(ImageRecipe, PRESETS, DEFAULT_PRESET, argv, prog="recipes/image_sit.py")
    if not dry_run or cfg.data:  # --dry-run shows an ImageNet preset without its data
        cfg = resolve_data(cfg)
    input_size, in_channels, num_classes = model_shape(cfg)
    torch.manual_seed(cfg.train.seed)  # the initial weights (and any regularizer head) follow the run's seed
    model = build_model(cfg.model, input_size, in_channels, cond_kind="class", num_classes=num_classes)
    interpolant = build_interpolant(cfg.path)
    # --align.layersync=auto: the pair is chosen after a warm-up by probing labelled data (image/run.py).
    chooser = pair_chooser(probe_set(cfg), interpolant) if cfg.align.layersync == "auto" else None
    if dry_run:
        check_eval_size(cfg, num_classes)  # what training refuses before its first step
        align, note = cfg.align, ""
        if align.repa_block and not align.repa_encoder:  # show the rest; training refuses without it
            align = dataclasses.replace(align, repa_block=0)
            note = f"; REPA on block {cfg.align.repa_block} needs --align.repa_encoder=DINOV2_FOLDER to train"
        regularizer = build_regularizer(align, model, chooser)
        print_config(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"# model: {n_params / 1e6:.2f}M parameters, {model.config.num_tokens} tokens of "
              f"{in_channels}×{'×'.join(map(str, input_size))} inputs, {num_classes} classes, regularizer: "
              f"{regularizer.__class__.__name__ if regularizer is not None else 'none'}{note}")
        return {}
    refuse_imported_resume(cfg.run_dir)
    init_weights(model, cfg)  # before the Trainer copies the EMA from the model; a resume then overrides
    source = load_data(cfg)
    regularizer = build_regularizer(cfg.align, model, chooser, cfg.run_dir)
    torch.manual_seed(cfg.train.seed)
    sample_fn, eval_fn = make_hooks(cfg, interpolant, (in_channels, *input_size), num_classes)
    trainer = Trainer(cfg.train, model, interpolant, source, cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn, eval_fn=eval_fn)
    result = trainer.fit()
    if trainer.acc.is_main_process:
        if eval_fn is not None:
            note = ""
        elif cfg.dataset == "digits":
            note = "no evaluation: eval_per_class=0"
        else:
            note = f"then FID: `layersync image sample --run {cfg.run_dir}` and `layersync image evaluate`"
        print(run_directory_line(cfg.run_dir, ("config.json", "checkpoints/", "log.jsonl", "tensorboard/",
                                               "samples_ema.png", "curves.png", "eval.json"), note))
    return result


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="recipes/image_sit.py")
