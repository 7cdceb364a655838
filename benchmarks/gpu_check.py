"""One command that checks a GPU end to end and prints one table (≤ 8 min on one H100/H200).

    python benchmarks/gpu_check.py                # CUDA: SiT-XL/2 at 256² (32×32×4 latents), batch 64
    python benchmarks/gpu_check.py --cpu-smoke    # the same table at tiny size on the CPU, < 3 min

Rows: the digits default run (recipes/image_sit.py, wall time and its evaluation); a SiT-XL/2 training step
(core/trainer.py's `train_step`, bf16 autocast, torch.compile off and on): img/s, MFU against the datasheet
peak (core/telemetry.py), peak memory; LayerSync/vanilla and SRA/vanilla step-time ratios
(benchmarks/regularizer_overhead.py's variants, eager, timed round-robin); Heun-50 sampling img/s; FID
Inception feature img/s (random weights when the weight file is not in $LAYERSYNC_WEIGHTS, and the row says
so); the Fréchet distance at 2048-d against scipy's sqrtm; 1 vs 2 GPUs training the same losses (when two
are present; --cpu-smoke uses two CPU processes). Targets from issue 18 are printed beside the figures.

The GPU machine needs no install beyond torch, accelerate, numpy (1 or 2), scipy, scikit-learn, tqdm,
matplotlib and tensorboard; nothing it imports needs diffusers or laion-clap. Without network, from the checkout:

    mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/layersync && PYTHONPATH=/tmp/pkg python benchmarks/gpu_check.py

or `pip install --no-deps --no-build-isolation -e .` once, then `python benchmarks/gpu_check.py`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import layersync
from layersync.core import telemetry
from layersync.core.models import DiTConfig

REPO = Path(layersync.__file__).resolve().parent


@dataclass(frozen=True)
class Sizes:
    preset: str
    latent: int  # latent side: 32 = 256² images through the SD-VAE
    depth: int = 0  # 0: the preset's
    width: int = 0
    heads: int = 0
    batch: int = 64
    steps: int = 10  # timed training steps per configuration
    warmup: int = 3  # untimed first (compilation happens here)
    sample_batch: int = 32
    inception_batch: int = 200
    inception_batches: int = 3
    frechet_dim: int = 2048
    digits: tuple[str, ...] = ()  # overrides for the digits default run


FULL = Sizes("XL/2", 32)
SMOKE = Sizes("S/2", 8, depth=4, width=64, heads=2, batch=4, steps=3, warmup=1, sample_batch=2,
              inception_batch=1, inception_batches=1, frechet_dim=256,
              digits=("--train.total_steps=10", "--train.log_every=5", "--train.sample_every=0",
                      "--train.ckpt_every=0", "--eval_per_class=0", "--grid_per_class=2"))


class Table:
    """Rows of (check, result, target, note), printed once at the end."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []
        self.start = time.perf_counter()

    def add(self, check: str, result: str, target: str = "", note: str = "") -> None:
        self.rows.append((check, result, target, note))
        print(f"  [{time.perf_counter() - self.start:4.0f} s] {check}: {result} {note}", flush=True)

    def print(self, header: str) -> None:
        widths = [max(len(r[i]) for r in self.rows + [("check", "result", "target", "note")]) for i in range(4)]
        line = lambda r: " | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
        print("\n" + header)
        print(line(("check", "result", "target", "note")))
        print("-+-".join("-" * w for w in widths))
        for row in self.rows:
            print(line(row))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GB"
    from layersync.core.trainer import peak_memory_gb

    return f"{peak_memory_gb(device):.2f} GB (process max RSS)"


def dit_config(s: Sizes) -> DiTConfig:
    overrides = {k: v for k, v in (("depth", s.depth), ("hidden_size", s.width), ("num_heads", s.heads)) if v}
    return DiTConfig.from_preset(s.preset, **overrides, input_size=(s.latent, s.latent), in_channels=4)


# --------------------------------------------------------------------------------------------------- checks
def check_digits(table: Table, s: Sizes, smoke: bool) -> None:
    """The README's default run, as a user starts it, in a fresh run directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "recipes" / "image_sit.py"), f"--run_dir={tmp}/run",
                               *s.digits], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"recipes/image_sit.py: {proc.stderr.strip().splitlines()[-1]}")
        note = f"{'10 steps, no eval (smoke)' if smoke else '2000 steps + eval'}"
        evaluation = Path(tmp, "run", "eval.json")
        if evaluation.exists():
            result = json.loads(evaluation.read_text())
            note += f"; fd_digits {result['fd_digits']:.3g}, accuracy {result['classifier_accuracy']:.3f}"
        table.add("digits default run (wall)", f"{wall:.0f} s", "", note)


def _timed(trainer, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step, mean over `steps` after `warmup` untimed steps (compilation happens in those)."""
    for _ in range(warmup):
        trainer.train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    return (time.perf_counter() - start) / steps


