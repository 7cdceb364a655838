"""Atomic, resumable checkpoints: temp file, fsync, rename; newest complete one wins.

Checkpoints hold only tensors and plain values (dict, list, tuple, str, int, float, bool, None) and are read
with `torch.load(weights_only=True)`: unpickling anything else can run code, and runs are shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_atomically
from .errors import UserRuntimeError

CKPT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(UserRuntimeError):
    """A checkpoint that cannot be used: corrupt, or written by another config."""


class CorruptCacheError(CheckpointError):
    """A cache record that cannot be read, or whose format, key or payload sha256 does not match: the caller
    retrains the cached model and rewrites the file."""


CACHE_ENV = "LAYERSYNC_CACHE"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in step order (temp files from an interrupted write are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CKPT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_PATTERN.match(p.name).group(1)))


def checkpoint_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested checkpoint dict/list: about its size on disk."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(checkpoint_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(checkpoint_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temp file, fsync, rename (core/atomic.py): a full disk raises DiskFullError and
    leaves no temp file and every earlier checkpoint intact."""
    write_atomically(path, lambda f: torch.save(obj, f), checkpoint_bytes(obj))


def default_cache_dir() -> Path:
    """`$LAYERSYNC_CACHE`, or `~/.cache/layersync` when it is unset: where trained evaluators are cached."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "layersync").expanduser()


def config_cache_key(config: Any, fmt: int, sources: Iterable[str | os.PathLike], extra: str = "") -> str:
    """16 hex digits of sha256(dataclass `config` as sorted JSON, `format=<fmt>`, each source file's bytes,
    `extra`): a cached model is retrained whenever its recipe, record format, code or data (extra) changes."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    h.update(f"format={fmt}".encode())
    for source in sources:
        h.update(Path(source).read_bytes())
    h.update(extra.encode())  # nothing for "": the keys of models without extra data are unchanged
    return h.hexdigest()[:16]


def save_cache_record(path: str | Path, fmt: int, key: str, payload: bytes) -> None:
    """A cached model (evaluator, tagger, …) as {format, key, sha256, payload}, written atomically and readable
    by every user of a shared cache (mkstemp files are private)."""
    path = Path(path)
    record = {"format": fmt, "key": key, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_cache_record(path: str | Path, fmt: int, key: str) -> bytes:
    """The payload of a record written by `save_cache_record`, after checking its format, key and sha256.

    Raises CorruptCacheError (and nothing else) for a missing, truncated or garbled file, another format,
    another key or a payload that does not match its checksum.
    """
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or garbled file
        raise CorruptCacheError(f"unreadable: {type(err).__name__}: {err}") from err
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise CorruptCacheError(f"not a cache record of format {fmt}")
    if record.get("key") != key:
        raise CorruptCacheError(f"key {record.get('key')} does not match {key}")
    payload = record.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        raise CorruptCacheError("payload sha256 mismatch")
    return payload


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop may touch, as tensors and plain values (loadable weights-only)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, None)
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` onto the CPU. A file holding other pickled objects raises
    CheckpointError naming them (found by scanning the pickle, never by running it); a truncated or garbled
    file raises what torch raises."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise
        try:
            names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown objects"
        except Exception:  # a file too garbled to scan
            names = "objects it could not name"
        raise CheckpointError(
            f"{what} {path} holds pickled objects ({names}), not only tensors and plain values; layersync "
            "refuses to unpickle them because loading such a file can run code (checkpoints written before "
            "2026-12 kept numpy RNG state that way: resume those runs with that older layersync, or start "
            "a new run_dir)") from None
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; a truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = safe_load(path)
    except CheckpointError:
        raise
    except Exception as e:  # torch raises several types for truncated zip archives
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a layersync checkpoint ({type(e).__name__}); "
            "delete it to resume from the previous one"
        ) from None
    if not isinstance(state, dict) or not {"model", "ema", "config"} <= state.keys():
        raise CheckpointError(f"{path} is not a layersync checkpoint (no model/ema/config entries)")
    return state


def remove_partial_writes(run_dir: str | Path) -> list[Path]:
    """Delete the temp files (`.step_*.pt.tmp-<pid>`) that a process killed mid-write left; returns them."""
    folder = Path(run_dir) / "checkpoints"
    stale = sorted(folder.glob(".step_*.pt.tmp-*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
