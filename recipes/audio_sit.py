"""Conditional SiT with LayerSync on log-mel audio: train, write WAVs and spectrograms, report a FAD.

    accelerate launch recipes/audio_sit.py          # embedded synthetic music, ~5 min on 2 CPU cores
    accelerate launch recipes/audio_sit.py --preset=synth-vanilla
    accelerate launch recipes/audio_sit.py --preset=jamendo-xl2 --data.store=STORE --fad_reference=REF
    python recipes/audio_sit.py --dry-run --train.total_steps=100
Rerunning the same command resumes from the newest checkpoint in its run directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    from layersync.audio.evaluate import load_embedder
    from layersync.audio.run import (DEFAULT_PRESET, PRESETS, AudioRecipe, DomainInfo, check_config,
                                     clip_seconds, load_data, make_hooks, model_dims)
    from layersync.audio.synth import CLASS_NAMES
    from layersync.audio.vocoder import build_vocoder
    from layersync.core.cli_util import print_config, resolve_config
    from layersync.core.recipe import build_interpolant, build_model, build_regularizer
    from layersync.core.runs import run_directory_line
    from layersync.core.trainer import Trainer

    argv = sys.argv[1:] if argv is None else argv
    cfg, dry_run = resolve_config(AudioRecipe, PRESETS, DEFAULT_PRESET, argv, prog="recipes/audio_sit.py")
    check_config(cfg)
    input_size, in_channels = model_dims(cfg)
    if dry_run:
        print_config(cfg)
        if cfg.data.source == "synth":  # the class count is known without reading data
            info = DomainInfo("class", CLASS_NAMES)
            model = build_model(cfg.model, input_size, in_channels, "class", num_classes=info.num_classes)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"# model: {n_params / 1e6:.2f}M parameters, {model.config.num_tokens} tokens of "
                  f"{in_channels}×{'×'.join(map(str, model.config.patch_size))} values")
        return {}
    # Fail before training when a vocoder or an embedding's weights are missing.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocoder = build_vocoder(cfg.vocoder, cfg.mel, cfg.vocoder_weights or None, cfg.griffin_lim_iterations,
                            device)
    embedder = None
    if cfg.fad_embedding != "none":
        embedder = load_embedder(cfg.fad_embedding, cfg.fad_weights or None, device, tagger=cfg.tagger,
                                 clip_seconds=clip_seconds(cfg))  # generated and reference at one length
    vae = None
    if cfg.vae:
        from layersync.audio.vae import MelVae

        vae = MelVae(cfg.vae)
    source, info, stats = load_data(cfg, cfg.run_dir, vae)
    torch.manual_seed(cfg.train.seed)  # the initial weights (and any regularizer head) follow the run's seed
    model = build_model(cfg.model, input_size, in_channels, info.cond_kind, num_classes=info.num_classes,
                        text_dim=info.text_dim)
    interpolant = build_interpolant(cfg.path)
    chooser = None
    if cfg.align.layersync == "auto":  # the pair is chosen after a warm-up by probing held-out labels
        from layersync.audio.probe import probe_set
        from layersync.metrics.representation import pair_chooser

        chooser = pair_chooser(probe_set(cfg, stats, info.names, vae), interpolant)
    regularizer = build_regularizer(cfg.align, model, chooser, cfg.run_dir)
    torch.manual_seed(cfg.train.seed)
    sample_fn, eval_fn = make_hooks(cfg, interpolant, info, stats, vocoder, embedder, vae)
    trainer = Trainer(cfg.train, model, interpolant, source, cfg.run_dir, full_config=cfg,
                      regularizer=regularizer, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.acc.is_main_process:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        info.save(run_dir)
        stats.save(run_dir / "mel_stats.npz")
    result = trainer.fit()
    if trainer.acc.is_main_process:
        if result:
            key = next(k for k in result if k.startswith("fad_"))
            print(f"{key} = {result[key]:.4g} at step {result['step']} ({result['metric']})")
        print(run_directory_line(cfg.run_dir, ("config.json", "checkpoints/", "log.jsonl", "tensorboard/",
                                               "samples/*/*.wav", "samples/*/*.png", "samples_ema.png",
                                               "curves.png", "eval_wavs/", "eval.json")))
    return result


if __name__ == "__main__":
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, prog="recipes/audio_sit.py")
