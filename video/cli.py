"""`layersync video prepare|sample|evaluate|fvd-stats`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from layersync.core.cli_util import add_sample_arguments, replace_given, write_result
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.metrics.representation_report import add_analyze_arguments


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("prepare", help="decode CLEVRER videos into clips (pixels or SD-VAE latents)")
    p.add_argument("--root", required=True, help="CLEVRER folder holding video_00000-01000/ …")
    p.add_argument("--split", choices=("train", "validation", "test"), default="train")
    p.add_argument("--out", required=True, help="output folder (clips.npy + manifest.json)")
    p.add_argument("--encoding", choices=("pixels", "sd_vae"), default="pixels")
    p.add_argument("--vae", help="local SD-VAE folder (sd_vae; else $LAYERSYNC_WEIGHTS/sd-vae-ft-ema)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--frame-stride", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--clips-per-video", type=int, default=1, help="0 = every non-overlapping clip that fits")
    p.add_argument("--limit", type=int, default=0, help="use the first N videos of the split (0 = all)")
    p.set_defaults(func=prepare_command)
    s = commands.add_parser("sample", help="draw EMA clips from a run's checkpoint: MP4s, PNG strips, .npz")
    add_sample_arguments(s, num=(16, "number of clips (default 16)"))
    s.add_argument("--codec", choices=("auto", "libx264", "mpeg4"), help="override the run's MP4 codec")
    s.add_argument("--write", type=int, default=16, help="write the first N clips as MP4 + PNG (default 16)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=sample_command)
    a = commands.add_parser("analyze", help="per-block linear probes (number of balls), block × block "
                                            "CKA and cosine, block pruning (and --against RUN2)")
    add_analyze_arguments(a)
    a.set_defaults(func=analyze_command)
    e = commands.add_parser("evaluate", help="score clips (.npz with arr_0 uint8 (N, T, H, W, 3))")
    e.add_argument("samples", help="samples .npz written by `layersync video sample`")
    e.add_argument("--metric", choices=("fd_balls", "fvd"), default="fd_balls",
                   help="fd_balls: the embedded clips' encoder (default); fvd: I3D against --reference")
    e.add_argument("--run", help="fd_balls: read the embedded clips' settings from this run's config.json "
                   "(default: the default settings)")
    e.add_argument("--reference", help="fvd: a statistics .npz (`fvd-stats`; its protocol applies) or a "
                   "prepared pixel folder of real clips (prepared-clips protocol)")
    e.add_argument("--i3d", help="fvd: I3D weights file (else $LAYERSYNC_WEIGHTS/i3d_torchscript.pt)")
    e.add_argument("--out", help="where to write the JSON result (default: beside the samples)")
    e.set_defaults(func=evaluate_command)
    f = commands.add_parser("fvd-stats", help="store the real data's I3D statistics for FVD")
    f.add_argument("source", help="stylegan-v: the CLEVRER root (video_00000-01000/ …); prepared-clips: a "
                   "prepared pixel folder (layersync video prepare --encoding=pixels)")
    f.add_argument("--protocol", choices=("stylegan-v", "prepared-clips"), default="stylegan-v",
                   help="stylegan-v: StyleGAN-V's fvd2048_16f, a random 16-frame window per video (default)")
    f.add_argument("--out", required=True, help="statistics .npz to write (mu, sigma, protocol, detector)")
    f.add_argument("--i3d", help="I3D weights file (else $LAYERSYNC_WEIGHTS/i3d_torchscript.pt)")
    f.add_argument("--split", choices=("train", "validation", "test"), default="validation",
                   help="stylegan-v: CLEVRER split (default validation)")
    f.add_argument("--frame-stride", type=int, default=4,
                   help="stylegan-v: the frame rate the model generates, in source frames (default 4)")
    f.add_argument("--size", type=int, default=128, help="stylegan-v: frame size of the model (default 128)")
    f.add_argument("--num-videos", type=int, default=2048,
                   help="stylegan-v: real videos (default 2048; other counts are named stylegan-v@N)")
    f.add_argument("--seed", type=int, default=0, help="stylegan-v: seed of the window starts")
    f.add_argument("--limit", type=int, default=0, help="prepared-clips: use the first N clips (0 = all)")
    f.set_defaults(func=fvd_stats_command)


def prepare_command(args) -> None:
    from layersync.video.clevrer import ClipSpec
    from layersync.video.latents import FrameVAE
    from layersync.video.prepared import prepare

    spec = ClipSpec(args.num_frames, args.frame_stride, args.size, args.clips_per_video)
    vae = None
    if args.encoding == "sd_vae":
        import torch

        vae = FrameVAE.from_local(args.vae, "cuda" if torch.cuda.is_available() else "cpu")
    elif args.vae:
        raise UserValueError("--vae is only used with --encoding=sd_vae")
    manifest = prepare(args.root, args.split, args.out, spec, args.encoding, vae, args.limit)
    print(f"{manifest['n_clips']} clips {tuple(manifest['clip_shape'])} {manifest['dtype']} from "
          f"{manifest['n_videos'] - len(manifest['skipped'])} of {manifest['n_videos']} videos "
          f"({len(manifest['skipped'])} skipped) → {args.out}")


def _load_run(run: str, ckpt_path: str | None):
    """(config, EMA model, model-space shape, VAE or None, checkpoint path) from a run directory."""
    from layersync.core.runs import load_run_state, load_weights
    from layersync.video.run import VideoRecipe, build_video_model, load_vae, model_shape

    cfg, state, ckpt_path = load_run_state(run, ckpt_path, VideoRecipe, "video", "recipes/video_sit.py")
    vae = load_vae(cfg)
    shape = model_shape(cfg, vae)
    model = build_video_model(cfg, shape)
    load_weights(model, state["ema"], ckpt_path)
    return cfg, model.eval(), shape, vae, ckpt_path


def analyze_command(args) -> None:
    from layersync.metrics.representation_report import analyze_command as analyze

    def load(run: str, ckpt: str | None):
        from layersync.core.recipe import build_interpolant
        from layersync.video.probe import probe_set

        cfg, model, _, _, ckpt_path = _load_run(run, ckpt)
        return model, build_interpolant(cfg.path), probe_set(cfg), ckpt_path

    analyze(args, load)


def sample_command(args) -> None:
    import numpy as np
    from tqdm.auto import tqdm

    from layersync.core.recipe import build_interpolant
    from layersync.video.media import to_uint8, write_clips
    from layersync.video.run import generate, to_pixels

    if args.num < 1 or args.write < 0:
        raise UserValueError(f"--num must be ≥ 1 and --write ≥ 0, got {args.num} and {args.write}")
    cfg, model, shape, vae, ckpt_path = _load_run(args.run, args.ckpt)
    spec = replace_given(cfg.sample, sampler=args.sampler, steps=args.steps)
    interpolant = build_interpolant(cfg.path)
    out = Path(args.out or Path(args.run) / "samples_cli")
    out.mkdir(parents=True, exist_ok=True)
    chunks, nfe, t0 = [], [], time.perf_counter()
    bar = tqdm(total=args.num, desc="sample", unit="clip")
    for lo in range(0, args.num, 64):
        x, n = generate(model, interpolant, spec, min(64, args.num - lo), shape, seed=args.seed + lo)
        chunks.append(to_uint8(to_pixels(x, vae)))
        nfe.append(n)
        bar.update(len(x))
        bar.set_postfix({"clip/s": f"{bar.n / (time.perf_counter() - t0):.2f}"})
    bar.close()
    clips = np.concatenate(chunks)  # (N, T, H, W, 3) uint8
    np.savez(out / "samples.npz", arr_0=clips)
    written = ""
    if args.write:
        codec, _ = write_clips(clips[: args.write], out, cfg.fps, args.codec or cfg.codec, cfg.upscale)
        written = f"{min(args.write, len(clips))} MP4s ({codec}) + PNG strips, strips.png, "
    print(f"{len(clips)} clips {clips.shape[1:]} from {ckpt_path} ({spec.sampler}, "
          f"{sum(nfe) / len(nfe):.0f} NFE each) → {out}: {written}samples.npz")


def evaluate_command(args) -> None:
    import numpy as np

    from layersync.video.media import from_uint8
    from layersync.video.run import jsonable

    path = Path(args.samples)
    if not path.is_file():
        raise UserFileNotFoundError(f"samples file {path} does not exist")
    try:
        with np.load(path) as data:
            clips = data["arr_0"]
    except Exception as e:
        raise UserValueError(f"{path} is not a samples .npz with arr_0 (clips): {type(e).__name__}") from None
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise UserValueError(f"{path}: arr_0 must be uint8 (N, T, H, W, 3) clips, got {clips.dtype} "
                             f"{clips.shape}")
    if args.metric == "fd_balls":
        if args.reference or args.i3d:
            raise UserValueError("--reference and --i3d belong to --metric=fvd; fd_balls has its own "
                                 "reference")
        from layersync.video.balls_eval import BallsEvaluator, EncoderConfig

        result = BallsEvaluator.load_or_train(EncoderConfig(data=_balls_config(args.run))).evaluate(
            from_uint8(clips))
    else:
        if args.run:
            raise UserValueError("--run belongs to --metric=fd_balls")
        if not args.reference:
            raise UserValueError("--metric=fvd needs --reference (a prepared pixel folder or a statistics "
                                 ".npz)")
        from layersync.video.evaluate import fvd_against

        result = fvd_against(clips, args.reference, args.i3d)
    write_result(jsonable(result), args.out or path.with_suffix(".eval.json"))


def _balls_config(run: str | None):
    """The embedded clips' settings of a run (its config.json), or the defaults."""
    from layersync.core.config import from_dict
    from layersync.video.balls import BallsConfig

    if run is None:
        return BallsConfig()
    path = Path(run) / "config.json"
    if not path.is_file():
        raise UserFileNotFoundError(f"{path} does not exist; --run takes a run directory of "
                                    "recipes/video_sit.py")
    config = json.loads(path.read_text())
    if config.get("data"):
        raise UserValueError(f"{run} trained on {config['data']}, not the embedded clips; use --metric=fvd")
    return from_dict(BallsConfig, config.get("balls", {}), prefix="balls.")


def fvd_stats_command(args) -> None:
    from layersync.video.clevrer import ClipSpec
    from layersync.video.evaluate import reference_stats, stylegan_v_reference_stats

    if args.protocol == "prepared-clips":
        stats = reference_stats(args.source, args.out, args.i3d, limit=args.limit)
        print(f"I3D statistics ({stats.dim}-d, prepared-clips) of {args.source} → {args.out}")
        return
    spec = ClipSpec(frame_stride=args.frame_stride, size=args.size)
    stats = stylegan_v_reference_stats(args.source, args.split, args.out, spec, args.num_videos, args.seed,
                                       args.i3d)
    print(f"I3D statistics ({stats.protocol.name}, {stats.num_clips} videos, detector "
          f"{stats.detector['name']}, sha256 {stats.detector['sha256']}) of {args.source} {args.split} → "
          f"{args.out}")
