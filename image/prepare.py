"""`layersync image prepare`: ImageNet → ADM centre crop → SD-VAE latent moments, in shards with an index.

    OUT/plan.json              what is being made (source listing hash, crop size, flip, VAE checksum)
    OUT/shard_00000/           moments.npy (n, 2C, h, w) float32 μ ‖ log σ², moments_flip.npy (same, of
                               the mirrored image), labels.npy (n,) int64, images.npy (n, S, S, 3) uint8
                               with --keep-images (REPA's encoder input), keys.txt, failed.json
    OUT/index.json             shards, counts, classes, latent geometry, scaling factor, VAE (written last)
    OUT/report.json            every unreadable file with its error

Shard s holds listed items [s·shard_size, (s+1)·shard_size) minus the unreadable ones. A shard folder appears
by an atomic rename once complete, so an interrupted run resumes by rerunning the same command: finished
shards are skipped. Under `accelerate launch` process r encodes the shards s ≡ r (mod processes), then the
main process writes the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.process_group import destroy_at_exit
from layersync.image.imagenet import Listing, SourceFormat, load_and_crop, open_source
from layersync.image.vae import LatentVae, load_vae

FORMAT = 1
# plan.json fields that must match on resume (paths may move; batch size and workers may change).
_FIXED = ("format", "num_items", "items_sha256", "class_names", "image_size", "flip", "keep_images",
          "shard_size", "vae_weights_sha256", "scaling_factor", "latent_shape")


@dataclass(frozen=True)
class PrepareConfig:
    """One `prepare` job; every field but batch_size and workers is fixed for the life of an output folder."""

    source: str  # ILSVRC-style folder or parquet file(s)
    out: str
    vae: str = ""  # local AutoencoderKL folder; "" = $LAYERSYNC_WEIGHTS/sd-vae-ft-ema
    vae_sha256: str = ""  # pin the VAE weights file ("" = accept and record whatever it is)
    source_format: SourceFormat = "auto"
    image_size: int = 256  # ADM centre crop, pixels
    flip: bool = True  # also store the moments of the horizontally mirrored image
    keep_images: bool = False  # also store the cropped uint8 images (REPA's encoder needs them)
    shard_size: int = 1000
    batch_size: int = 64  # images per VAE forward
    workers: int = 8  # threads decoding and cropping images

    def __post_init__(self):
        for name in ("image_size", "shard_size", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise UserValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def _items_sha256(listing: Listing) -> str:
    digest = hashlib.sha256()
    for key, label in zip(listing.keys, listing.labels.tolist()):
        digest.update(f"{key}\t{label}\n".encode())
    return digest.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _plan(cfg: PrepareConfig, listing: Listing, vae: LatentVae) -> dict:
    """Write OUT/plan.json, or check that the existing one describes the same job."""
    info, n = vae.info, len(listing.keys)
    if cfg.image_size % info.downsample:
        raise UserValueError(f"image_size {cfg.image_size} is not a multiple of the VAE's {info.downsample}× "
                             "downsampling")
    side = cfg.image_size // info.downsample
    plan = {"format": FORMAT, "source": str(Path(cfg.source).resolve()), "num_items": n,
            "items_sha256": _items_sha256(listing), "class_names": listing.class_names,
            "image_size": cfg.image_size, "flip": cfg.flip, "keep_images": cfg.keep_images,
            "shard_size": cfg.shard_size, "num_shards": -(-n // cfg.shard_size),
            "vae_path": info.path, "vae_weights_sha256": info.weights_sha256,
            "scaling_factor": info.scaling_factor, "latent_shape": [info.latent_channels, side, side]}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key in _FIXED:
            if old.get(key) != plan[key]:
                what = "source files" if key in ("num_items", "items_sha256") else key
                raise UserValueError(f"{out} was prepared with different {what} ({key}: "
                                     f"{_short(old.get(key))} "
                                     f"then, {_short(plan[key])} now); use another --out or the original "
                                     "settings")
    else:
        _write_json(path, plan)
    return plan


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _crop(data: bytes | Exception, size: int) -> np.ndarray | Exception:
    if isinstance(data, Exception):
        return data
    try:
        return load_and_crop(data, size)
    except Exception as e:  # PIL raises many types on bad files; each one is reported, none skipped silently
        return e


def _encode(vae: LatentVae, images: np.ndarray, batch_size: int, latent_shape: list[int]) -> np.ndarray:
    """uint8 (n, S, S, 3) → moments (n, 2C, h, w) float32, in batches."""
    parts = [vae.encode_moments(images[i : i + batch_size]).cpu().numpy()
             for i in range(0, len(images), batch_size)]
    c, h, w = latent_shape
    return np.concatenate(parts) if parts else np.zeros((0, 2 * c, h, w), np.float32)


def encode_shard(cfg: PrepareConfig, plan: dict, listing: Listing, source, vae: LatentVae, index: int,
                 pool: ThreadPoolExecutor) -> int:
    """Encode shard `index` into a temporary folder and rename it into place; returns images encoded."""
    lo, hi = index * cfg.shard_size, min((index + 1) * cfg.shard_size, len(listing.keys))
    keys = listing.keys[lo:hi]
    crops = list(pool.map(_crop, source.read(keys), [cfg.image_size] * len(keys)))
    ok = [i for i, c in enumerate(crops) if isinstance(c, np.ndarray)]
    failed = [{"item": keys[i], "error": f"{type(c).__name__}: {c}"} for i, c in enumerate(crops)
              if not isinstance(c, np.ndarray)]
    s = cfg.image_size
    images = np.stack([crops[i] for i in ok]) if ok else np.zeros((0, s, s, 3), np.uint8)  # (n, S, S, 3)
    shape = plan["latent_shape"]
    arrays = {"labels": listing.labels[lo:hi][ok], "moments": _encode(vae, images, cfg.batch_size, shape)}
    if cfg.flip:  # mirror along the width axis of (n, S, S, 3)
        arrays["moments_flip"] = _encode(vae, np.ascontiguousarray(images[:, :, ::-1]), cfg.batch_size, shape)
    if cfg.keep_images:
        arrays["images"] = images
    out = Path(cfg.out)
    tmp = out / f".{shard_name(index)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "keys.txt").write_text("".join(keys[i] + "\n" for i in ok))
    (tmp / "failed.json").write_text(json.dumps(failed, indent=1) + "\n")
    os.replace(tmp, out / shard_name(index))  # the shard exists only once complete
    return len(ok)


def encode_shards(cfg: PrepareConfig, rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
                  progress: bool = True) -> list[int]:
    """Encode this process's missing shards (s ≡ rank mod world); returns their indices."""
    from tqdm.auto import tqdm

    if not 0 <= rank < world:
        raise UserValueError(f"rank {rank} is not in [0, {world})")
    source = open_source(cfg.source, cfg.source_format)
    listing = source.list()
    if not listing.keys:
        raise UserFileNotFoundError(f"{cfg.source} lists no images")
    vae = load_vae(cfg.vae, cfg.vae_sha256, device)
    plan = _plan(cfg, listing, vae)
    out = Path(cfg.out)
    todo = [i for i in range(plan["num_shards"]) if i % world == rank and not (out / shard_name(i)).is_dir()]
    bar = tqdm(total=len(todo), desc=f"encode (rank {rank}/{world})", unit="shard", disable=not progress)
    t0, done = time.perf_counter(), 0
    with ThreadPoolExecutor(cfg.workers) as pool:
        for index in todo:
            done += encode_shard(cfg, plan, listing, source, vae, index, pool)
            bar.update(1)
            bar.set_postfix({"img/s": f"{done / (time.perf_counter() - t0):.1f}"})
    bar.close()
    return todo


