"""`layersync image sample|evaluate`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = commands.add_parser("sample", help="draw EMA samples per class from a run's checkpoint")
    s.add_argument("--run", required=True, help="run directory (its newest checkpoint is used)")
    s.add_argument("--ckpt", help="a specific checkpoint file instead of the newest")
    s.add_argument("--per-class", type=int, default=10, help="samples per class (default 10)")
    s.add_argument("--out", help="output folder (default RUN/samples_cli)")
    s.add_argument("--sampler", choices=("euler", "heun", "dopri5", "sde"), help="override the run's sampler")
    s.add_argument("--steps", type=int, help="override the number of ODE steps")
    s.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=sample_command)
    e = commands.add_parser("evaluate", help="score samples (.npz with arr_0 NHWC uint8 and arr_1 labels)")
    e.add_argument("samples", help="samples .npz written by `layersync image sample`")
    e.add_argument("--out", help="where to write the JSON result (default: beside the samples)")
    e.set_defaults(func=evaluate_command)


def _load_run(run: str, ckpt_path: str | None):
    """(config, EMA model) from a run directory's newest checkpoint, or from `ckpt_path`."""
    from layersync.core import checkpoint as ckpt
    from layersync.core.config import ConfigError, from_dict
    from layersync.core.recipe import build_model
    from layersync.image.run import ImageRecipe, load_data

    if ckpt_path is None:
        if not Path(run).is_dir():
            raise FileNotFoundError(f"run directory {run} does not exist")
        found = ckpt.list_checkpoints(run)
        if not found:
            raise FileNotFoundError(f"no checkpoint in {run}/checkpoints; train first with recipes/image_sit.py")
        ckpt_path = found[-1]
    state = ckpt.load_checkpoint(ckpt_path)
    try:
        cfg = from_dict(ImageRecipe, state["config"])
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{ckpt_path} was not written by the image recipe ({e})") from None
    _, input_size, in_channels, num_classes = load_data(cfg)
    model = build_model(cfg.model, input_size, in_channels, cond_kind="class", num_classes=num_classes)
    try:
        model.load_state_dict(state["ema"])
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{ckpt_path}: EMA weights do not fit the model its config describes "
                                   f"({str(e).splitlines()[0]})") from None
    return cfg, model.eval(), (in_channels, *input_size), num_classes, Path(ckpt_path)


def sample_command(args) -> None:
    import dataclasses

    from tqdm.auto import tqdm

    from layersync.core.recipe import build_interpolant
    from layersync.image.grid import save_class_grid
    from layersync.image.run import class_batch, generate, save_npz

    if args.per_class < 1:
        raise ValueError(f"--per-class must be ≥ 1, got {args.per_class}")
    cfg, model, shape, num_classes, ckpt_path = _load_run(args.run, args.ckpt)
    spec = cfg.sample
    for key, value in (("sampler", args.sampler), ("steps", args.steps), ("cfg_scale", args.cfg_scale)):
        if value is not None:
            spec = dataclasses.replace(spec, **{key: value})
    interpolant = build_interpolant(cfg.path)
    labels = class_batch(num_classes, args.per_class, "cpu")
    out = Path(args.out or Path(args.run) / "samples_cli")
    out.mkdir(parents=True, exist_ok=True)
    chunks, nfe, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=len(labels), desc="sample", unit="img")
    for lo in range(0, len(labels), 250):
        images, n = generate(model, interpolant, spec, labels[lo:lo + 250], shape, seed=args.seed + lo)
        chunks.append(images)
        nfe += n
        bar.update(len(images))
        bar.set_postfix({"img/s": f"{bar.n / (time.perf_counter() - t0):.1f}"})
    bar.close()
    import torch

    images = torch.cat(chunks).clamp(-1, 1)
    save_class_grid(images, labels, out / "grid.png")
    npz = save_npz(images, labels, out / "samples.npz")
    print(f"{len(images)} samples from {ckpt_path} ({spec.sampler}, {nfe / len(labels):.0f} NFE each) → "
          f"{out}/grid.png, {npz}")


def evaluate_command(args) -> None:
    import numpy as np
    import torch

    from layersync.image.digits_eval import DigitsEvaluator
    from layersync.image.run import _jsonable

    path = Path(args.samples)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    try:
        data = np.load(path)
        images, labels = data["arr_0"], data["arr_1"]
    except Exception as e:
        raise ValueError(f"{path} is not a samples .npz with arr_0 (images) and arr_1 (labels): "
                         f"{type(e).__name__}") from None
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1) or images.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, 8, 8, 1) digits, got {images.dtype} {images.shape}")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    result = _jsonable(DigitsEvaluator.load_or_train().evaluate(x, torch.from_numpy(labels).long()))
    target = Path(args.out or path.with_suffix(".eval.json"))
    target.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for k, v in result.items():
        if not isinstance(v, (list, dict)):
            print(f"{k:<{width}}  {v:.5g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"→ {target}")
