"""Unconditional spatio-temporal SiT with LayerSync on video: train, write MP4s, report a Fréchet distance.

    accelerate launch recipes/video_sit.py                  # embedded balls clips, ~5 min on 2 CPU cores
    accelerate launch recipes/video_sit.py --preset=balls-vanilla
    accelerate launch recipes/video_sit.py --preset=clevrer-xl --data=/data/clevrer/video_train \\
        --vae=/weights/sd-vae-ft-ema --fvd_reference=/data/clevrer_val_pixels \\
        --i3d=/weights/i3d_torchscript.pt
    python recipes/video_sit.py --dry-run --train.total_steps=100
Rerunning the same command resumes from the newest checkpoint in its run directory.
"""

from __future__ import annotations

import logging
import sys

import torch


def main(argv: list[str] | None = None) -> dict:
    from layersync.core.cli_util import print_config, resolve_config
    from layersync.core.recipe import build_interpolant, build_regularizer
    from layersync.core.runs import run_directory_line
    from layersync.core.trainer import Trainer
    from layersync.video.run import (DEFAULT_PRESET, PRESETS, VideoRecipe, build_video_model,
                                     check_evaluation, load_data, load_vae, make_hooks, model_shape, pin_vae)

    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(VideoRecipe, PRESETS, DEFAULT_PRESET, argv, prog="recipes/video_sit.py")
    check_evaluation(cfg)
    vae = load_vae(cfg)
    cfg = pin_vae(cfg, vae)  # recorded in config.json and every checkpoint
    shape = model_shape(cfg, vae)
    torch.manual_seed(cfg.train.seed)  # the initial weights (and any regularizer head) follow the run's seed
    model = build_video_model(cfg, shape)
    interpolant = build_interpolant(cfg.path)
    chooser = None
    if cfg.align.layersync == "auto":  # the pair is chosen after a warm-up by probing the number of balls
        from layersync.metrics.representation import pair_chooser
        from layersync.video.probe import probe_set

        chooser = pair_chooser(probe_set(cfg), interpolant)
    regularizer = build_regularizer(cfg.align, model, chooser, cfg.run_dir)
    if dry_run:
        print_config(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"# model: {n_params / 1e6:.2f}M parameters, input {shape}, {model.config.num_tokens} tokens "
              f"(grid {model.config.grid}), regularizer: "
              f"{regularizer.__class__.__name__ if regularizer is not None else 'none'}")
        return {}
    source = load_data(cfg, vae)
    torch.manual_seed(cfg.train.seed)
    sample_fn, eval_fn = make_hooks(cfg, interpolant, shape, vae)
    trainer = Trainer(cfg.train, model, interpolant, source, cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn, eval_fn=eval_fn)
    result = trainer.fit()
    if trainer.acc.is_main_process:
        print(run_directory_line(cfg.run_dir, ("config.json", "checkpoints/", "log.jsonl", "tensorboard/",
                                               "samples/step_*/clip_*.mp4", "samples/step_*/clip_*.png",
                                               "samples_ema.png", "curves.png", "eval.json")))
        metric = "fd_balls" if "fd_balls" in result else "fvd"
        if metric in result:
            print(f"{metric} = {result[metric]:.4g} ({result['metric']})")
    return result


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="recipes/video_sit.py")