def finalize(out: str | os.PathLike) -> dict:
    """Check every shard is there, then write index.json and report.json; returns the index."""
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise UserFileNotFoundError(f"{out}/plan.json does not exist; run `layersync image prepare` first")
    plan = json.loads((out / "plan.json").read_text())
    missing = [shard_name(i) for i in range(plan["num_shards"]) if not (out / shard_name(i)).is_dir()]
    if missing:
        raise UserValueError(f"{len(missing)} of {plan['num_shards']} shards of {out} are not encoded yet "
                             f"(first: {missing[0]}); rerun the same prepare command to finish them")
    shards, failed = [], []
    for i in range(plan["num_shards"]):
        folder = out / shard_name(i)
        shards.append({"name": folder.name, "count": len(np.load(folder / "labels.npy", mmap_mode="r"))})
        failed += json.loads((folder / "failed.json").read_text())
    index = {k: plan[k] for k in ("format", "image_size", "latent_shape", "scaling_factor", "flip",
                                  "keep_images", "class_names", "vae_path", "vae_weights_sha256", "source")}
    index |= {"num_classes": len(plan["class_names"]), "num_items": sum(s["count"] for s in shards),
              "num_unreadable": len(failed), "shards": shards}
    _write_json(out / "report.json", {"num_listed": plan["num_items"], "num_encoded": index["num_items"],
                                      "num_unreadable": len(failed), "unreadable": failed})
    _write_json(out / "index.json", index)
    return index


def prepare(cfg: PrepareConfig) -> dict:
    """All of it under Accelerate: each process encodes its shards, the main process writes the index."""
    from accelerate import PartialState

    # Without CUDA, `cpu=True` makes launched processes one gloo group (else each sees a world of one).
    state = PartialState(cpu=not torch.cuda.is_available())
    destroy_at_exit()
    encode_shards(cfg, state.process_index, state.num_processes, state.device, progress=state.is_main_process)
    state.wait_for_everyone()
    index = finalize(cfg.out) if state.is_main_process else {}
    state.wait_for_everyone()
    return index
