"""Text-to-motion MDM (or DiT) with LayerSync: train, render MP4s, run the T2M protocol.

    accelerate launch recipes/motion_mdm.py             # embedded synthetic motions, < 10 min on 2 CPU cores
    accelerate launch recipes/motion_mdm.py --preset=embedded-vanilla
    accelerate launch recipes/motion_mdm.py --preset=humanml3d --data=HumanML3D \\
        --text_encoder_path=clip-vit-base-patch32 --t2m_evaluator=t2m/text_mot_match/model/finest.tar \\
        --t2m_glove=glove --t2m_meta=t2m/text_mot_match/meta   # the paper's MDM setting, 600K steps
    python recipes/motion_mdm.py --dry-run
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
    from layersync.motion.generate import check_sampler
    from layersync.motion.humanml3d import MotionSource
    from layersync.motion.run import (DEFAULT_PRESET, PRESETS, TEXT_DIMS, MotionRecipe, build_backbone,
                                      build_evaluator, load_data, make_hooks)

    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(MotionRecipe, PRESETS, DEFAULT_PRESET, argv, prog="recipes/motion_mdm.py")
    interpolant = build_interpolant(cfg.path)
    check_sampler(cfg.sample, interpolant)
    # Build and validate the model before loading data and the text encoder (bad settings fail in a second).
    torch.manual_seed(cfg.train.seed)
    model = build_backbone(cfg, TEXT_DIMS[cfg.text_encoder])
    regularizer = build_regularizer(cfg.align, model)
    if dry_run:
        print_config(cfg)
        print(f"# {cfg.backbone}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"≤ {cfg.max_frames} frame tokens, {cfg.text_encoder} text features "
              f"({TEXT_DIMS[cfg.text_encoder]}-d), "
              f"regularizer: {regularizer.__class__.__name__ if regularizer is not None else 'none'}")
        return {}
    data = load_data(cfg)
    if data.encoder.dim != TEXT_DIMS[cfg.text_encoder]:  # e.g. a CLIP variant with a wider projection
        torch.manual_seed(cfg.train.seed)
        model = build_backbone(cfg, data.encoder.dim)
        regularizer = build_regularizer(cfg.align, model)
    source = MotionSource(data.train, data.rows, data.table, cfg.max_frames)
    sample_fn, eval_fn = make_hooks(cfg, interpolant, data, build_evaluator(cfg, data))
    trainer = Trainer(cfg.train, model, interpolant, source, cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.acc.is_main_process:
        print(f"text encoder: {data.encoder.describe()}; {len(data.train.items)} train items, "
              f"{len(source)} (motion, caption) pairs")
    result = trainer.fit()
    if trainer.acc.is_main_process:
        print(run_directory_line(cfg.run_dir, ("config.json", "checkpoints/", "log.jsonl", "tensorboard/",
                                               "samples/*/*.mp4", "curves.png", "eval.json")))
        if result:
            print(f"evaluator: {result['evaluator']}")
            print("T2M protocol, mean ± 95% interval over "
                  f"{result['replications']} replications (ground truth in brackets):")
            for key in ("r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "matching_score",
                        "diversity", "multimodality"):
                if key in result:
                    gt = f" [{result['gt_' + key]:.3f}]" if "gt_" + key in result else ""
                    print(f"  {key:<17} {result[key]:.3f} ± {result[key + '_ci95']:.3f}{gt}")
    return result


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="recipes/motion_mdm.py")
