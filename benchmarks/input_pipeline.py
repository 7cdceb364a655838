"""How fast each training source feeds a process, and how long a training step waits for its data.

    python benchmarks/input_pipeline.py                   # every source, 1 and 2 processes, then 2 recipes
    python benchmarks/input_pipeline.py --sources latents --seconds 5 --no-recipes

Part 1: samples/s of each process while 1 or 2 processes (spawned, one CPU thread each) load their own
slots of a global batch of 256 at the shapes of the paper presets, from synthetic data written under --workdir:

    latents  ImageNet 256² SD-VAE moments (2 × 8×32×32 float32 with flips, npy shards, memory-mapped)
    mels     a mel store, 80 mels (HiFi-GAN's), random 256-frame crops of 2,000-frame tracks (float16 memmap)
    video    CLEVRER frame latents 4×16×16×16 float32 (PreparedClips, memory-mapped)
    motion   HumanML3D-like 263-d clips of 40–196 frames, random T2M crops, padded to 196

"source" is `source.batch` alone (for the latents: reading both moment arrays, the flip and the posterior
sample); "+draws" is what the prefetch thread does for a step (core/prefetch.py):
the source plus the per-sample flow noise, t and label dropout. The files are read once before timing, so
reads come from the page cache (a cold disk is slower; a training run's working set usually is cached too).

Part 2: the digits recipe (its default config, 30 steps) and the latent recipe's trainer and source (S/2 on
the synthetic latents, global batch 16, 8 steps; CPU cannot run its XL/2 × 256) report the share of the training
time the loop spent blocked in `Prefetcher.get` (`data_wait_s` of their log.jsonl), beside the time one step's
load takes on the training thread, which is what the step would wait without the prefetch thread.
The machine is shared: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GLOBAL_BATCH = 256
SOURCES = ("latents", "mels", "video", "motion")


def write_latents(root: Path, n: int) -> None:
    from layersync.image.prepare import FORMAT

    rng = np.random.default_rng(0)
    shard_size = 1024
    shards = []
    for s, lo in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - lo)
        shard = root / f"shard_{s:05d}"
        shard.mkdir(parents=True)
        for name in ("moments", "moments_flip"):
            np.save(shard / f"{name}.npy", rng.standard_normal((count, 8, 32, 32), dtype=np.float32))
        np.save(shard / "labels.npy", rng.integers(0, 1000, count))
        shards.append({"name": shard.name, "count": count})
    (root / "index.json").write_text(json.dumps({
        "format": FORMAT, "image_size": 256, "latent_shape": [4, 32, 32], "scaling_factor": 0.18215,
        "flip": True, "keep_images": False, "num_classes": 1000, "class_names": [str(i) for i in range(1000)],
        "vae_path": "/synthetic", "vae_weights_sha256": "0" * 64, "source": "/synthetic", "num_items": n,
        "num_unreadable": 0, "shards": shards}))


def write_mels(root: Path, tracks: int, frames: int) -> None:
    from layersync.audio.mel import HIFIGAN_MEL, MelStats
    from layersync.audio.store import STORE_FORMAT

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rng.standard_normal((tracks * frames, HIFIGAN_MEL.n_mels)).astype(np.float16).tofile(root / "mels.f16")
    entries = [{"track_id": str(i), "path": f"{i}.mp3", "tags": [f"genre---g{i % 10}"], "offset": i * frames,
                "frames": frames} for i in range(tracks)]
    (root / "index.json").write_text(json.dumps({"format": STORE_FORMAT, "mel": HIFIGAN_MEL.to_dict(),
                                                 "total_frames": tracks * frames, "tracks": entries,
                                                 "skipped": 0}))
    MelStats(np.zeros(HIFIGAN_MEL.n_mels), np.ones(HIFIGAN_MEL.n_mels), HIFIGAN_MEL, tracks * frames).save(
        root / "stats.npz")


def write_video(root: Path, n: int) -> None:
    from layersync.video.prepared import ARRAY, FORMAT, MANIFEST

    root.mkdir(parents=True)
    array = np.lib.format.open_memmap(root / ARRAY, "w+", np.float32, (n, 4, 16, 16, 16))
    rng = np.random.default_rng(2)
    for lo in range(0, n, 256):
        array[lo:lo + 256] = rng.standard_normal(array[lo:lo + 256].shape, dtype=np.float32)
    array.flush()
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "encoding": "sd_vae", "n_clips": n,
                                             "clip_shape": [4, 16, 16, 16]}))


def build_source(name: str, root: Path):
    if name == "latents":
        from layersync.image.latents import LatentSource

        return LatentSource(root / "latents", flip=True)
    if name == "mels":
        from layersync.audio.jamendo import TagVocabulary
        from layersync.audio.store import MelStore, MelStoreSource

        store = MelStore(root / "mels")
        vocab = TagVocabulary.from_tracks(store.tracks, "genre")
        return MelStoreSource(store, vocab, "first_tag", 256, "frames")
    if name == "video":
        from layersync.video.prepared import PreparedClips

        return PreparedClips(root / "video")
    from layersync.motion.features import FEATURE_DIM
    from layersync.motion.humanml3d import Caption, MotionItem, MotionSet, MotionSource

    rng = np.random.default_rng(3)
    lengths = rng.integers(40, 197, 2000)  # HumanML3D's kept range, max_frames 196
    items = tuple(MotionItem(str(i), rng.standard_normal((int(n), FEATURE_DIM), np.float32),
                             (Caption(f"c{i}", ()),)) for i, n in enumerate(lengths))
    zero, one = np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32)
    data = MotionSet(items, zero, one, root, "train")
    table = torch.randn(2000, 512)
    return MotionSource(data, {f"c{i}": i for i in range(2000)}, table, max_frames=196)


def measure(name: str, root: str, rank: int, world: int, seconds: float, start, out) -> None:
    """Per-process samples/s of `source.batch` and of the whole prefetch load for its slots."""
    from layersync.core.interpolants import Interpolant
    from layersync.core.prefetch import load_micro_batches
    from layersync.core.sample_rng import sample_keys
    from layersync.core.trainer import IndexStream

    torch.set_num_threads(1)
    source = build_source(name, Path(root))
    stream, interpolant = IndexStream(len(source), seed=0), Interpolant()
    per_rank = GLOBAL_BATCH // world
    first = rank * per_rank

    def only_source(step):
        keys = sample_keys(0, step, torch.arange(first, first + per_rank))
        source.batch(stream.take(step * GLOBAL_BATCH + first, per_rank), keys)

    def with_draws(step):
        load_micro_batches(source, stream, interpolant, 0.1, 0, step, GLOBAL_BATCH, first, per_rank, 1)

    for step in range(len(source) // GLOBAL_BATCH + 1):  # one pass: every file in the page cache
        only_source(step)
    rates = {}
    for label, fn in (("source", only_source), ("+draws", with_draws)):
        start.wait()
        t0, c0, step = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < seconds:
            fn(step)
            step += 1
        rates[label] = step * per_rank / (time.perf_counter() - t0)
        rates[label + " cpu"] = step * per_rank / (time.process_time() - c0)
    out.put((rank, rates))


def source_rates(name: str, root: Path, world: int, seconds: float) -> list[dict]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(world), ctx.Queue()
    procs = [ctx.Process(target=measure, args=(name, str(root), r, world, seconds, start, out))
             for r in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(world)]


def recipe_wait(root: Path) -> list[tuple[str, dict[str, float]]]:
    """The data wait of the digits recipe and of the latent trainer over their whole run (from log.jsonl), and
    what loading a step would take on the training thread (the wait without prefetching)."""
    from layersync.core.interpolants import Interpolant
    from layersync.core.recipe import AlignSpec, ModelSpec, build_model, build_regularizer
    from layersync.core.trainer import TrainConfig, Trainer
    from layersync.image.latents import LatentSource
    from layersync.image.run import ImageRecipe

    path = Path(__file__).parents[1] / "recipes" / "image_sit.py"
    spec = importlib.util.spec_from_file_location("image_sit", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    rows = []
    digits = root / "digits_run"
    recipe.main([f"--run_dir={digits}", "--train.total_steps=40", "--train.log_every=10",
                 "--train.ckpt_every=0", "--train.sample_every=0", "--grid_per_class=1", "--eval_per_class=0", "--sample.steps=2"])
    from layersync.core.trainer import TensorSource
    from layersync.image.digits import digits_tensors

    x, y = digits_tensors("train")
    rows.append(("digits recipe (S/2 d8 w96, batch 64, 40 steps)",
                 summary(digits, 64, TensorSource(x, y, raw=x))))

    torch.manual_seed(0)
    model = build_model(ModelSpec(preset="S/2", cond_dropout=0.1), (32, 32), 4, cond_kind="class",
                        num_classes=1000)
    cfg = TrainConfig(total_steps=8, global_batch_size=16, log_every=4, ckpt_every=0)
    run_dir, source = root / "latent_run", LatentSource(root / "latents")
    Trainer(cfg, model, Interpolant(), source, run_dir, ImageRecipe(run_dir=str(run_dir), train=cfg),
            regularizer=build_regularizer(AlignSpec(layersync="4:8"), model)).fit()
    rows.append(("latent trainer (S/2, 32×32×4 latents, batch 16, LayerSync 4:8, 8 steps)",
                 summary(run_dir, 16, source)))
    return rows


def summary(run_dir: Path, batch: int, source) -> dict[str, float]:
    """Wait and wall time summed over every logged interval; one step's load timed on this thread."""
    from layersync.core.interpolants import Interpolant
    from layersync.core.prefetch import load_micro_batches
    from layersync.core.trainer import IndexStream

    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] - p for r, p in zip(rows, [0] + [r["step"] for r in rows])]
    wall = sum(n * batch / r["samples_per_s"] for n, r in zip(steps, rows))
    wait = sum(n * r["data_wait_s"] for n, r in zip(steps, rows))
    stream, loads = IndexStream(len(source), 0), []
    for step in range(11):
        t0, c0 = time.perf_counter(), time.process_time()
        load_micro_batches(source, stream, Interpolant(), 0.1, 0, step, batch, 0, batch, 1)
        loads.append((time.perf_counter() - t0, time.process_time() - c0))
    wall_load, cpu_load = (statistics.median(v) for v in zip(*loads[1:]))
    return {"wait_frac": wait / wall, "step_s": wall / sum(steps), "wait_s": wait / sum(steps),
            "load_s": wall_load, "load_cpu_s": cpu_load}


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", nargs="*", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--seconds", type=float, default=4.0,
                   help="timed seconds per source, mode and process count")
    p.add_argument("--workdir", default="", help="where the synthetic data go (default: a temporary folder)")
    p.add_argument("--no-recipes", action="store_true", help="skip part 2")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        root = Path(tmp)
        writers = {"latents": lambda: write_latents(root / "latents", 4096),
                   "mels": lambda: write_mels(root / "mels", 256, 2000),
                   "video": lambda: write_video(root / "video", 1024), "motion": lambda: None}
        for name in set(args.sources) | ({"latents"} if not args.no_recipes else set()):
            writers[name]()
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; global batch "
              f"{GLOBAL_BATCH}; samples per second of wall time per process, and per second of the process's "
              "own CPU time (what one free core would give)")
        print(f"| {'source':8s} | processes | {'source, wall':>14s} | {'source, CPU':>12s} "
              f"| {'+draws, wall':>14s} | {'+draws, CPU':>12s} |")
        for name in args.sources:
            for world in (1, 2):
                rates = source_rates(name, root, world, args.seconds)
                cells = [" / ".join(f"{r[k]:,.0f}" for r in rates)
                         for k in ("source", "source cpu", "+draws", "+draws cpu")]
                print(f"| {name:8s} | {world:9d} | {cells[0]:>14s} | {cells[1]:>12s} | {cells[2]:>14s} "
                      f"| {cells[3]:>12s} |")
        print(f"# load average {os.getloadavg()[0]:.2f} after part 1")
        if not args.no_recipes:
            for label, r in recipe_wait(root):
                print(f"{label}: waited for data {100 * r['wait_frac']:.3f}% of the training time "
                      f"({1e3 * r['wait_s']:.2f} ms of a {1e3 * r['step_s']:.0f} ms step); loading a step on "
                      f"the training thread takes {1e3 * r['load_s']:.2f} ms ({1e3 * r['load_cpu_s']:.2f} ms "
                      "of CPU time)")
            print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
