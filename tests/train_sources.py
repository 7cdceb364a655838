"""Tiny runs on each domain's real DataSource, for the test that 1 and 2 processes train alike (a subprocess).

    python tests/train_sources.py RUN_DIR [--steps N] [--accum A]

Every random draw is exercised: latent flips and posterior ε with SRA at a time gap of 0.5 and REPA (a tiny
random encoder on the flipped images); random mel-store crops with LayerSync; random motion crops (length
and start) under token masks; label / text dropout everywhere. Each scenario writes RUN_DIR/<name>/log.jsonl.
The data are written once, under RUN_DIR/data, by the main process.
"""

from __future__ import annotations

import argparse
import atexit
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layersync.audio.jamendo import TagVocabulary
from layersync.audio.mel import MelConfig, MelStats
from layersync.audio.store import STORE_FORMAT, MelStore, MelStoreSource
from layersync.core.interpolants import Interpolant
from layersync.core.models import DiT, DiTConfig
from layersync.core.regularizers import REPA, SRA, Combined, LayerSync
from layersync.core.trainer import TrainConfig, Trainer
from layersync.image.latents import LatentSource
from layersync.image.prepare import FORMAT as LATENT_FORMAT
from layersync.motion.features import FEATURE_DIM
from layersync.motion.humanml3d import Caption, MotionItem, MotionSet, MotionSource
from layersync.motion.mdm import MDM, MDMConfig

MEL = MelConfig(n_mels=8)


@dataclass(frozen=True)
class SourceRun:
    run_dir: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)


def write_latents(root: Path, n: int = 24) -> None:
    """A prepared ImageNet-style folder: moments (and the mirror image's) with σ = e^-0.5, 8×8 images."""
    rng = np.random.default_rng(0)
    shard = root / "shard_00000"
    shard.mkdir(parents=True)
    for name in ("moments", "moments_flip"):
        mean = rng.standard_normal((n, 2, 4, 4)).astype(np.float32)
        np.save(shard / f"{name}.npy", np.concatenate([mean, np.full_like(mean, -1.0)], 1))
    np.save(shard / "labels.npy", np.arange(n) % 3)
    np.save(shard / "images.npy", rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
    index = {"format": LATENT_FORMAT, "image_size": 8, "latent_shape": [2, 4, 4], "scaling_factor": 0.5,
             "flip": True, "keep_images": True, "class_names": ["a", "b", "c"], "num_classes": 3,
             "vae_path": "/nowhere", "vae_weights_sha256": "0" * 64, "source": "/nowhere", "num_items": n,
             "num_unreadable": 0, "shards": [{"name": "shard_00000", "count": n}]}
    (root / "index.json").write_text(json.dumps(index))


def write_mel_store(root: Path, n: int = 12) -> None:
    """A mel store of n tracks of 12–40 frames, tagged with one of three genres."""
    rng = np.random.default_rng(1)
    frames = rng.integers(12, 40, n)
    root.mkdir(parents=True)
    rng.standard_normal((int(frames.sum()), MEL.n_mels)).astype(np.float16).tofile(root / "mels.f16")
    offsets = np.concatenate([[0], np.cumsum(frames)[:-1]])
    tracks = [{"track_id": f"track_{i}", "path": f"{i}.mp3", "tags": [f"genre---g{i % 3}"],
               "offset": int(o), "frames": int(f)} for i, (o, f) in enumerate(zip(offsets, frames))]
    (root / "index.json").write_text(json.dumps({"format": STORE_FORMAT, "mel": MEL.to_dict(),
                                                 "total_frames": int(frames.sum()), "tracks": tracks,
                                                 "skipped": 0}))
    MelStats(np.zeros(MEL.n_mels), np.ones(MEL.n_mels), MEL, int(frames.sum())).save(root / "stats.npz")


def motion_source() -> MotionSource:
    rng = np.random.default_rng(2)
    items = tuple(MotionItem(f"{i:06d}", rng.standard_normal((int(rng.integers(40, 64)), FEATURE_DIM))
                             .astype(np.float32), (Caption(f"caption {i}", ()),)) for i in range(12))
    data = MotionSet(items, np.zeros(FEATURE_DIM, np.float32), np.ones(FEATURE_DIM, np.float32), Path("."),
                     "train")
    table = torch.from_numpy(rng.standard_normal((12, 16)).astype(np.float32))
    return MotionSource(data, {f"caption {i}": i for i in range(12)}, table, max_frames=64)


def tiny_dit(input_size, in_channels: int, num_classes: int) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=input_size, in_channels=in_channels, patch_size=2, depth=4,
                          hidden_size=32, num_heads=2, num_classes=num_classes))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # gates off zero, so the regularizers have a gradient from step 0
        for blk in model.blocks:
            blk.adaLN_modulation[-1].weight.normal_(0, 0.02, generator=g)
    return model


def scenarios(data: Path):
    """(name, source, model, interpolant, regularizer) for each domain."""
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2))  # 8×8 image → (B, 8, 4)
    repa_encoder = lambda images: encoder(images).transpose(1, 2)  # noqa: E731 - (B, 4 tokens, 8)
    yield ("latent", LatentSource(data / "latents", flip=True, with_images=True), tiny_dit((4, 4), 2, 3),
           Interpolant(), Combined([SRA(1, 3, hidden_size=32, weight=0.5, time_gap=0.5, depth=4),
                                    REPA(2, hidden_size=32, encoder_dim=8, weight=0.5, projector_dim=16,
                                         encoder=repa_encoder, depth=4)]))
    store = MelStore(data / "mels")
    audio = MelStoreSource(store, TagVocabulary.from_tracks(store.tracks, "genre"), "first_tag", 8, "image")
    yield "audio", audio, tiny_dit((8, 8), 1, 3), Interpolant(), LayerSync("1:3", weight=0.5, depth=4)
    torch.manual_seed(0)  # dropout 0: MDM's own dropout layers draw per process (docs/design.md)
    mdm = MDM(MDMConfig(text_dim=16, max_frames=64, depth=2, hidden_size=32, num_heads=2, ff_size=64,
                        dropout=0.0))
    yield "motion", motion_source(), mdm, Interpolant(prediction="x0"), None


def report_process_group() -> None:
    """At exit: is the launched process group still up (gloo may then abort the process at finalisation)?"""
    import torch.distributed as dist

    print(f"process group at exit: {'still up' if dist.is_initialized() else 'down'}", flush=True)


def main() -> None:
    from accelerate import Accelerator

    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--accum", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    atexit.register(report_process_group)  # registered first, so it runs after every later atexit hook
    root = Path(args.run_dir)
    acc = Accelerator(cpu=True)
    with acc.main_process_first():
        if acc.is_main_process and not (root / "data").exists():
            write_latents(root / "data" / "latents")
            write_mel_store(root / "data" / "mels")
    for name, source, model, interpolant, reg in scenarios(root / "data"):
        cfg = TrainConfig(seed=3, total_steps=args.steps, global_batch_size=8, grad_accum_steps=args.accum,
                          lr=1e-3, ema_decay=0.5, log_every=1, ckpt_every=0, keep_checkpoints=1)
        run_dir = root / name
        Trainer(cfg, model, interpolant, source, run_dir, SourceRun(str(run_dir), cfg), regularizer=reg,
                accelerator=acc).fit()


if __name__ == "__main__":
    main()
