"""Atomic, resumable checkpoints: temp file, fsync, rename; newest complete one wins."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path.tmp-<pid>`, fsync it, rename over `path`, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def default_cache_dir() -> Path:
    """`$LAYERSYNC_CACHE`, or `~/.cache/layersync` when it is unset: where trained evaluators are cached."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "layersync").expanduser()


def config_cache_key(config: Any, fmt: int, sources: Iterable[str | os.PathLike]) -> str:
    """16 hex digits of sha256(dataclass `config` as sorted JSON, `format=<fmt>`, the bytes of each source file):
    a cached model is retrained whenever its recipe, record format or code changes."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    h.update(f"format={fmt}".encode())
    for source in sources:
        h.update(Path(source).read_bytes())
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
    """Every RNG the training loop may touch."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; a truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated zip archives
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a layersync checkpoint ({type(e).__name__}); "
            "delete it to resume from the previous one"
        ) from None
    if not isinstance(state, dict) or not {"model", "ema", "config"} <= state.keys():
        raise CheckpointError(f"{path} is not a layersync checkpoint (no model/ema/config entries)")
    return state


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