def check_training(table: Table, s: Sizes, device: torch.device, bf16: bool, compile_modes: tuple[bool, ...],
                   peak: float | None) -> None:
    """img/s, MFU and peak memory of core/trainer.py's own step (forward, flow loss, backward, clipping,
    fused AdamW, EMA), eager and compiled; FLOPs counted once by Trainer.count_step_flops."""
    from layersync.benchmarks.regularizer_overhead import make_trainer

    config = dit_config(s)
    for compiled in compile_modes:
        free(device)
        trainer = make_trainer(config, None, s.batch, device, bf16, compile=compiled)
        flops = trainer.count_step_flops()
        seconds = _timed(trainer, s.steps, s.warmup, device)
        mfu = flops / seconds / peak if peak else float("nan")
        label = f"{s.preset} train step, {'bf16' if bf16 else 'fp32'}, compile {'on' if compiled else 'off'}"
        table.add(label, f"{s.batch / seconds:.1f} img/s, MFU {mfu:.1%}, {peak_gb(device)}",
                  "MFU ≥ 40%" if compiled else "",
                  f"batch {s.batch}, {flops / 1e12:.3g} TFLOP/step, {seconds * 1e3:.0f} ms/step")
        del trainer


def check_ratios(table: Table, s: Sizes, device: torch.device, bf16: bool) -> None:
    """LayerSync/vanilla and SRA/vanilla step time at the paper's blocks (scaled to the depth), eager,
    every variant one step per round so a drifting clock hits all alike."""
    from layersync.benchmarks.regularizer_overhead import build_variants, describe, make_trainer
    from layersync.core.models import DiT

    config = dit_config(s)
    free(device)
    variants = {k: v for k, v in build_variants(DiT(config)).items() if k in ("vanilla", "layersync", "sra")}
    steps = {name: make_trainer(config, reg, s.batch, device, bf16).train_step
             for name, reg in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(s.warmup + s.steps):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if round_ >= s.warmup:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["vanilla"])
    for name, target in (("layersync", "≤ 1.03"), ("sra", "")):
        ratio = statistics.median(times[name]) / base
        table.add(f"{name}/vanilla step time", f"{ratio:.3f}", target,
                  f"blocks {describe(variants[name])}, eager, median of {s.steps}")
    del steps
    free(device)


def check_sampling(table: Table, s: Sizes, device: torch.device) -> None:
    """Heun, 50 steps (99 evaluations), no guidance, as `layersync image sample` runs it (fp32 weights;
    TF32 matmuls on CUDA), and the same under bf16 autocast."""
    from layersync.core.interpolants import Interpolant
    from layersync.core.models import DiT
    from layersync.core.recipe import SampleSpec, sample

    config = dit_config(s)
    torch.manual_seed(0)
    model = DiT(config).to(device).eval()
    spec = SampleSpec(sampler="heun", steps=50)
    noise = torch.randn(s.sample_batch, config.in_channels, *config.input_size, device=device)
    labels = torch.arange(s.sample_batch, device=device) % config.num_classes
    for bf16 in (False, True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            sample(model, Interpolant(), noise[:1], labels[:1], None, SampleSpec(sampler="heun", steps=2))
            sync(device)
            start = time.perf_counter()
            _, nfe = sample(model, Interpolant(), noise, labels, None, spec)
            sync(device)
        seconds = time.perf_counter() - start
        precision = "bf16 autocast" if bf16 else ("fp32/TF32" if device.type == "cuda" else "fp32")
        table.add(f"{s.preset} Heun-50 sampling, {precision}", f"{s.sample_batch / seconds:.2f} img/s", "",
                  f"batch {s.sample_batch}, {nfe} evaluations, {seconds:.1f} s")
    del model
    free(device)


def check_inception(table: Table, s: Sizes, device: torch.device) -> None:
    """FID Inception (pool_3, 2048-d) features per second from 256² uint8 images, ADM preprocessing, fp32."""
    from layersync.core.weights import MissingWeightsError
    from layersync.metrics.inception import FIDInceptionV3, load_fid_inception

    try:
        net, weights = load_fid_inception(device=device), "pytorch-fid weights"
    except MissingWeightsError:
        torch.manual_seed(0)
        net = FIDInceptionV3().eval().requires_grad_(False).to(device)
        weights = "RANDOM weights (no pt_inception file in $LAYERSYNC_WEIGHTS; speed only)"
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (s.inception_batch, 3, 256, 256), generator=g, dtype=torch.uint8).to(device)
    with torch.no_grad():
        net(images)
        sync(device)
        start = time.perf_counter()
        for _ in range(s.inception_batches):
            features = net(images).pool
        sync(device)
    seconds = time.perf_counter() - start
    assert features.shape == (s.inception_batch, 2048) and torch.isfinite(features).all()
    table.add("FID Inception features", f"{s.inception_batch * s.inception_batches / seconds:.1f} img/s", "",
              f"{weights}; batch {s.inception_batch}")
    del net
    free(device)


