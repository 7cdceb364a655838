"""`layersync motion sample|evaluate`: text → motion files from a run, and the T2M protocol on a run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from layersync.core.cli_util import add_run_arguments, add_sampler_arguments, replace_given
from layersync.core.errors import UserValueError

MOTION_SAMPLERS = ("ddpm", "ddim", "heun")
RUN_HELP = "run directory (its newest checkpoint's EMA weights)"
STEPS_HELP = "override the number of sampling steps"


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = commands.add_parser("sample", help="motions for text prompts: 263-d features, joints, stick-figure "
                                           "MP4 (and an SMPL mesh with --smpl-model)")
    s.add_argument("prompts", nargs="+", help='descriptions, e.g. "a person walks forward and waves"')
    add_run_arguments(s, RUN_HELP)
    s.add_argument("--seconds", type=float, help="motion length in seconds at 20 fps (default: the run's "
                                                 "max_frames)")
    s.add_argument("--num", type=int, default=1, help="motions per prompt (default 1)")
    s.add_argument("--out", help="output folder (default RUN/samples_cli)")
    add_sampler_arguments(s, MOTION_SAMPLERS, STEPS_HELP, cfg_scale=True)
    s.add_argument("--smpl-model", help="SMPL_NEUTRAL.pkl (or its folder): also fit and write an SMPL mesh")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=sample_command)
    e = commands.add_parser("evaluate", help="the T2M protocol (R-precision, FID, matching score, diversity, "
                                             "multimodality, 95%% intervals) on a run's test split")
    add_run_arguments(e, RUN_HELP)
    e.add_argument("--protocol", choices=("layersync", "mdm", "mdm-mm"),
                   help="mdm: MDM's eval_humanml.py wo_mm (random crops, 1024 generated vs the whole test "
                        "split, 20 replications); mdm-mm: its mm_short (5 replications, multimodality); "
                        "default: the run's eval settings")
    e.add_argument("--replications", type=int, help="override the run's eval.replications (T2M: 20)")
    e.add_argument("--num-texts", type=int, help="captions per replication (0 = the whole test split)")
    e.add_argument("--mm-texts", type=int, help="captions for multimodality (0 skips it)")
    add_sampler_arguments(e, MOTION_SAMPLERS, STEPS_HELP, cfg_scale=True)
    e.add_argument("--out", help="JSON result path (default RUN/eval_cli.json)")
    e.set_defaults(func=evaluate_command)


def _load_run(run: str, ckpt_path: str | None):
    """(config, EMA state dict, checkpoint path) from a run directory's newest checkpoint, or from `ckpt_path`."""
    from layersync.core.runs import load_run_state
    from layersync.motion.run import MotionRecipe

    cfg, state, ckpt_path = load_run_state(run, ckpt_path, MotionRecipe, "motion", "recipes/motion_mdm.py")
    return cfg, state["ema"], ckpt_path


def _model(cfg, ema_state, text_dim: int, ckpt_path: Path):
    from layersync.core.runs import load_weights
    from layersync.motion.run import build_backbone

    model = build_backbone(cfg, text_dim)
    load_weights(model, ema_state, ckpt_path)
    return model.eval()


def _spec(cfg, args):
    return replace_given(cfg.sample, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale)


def sample_command(args) -> None:
    from layersync.core.recipe import build_interpolant
    from layersync.motion.features import FPS
    from layersync.motion.humanml3d import Caption
    from layersync.motion.run import load_data, make_generate_fn, slug, write_motion

    if args.num < 1:
        raise UserValueError(f"--num must be ≥ 1, got {args.num}")
    cfg, ema, ckpt_path = _load_run(args.run, args.ckpt)
    frames = cfg.max_frames if args.seconds is None else round(args.seconds * FPS)
    if not 1 <= frames <= cfg.max_frames:
        raise UserValueError(f"--seconds={args.seconds} gives {frames} frames; this run makes 1 to "
                             f"{cfg.max_frames} ({cfg.max_frames / FPS:.1f} s)")
    data = load_data(cfg, splits=())
    model = _model(cfg, ema, data.encoder.dim, ckpt_path)
    spec = _spec(cfg, args)
    generate_fn = make_generate_fn(cfg, model, build_interpolant(cfg.path), data, spec)
    captions = [Caption(p, ()) for p in args.prompts for _ in range(args.num)]
    t0 = time.perf_counter()
    motions = generate_fn(captions, [frames] * len(captions), args.seed)
    print(f"{len(motions)} motions of {frames} frames from {ckpt_path} ({spec.sampler}, {spec.steps} steps, "
          f"guidance {spec.cfg_scale}) in {time.perf_counter() - t0:.1f} s; "
          f"text encoder: {data.encoder.describe()}")
    out = Path(args.out or Path(args.run) / "samples_cli")
    for k, (caption, feats) in enumerate(zip(captions, motions)):
        stem = f"{k:02d}_{slug(caption.text)}"
        paths = write_motion(feats, caption.text, out, stem)
        line = f"  {caption.text!r}: {paths['features']}, {paths['joints']}, {paths['mp4']} " \
               f"({paths['codec']})"
        if args.smpl_model:
            import numpy as np

            from layersync.motion.render import fit_smpl, write_mesh

            vertices, faces, error = fit_smpl(np.load(paths["joints"]), args.smpl_model)
            mesh = write_mesh(vertices, faces, out / f"{stem}_mesh")
            line += f", SMPL mesh {mesh} (+ OBJ per frame, joint fit error {100 * error:.1f} cm)"
        print(line)
    if not args.smpl_model:
        print("  (no body mesh: pass --smpl-model SMPL_NEUTRAL.pkl to fit and write an SMPL mesh)")


def evaluate_command(args) -> None:
    from layersync.core.recipe import build_interpolant
    from layersync.motion.run import build_evaluator, load_data, make_generate_fn
    from layersync.motion.t2m_eval import EVAL_PRESETS, T2MEvalSpec, run_protocol

    cfg, ema, ckpt_path = _load_run(args.run, args.ckpt)
    base = cfg.eval if args.protocol is None else EVAL_PRESETS.get(args.protocol, T2MEvalSpec())
    spec_eval = replace_given(base, replications=args.replications, num_texts=args.num_texts,
                              mm_texts=args.mm_texts)
    data = load_data(cfg)
    model = _model(cfg, ema, data.encoder.dim, ckpt_path)
    spec = _spec(cfg, args)
    evaluator = build_evaluator(cfg, data)
    generate_fn = make_generate_fn(cfg, model, build_interpolant(cfg.path), data, spec)
    result = run_protocol(data.test, evaluator, generate_fn, spec_eval, cfg.max_frames)
    result.update(checkpoint=str(ckpt_path), sampler=spec.sampler, sample_steps=spec.steps,
                  cfg_scale=spec.cfg_scale, text_encoder=data.encoder.describe())
    target = Path(args.out or Path(args.run) / "eval_cli.json")
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"evaluator: {result['evaluator']}\ntext encoder: {result['text_encoder']}\n"
          f"{result['replications']} replications of {result['protocol']['num_texts']} captions, "
          "mean ± 95% interval [ground truth]:")
    for key in ("r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "matching_score",
                "diversity", "multimodality"):
        if key in result:
            gt = f"   [{result['gt_' + key]:.4f}]" if f"gt_{key}" in result else ""
            print(f"  {key:<17} {result[key]:.4f} ± {result[key + '_ci95']:.4f}{gt}")
    print(f"→ {target}")
