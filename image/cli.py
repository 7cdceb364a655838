"""`layersync image prepare|sample|evaluate|import|export`; prepare and sample run data-parallel under
`accelerate launch -m layersync.cli image …`."""

from __future__ import annotations

import argparse
import json
import os
import time
import zipfile
from pathlib import Path

from layersync.core.cli_util import add_sample_arguments, replace_given, write_result
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.metrics.representation_report import add_analyze_arguments


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("prepare", help="ImageNet (class folders or parquet) → ADM crop → SD-VAE latent "
                                            "shards; resumable, data-parallel under accelerate launch")
    p.add_argument("source", help="ILSVRC-style folder (ROOT/<class>/<image>), or parquet file(s) / folder")
    p.add_argument("out", help="output folder (rerun the same command to resume)")
    p.add_argument("--vae", default="", help="local AutoencoderKL folder (sd-vae-ft-ema or -mse); default "
                                             "$LAYERSYNC_WEIGHTS/sd-vae-ft-ema")
    p.add_argument("--vae-sha256", default="", help="refuse a VAE whose weights file has another sha256")
    p.add_argument("--source-format", choices=("auto", "folder", "parquet"), default="auto")
    p.add_argument("--image-size", type=int, default=256, help="ADM centre crop size (default 256)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="skip the mirrored images' moments")
    p.add_argument("--keep-images", action="store_true", help="also store the crops (REPA's encoder input)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64, help="images per VAE forward")
    p.add_argument("--workers", type=int, default=8, help="threads decoding and cropping images")
    p.set_defaults(func=prepare_command)

    s = commands.add_parser("sample", help="draw EMA samples from a run's checkpoint (PNGs and an ADM .npz)")
    add_sample_arguments(s)
    s.add_argument("--sample-preset", choices=("sit-sde", "sit-ode", "sit-xl2-cfg1.5", "repa-cfg1.8"),
                   help="a paper's FID sampling (image/run.py SAMPLE_PRESETS); the flags below override it")
    s.add_argument("--sde-steps", type=int, help="override the number of SDE steps (grid points, as SiT's "
                                                 "--num-sampling-steps and REPA's --num-steps)")
    s.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="guide only for t in [LO, HI] (t = 1 is noise)")
    s.add_argument("--cfg-channels", type=int, help="guide only the first K channels (3: SiT's "
                                                    "forward_with_cfg, for exact comparisons); 0 = all")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-class", type=int, help="digits: samples per class (default 10)")
    s.add_argument("--num-samples", type=int, help="latents: number of samples (default 50000)")
    s.add_argument("--batch-size", type=int, default=64, help="latents: samples per process and batch")
    s.add_argument("--vae", help="latents: VAE folder to decode with (default: the run's)")
    s.set_defaults(func=sample_command)

    a = commands.add_parser("analyze", help="per-block linear probes, block × block CKA and cosine, "
                                            "block pruning of a run (and --against RUN2)")
    add_analyze_arguments(a)
    a.add_argument("--probe-data", default="",
                   help="latents: a prepared folder of held-out images to probe (default: the run's "
                        "probe_data, else 16 per class of its training folder)")
    a.set_defaults(func=analyze_command)

    e = commands.add_parser("evaluate", help="score samples (.npz with arr_0 NHWC uint8 and arr_1 labels)")
    e.add_argument("samples", help="samples .npz written by `layersync image sample`")
    e.add_argument("--out", help="where to write the JSON result (default: beside the samples)")
    e.add_argument("--reference", help="ADM reference batch .npz: FID, sFID, IS, precision, recall (without "
                                       "it: the digits evaluator)")
    e.add_argument("--inception", help="FID Inception weights file or folder (default $LAYERSYNC_WEIGHTS)")
    e.add_argument("--protocol", choices=("adm", "pytorch_fid"), default="adm",
                   help="Inception preprocessing: ADM's TF resize (default) or pytorch-fid's")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--device", help="default: cuda if available, else cpu")
    e.set_defaults(func=evaluate_command)

    i = commands.add_parser("import", help="a SiT / LayerSync / REPA / SRA checkpoint → a run directory that "
                                           "sample and evaluate read and --init_from trains from")
    i.add_argument("source", help="the reference's .pt (released state dict or its train.py checkpoint)")
    i.add_argument("--format", required=True, choices=("sit", "layersync", "repa", "sra"))
    i.add_argument("--run", required=True, help="new run directory to write")
    i.add_argument("--num-heads", type=int, help="attention heads (default: the SiT preset of the width)")
    i.set_defaults(func=import_command)

    x = commands.add_parser("export", help="a run's EMA weights as a file the reference's own sampling "
                                           "script loads (SiT's sample.py, REPA's generate.py)")
    x.add_argument("out", help="the .pt to write")
    x.add_argument("--run", required=True, help="run directory (its newest checkpoint)")
    x.add_argument("--ckpt", help="a specific checkpoint of the run")
    x.add_argument("--format", required=True, choices=("sit", "repa"))
    x.add_argument("--no-learn-sigma", dest="learn_sigma", action="store_false",
                   help="sit: C output channels (SiT's sample.py --ckpt builds learn_sigma=False) instead of "
                        "the released 2C with a zero σ half")
    x.set_defaults(func=export_command)


def prepare_command(args) -> None:
    from layersync.image.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(source=args.source, out=args.out, vae=args.vae, vae_sha256=args.vae_sha256,
                        source_format=args.source_format, image_size=args.image_size, flip=args.flip,
                        keep_images=args.keep_images, shard_size=args.shard_size, batch_size=args.batch_size,
                        workers=args.workers)
    index = prepare(cfg)
    if index:
        print(f"{index['num_items']} images encoded into {len(index['shards'])} shards of {args.out}, "
              f"latents {index['latent_shape']}; {index['num_unreadable']} unreadable "
              f"(listed in {args.out}/report.json) → train with --data={args.out}")


def _load_run(run: str, ckpt_path: str | None):
    """(config, EMA model, sample shape, classes, checkpoint) of a run's newest checkpoint or `ckpt_path`."""
    from layersync.core.recipe import build_model
    from layersync.core.runs import load_run_state, load_weights
    from layersync.image.run import ImageRecipe, model_shape

    cfg, state, ckpt_path = load_run_state(run, ckpt_path, ImageRecipe, "image", "recipes/image_sit.py")
    input_size, in_channels, num_classes = model_shape(cfg)
    model = build_model(cfg.model, input_size, in_channels, cond_kind="class", num_classes=num_classes)
    load_weights(model, state["ema"], ckpt_path)
    return cfg, model.eval(), (in_channels, *input_size), num_classes, ckpt_path


def _spec(cfg, args):
    import dataclasses

    from layersync.image.run import SAMPLE_PRESETS

    spec = cfg.sample
    if getattr(args, "sample_preset", None):
        spec = dataclasses.replace(spec, **SAMPLE_PRESETS[args.sample_preset])
    return replace_given(spec, sampler=args.sampler, steps=args.steps, sde_steps=args.sde_steps,
                         cfg_scale=args.cfg_scale, cfg_interval=tuple(args.cfg_interval or ()) or None,
                         cfg_channels=getattr(args, "cfg_channels", None))


def analyze_command(args) -> None:
    from layersync.metrics.representation_report import analyze_command as analyze

    def load(run: str, ckpt: str | None):
        from layersync.core.recipe import build_interpolant
        from layersync.image.run import probe_set

        cfg, model, _, _, ckpt_path = _load_run(run, ckpt)
        return model, build_interpolant(cfg.path), probe_set(cfg, args.probe_data), ckpt_path

    analyze(args, load)


def sample_command(args) -> None:
    cfg, model, shape, num_classes, ckpt_path = _load_run(args.run, args.ckpt)
    out = Path(args.out or Path(args.run) / "samples_cli")
    if cfg.dataset == "latents":
        if args.per_class is not None:
            raise UserValueError("--per-class is for digits runs; a latents run takes --num-samples")
        _sample_latents(args, cfg, model, shape, num_classes, ckpt_path, out)
    else:
        if args.num_samples is not None or args.vae is not None:
            raise UserValueError("--num-samples and --vae are for latents runs; a digits run takes "
                                 "--per-class")
        _sample_digits(args, cfg, model, shape, num_classes, ckpt_path, out)


def _sample_digits(args, cfg, model, shape, num_classes, ckpt_path, out: Path) -> None:
    import torch
    from tqdm.auto import tqdm

    from layersync.core.recipe import build_interpolant
    from layersync.image.grid import save_class_grid
    from layersync.image.run import class_batch, generate, save_npz

    per_class = 10 if args.per_class is None else args.per_class
    if per_class < 1:
        raise UserValueError(f"--per-class must be ≥ 1, got {per_class}")
    spec, interpolant = _spec(cfg, args), build_interpolant(cfg.path)
    labels = class_batch(num_classes, per_class, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    chunks, nfe, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=len(labels), desc="sample", unit="img")
    for lo in range(0, len(labels), 250):
        images, n = generate(model, interpolant, spec, labels[lo:lo + 250], shape, seed=args.seed + lo)
        chunks.append(images)
        nfe += n * len(images)
        bar.update(len(images))
        bar.set_postfix({"img/s": f"{bar.n / (time.perf_counter() - t0):.1f}"})
    bar.close()
    images = torch.cat(chunks).clamp(-1, 1)
    save_class_grid(images, labels, out / "grid.png")
    npz = save_npz(images, labels, out / "samples.npz")
    print(f"{len(images)} samples from {ckpt_path} ({spec.sampler}, {nfe / len(labels):.0f} NFE each) → "
          f"{out}/grid.png, {npz}")


def _sample_latents(args, cfg, model, shape, num_classes, ckpt_path, out: Path) -> None:
    from accelerate import PartialState

    from layersync.core.config import to_dict
    from layersync.core.process_group import destroy_at_exit
    from layersync.core.recipe import build_interpolant
    from layersync.image.sampling import collect_npz, sample_labels, sample_pngs
    from layersync.image.vae import load_vae

    num_samples = 50_000 if args.num_samples is None else args.num_samples
    if num_samples < 1:
        raise UserValueError(f"--num-samples must be ≥ 1, got {num_samples}")
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # see prepare(): CPU processes need cpu=True
    destroy_at_exit()
    spec, interpolant = _spec(cfg, args), build_interpolant(cfg.path)
    settings = {"checkpoint": str(ckpt_path.resolve()), "num_samples": num_samples, "seed": args.seed,
                "num_classes": num_classes, "sample": to_dict(spec), "vae_sha256": cfg.vae_sha256}
    _check_settings(out, settings)
    vae = load_vae(args.vae or cfg.vae, cfg.vae_sha256, state.device)
    labels = sample_labels(num_samples, num_classes, args.seed)
    report = sample_pngs(model.to(state.device), interpolant, spec, vae.decode, out / "images", labels, shape,
                         args.seed, args.batch_size, state.process_index, state.num_processes,
                         progress=state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        npz = collect_npz(out / "images", labels, out / "samples.npz")
        print(f"{num_samples} samples from {ckpt_path} ({spec.sampler}, {report.nfe_per_sample:.0f} NFE "
              f"each; this process wrote {report.written}, kept {report.skipped}) → {out}/images/, {npz}")


def _check_settings(out: Path, settings: dict) -> None:
    """Record what a sample folder holds; refuse to resume it with other settings."""
    path = out / "samples.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(settings)):
            key = next(k for k in settings if old.get(k) != json.loads(json.dumps(settings[k])))
            raise UserValueError(f"{out} holds samples drawn with other settings ({key}: {old.get(key)!r}); "
                                 "use another --out, or the same settings to resume")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # processes may all write the same record
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    tmp.replace(path)


def import_command(args) -> None:
    from layersync.image.reference_run import import_reference

    path = import_reference(args.source, args.format, args.run, args.num_heads)
    print(f"{args.source} ({args.format}) → {path}; sample with `layersync image sample --run {args.run}`, "
          f"fine-tune with `recipes/image_sit.py --init_from={args.run} --run_dir=NEW …`")


def export_command(args) -> None:
    from layersync.image.reference import export_reference_checkpoint

    _, model, _, _, ckpt_path = _load_run(args.run, args.ckpt)
    out = export_reference_checkpoint(model, args.format, args.out, learn_sigma=args.learn_sigma)
    print(f"EMA weights of {ckpt_path} → {out} ({args.format} layout)")


def evaluate_command(args) -> None:
    path = Path(args.samples)
    if not path.is_file():
        raise UserFileNotFoundError(f"samples file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UserValueError(f"{path} is not a samples .npz with arr_0 (images) and arr_1 (labels)")
    result = _evaluate_suite(args, path) if args.reference else _evaluate_digits(path)
    write_result(result, args.out or path.with_suffix(".eval.json"))


def _evaluate_suite(args, path: Path) -> dict:
    """ADM's FID, sFID, IS, precision and recall against a reference batch, with the FID Inception."""
    import torch

    from layersync.metrics.fid_suite import evaluate_fid_suite
    from layersync.metrics.inception import load_fid_inception

    reference = Path(args.reference)
    if not zipfile.is_zipfile(reference):
        raise UserFileNotFoundError(f"reference batch {reference} does not exist or is not an .npz")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_fid_inception(args.inception, preprocess=args.protocol, device=device)
    result = evaluate_fid_suite(path, reference, model, batch_size=args.batch_size)
    return {**result, "samples": str(path), "reference": str(reference)}


def _evaluate_digits(path: Path) -> dict:
    import numpy as np
    import torch

    from layersync.image.digits_eval import DigitsEvaluator
    from layersync.image.run import _jsonable

    try:
        data = np.load(path)
        images, labels = data["arr_0"], data["arr_1"]
    except Exception as e:
        raise UserValueError(f"{path} is not a samples .npz with arr_0 (images) and arr_1 (labels): "
                             f"{type(e).__name__}") from None
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1) or images.dtype != np.uint8:
        raise UserValueError(f"{path}: arr_0 must be uint8 (N, 8, 8, 1) digits, got {images.dtype} "
                             f"{images.shape} (for RGB samples give --reference REF.npz for the FID suite)")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return _jsonable(DigitsEvaluator.load_or_train().evaluate(x, torch.from_numpy(labels).long()))