def check_frechet(table: Table, s: Sizes, device: torch.device) -> None:
    """metrics.frechet (float64 eigh, on the device) against scipy.linalg.sqrtm on the same statistics."""
    import numpy as np
    import scipy.linalg

    from layersync.metrics.frechet import frechet_distance

    d = s.frechet_dim
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2 * d, d)) @ rng.standard_normal((d, d)) / math.sqrt(d)
    b = 1.1 * rng.standard_normal((2 * d, d)) @ rng.standard_normal((d, d)) / math.sqrt(d) + 0.1
    start = time.perf_counter()
    ours = frechet_distance(a, b, device=device)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    ref = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean).real)
    scipy_s = time.perf_counter() - start
    rel = abs(ours - ref) / abs(ref)
    table.add(f"Fréchet distance {d}-d vs scipy", f"rel. diff {rel:.1e}", "≤ 1e-6",
              f"{ours:.6g} in {ours_s:.2f} s ({device.type}) vs scipy {ref:.6g} in {scipy_s:.2f} s")


def check_processes(table: Table, device: torch.device) -> None:
    """The same tiny run on 1 and 2 processes (global batch fixed): per-step losses agree."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        table.add("1 vs 2 GPUs, same losses", "skipped", "", f"{torch.cuda.device_count()} GPU present")
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for n in (1, 2):
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(n),
                      *(["--multi_gpu"] if n > 1 else []),
                      __file__, "--equality-worker", f"{tmp}/{n}"]
            proc = subprocess.run(launch, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                raise RuntimeError(f"{n} process(es): {proc.stderr.strip().splitlines()[-1]}")
            rows = [json.loads(line) for line in Path(tmp, str(n), "log.jsonl").read_text().splitlines()]
            runs[n] = [(r["loss"], r["grad_norm"]) for r in rows]
    worst = max(abs(x - y) / max(abs(y), 1e-12) for a, b in zip(runs[2], runs[1]) for x, y in zip(a, b))
    tolerance = 1e-3 if device.type == "cuda" else 1e-4  # TF32 on CUDA; gloo's summation order on CPUs
    verdict = "equal" if len(runs[1]) == len(runs[2]) and worst <= tolerance else "DIFFERENT"
    table.add(f"1 vs 2 {'GPUs' if device.type == 'cuda' else 'CPU processes'}, same losses",
              f"{verdict} (max rel. diff {worst:.1e})", f"≤ {tolerance:g}",
              f"{len(runs[1])} steps, loss and grad norm")


def equality_worker(run_dir: str) -> None:
    """Run under `accelerate launch` by check_processes: 4 steps of a tiny LayerSync run, fp32, log every step."""
    from layersync.core.interpolants import Interpolant
    from layersync.core.models import DiT
    from layersync.core.regularizers import LayerSync
    from layersync.core.trainer import TensorSource, TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    cfg = TrainConfig(seed=1, total_steps=4, global_batch_size=8, lr=1e-3, ema_decay=0.9, log_every=1,
                      ckpt_every=0, mixed_precision="no")
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=(8, 8), in_channels=4, patch_size=2, depth=4, hidden_size=64, num_heads=2,
                          num_classes=10))
    Trainer(cfg, model, Interpolant(), TensorSource(x, y), run_dir, full_config=cfg,
            regularizer=LayerSync("2:3", weight=0.2, depth=4)).fit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the compiled training row (inductor needs ~1 min of C++ builds on a CPU)")
    parser.add_argument("--batch", type=int, help="training batch (default 64; 4 with --cpu-smoke)")
    parser.add_argument("--equality-worker", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.equality_worker:
        equality_worker(args.equality_worker)
        return
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: error: no CUDA device; use --cpu-smoke for the CPU version")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    s = SMOKE if args.cpu_smoke else FULL
    if args.batch:
        s = Sizes(**{**s.__dict__, "batch": args.batch})
    bf16 = device.type == "cuda"  # as the trainer's mixed_precision=auto
    telemetry.enable_tf32(device)
    peak, peak_source = telemetry.device_peak(device, "bf16" if bf16 else "fp32")
    table = Table()
    checks = [lambda: check_digits(table, s, args.cpu_smoke),
              lambda: check_training(table, s, device, bf16, (False,) if args.no_compile else (False, True), peak),
              lambda: check_ratios(table, s, device, bf16), lambda: check_sampling(table, s, device),
              lambda: check_inception(table, s, device), lambda: check_frechet(table, s, device),
              lambda: check_processes(table, device)]
    failed = 0
    for check, name in zip(checks, ("digits", "training", "ratios", "sampling", "inception", "frechet",
                                    "processes")):
        try:  # one broken check must not cost the rest of a short GPU lease: its row says what broke
            check()
        except Exception as err:  # noqa: BLE001 - reported in the table, traceback on stderr
            traceback.print_exc()
            table.add(f"{name} check", "FAILED", "", f"{type(err).__name__}: {err}"[:150])
            failed += 1
            free(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU ({torch.get_num_threads()} threads)")
    table.print(f"gpu_check{' --cpu-smoke' if args.cpu_smoke else ''}: {name}, torch {torch.__version__}, "
                f"MFU peak: {peak_source}; {time.perf_counter() - table.start:.0f} s in all")
    if failed:
        raise SystemExit(f"gpu_check.py: {failed} check(s) failed (see the table and the tracebacks above)")


if __name__ == "__main__":
    main()
