"""Models a domain trains once and caches (evaluation CNNs, the audio tagger, …): the cached one, or build it.

A cached model is the file `<cache_dir>/<prefix>-<key>.pt`, a record of core/checkpoint.py ({format, key,
sha256, payload}) written atomically. Its payload is a dict of tensors and plain values, read back with
`weights_only=True`: unpickling anything else can run code, and caches are shared between users.

The key hashes the training config, the record format, the domain's source files, this module's source (it
lays out the payload) and any extra data the model learns from, so that a change in any of them trains a new
model under a new file name instead of reusing a stale one.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import (CorruptCacheError, config_cache_key, default_cache_dir, load_cache_record,
                         save_cache_record)

log = logging.getLogger(__name__)

T = TypeVar("T")


def cache_key(config: Any, fmt: int, sources: Iterable[str | os.PathLike], extra: str = "") -> str:
    """16 hex digits naming the model trained by dataclass `config` with the code of `sources` (and of this
    module) on the data that `extra` fingerprints ("" when the config and code fix the data)."""
    return config_cache_key(config, fmt, (*sources, __file__), extra)


def load_or_build(prefix: str, key: str, fmt: int, build: Callable[[], T], to_payload: Callable[[T], dict],
                  from_payload: Callable[[dict], T], cache_dir: str | os.PathLike | None = None) -> T:
    """The model cached as `<prefix>-<key>.pt` in `cache_dir` (default `$LAYERSYNC_CACHE`), else `build()`'s,
    saved as `to_payload(model)`; `from_payload` rebuilds it from that dict.

    A file that cannot be read or fails its format, key or sha256 check is logged as a warning, rebuilt and
    replaced. A payload that passes them but does not fit `from_payload` is a bug and raises.
    """
    path = Path(cache_dir or default_cache_dir()).expanduser() / f"{prefix}-{key}.pt"
    if path.exists():
        try:
            payload = load_cache_record(path, fmt, key)
        except CorruptCacheError as err:
            log.warning("cache %s is corrupt or unusable (%s); retraining it", path, err)
        else:
            return from_payload(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
    model = build()
    buf = io.BytesIO()
    torch.save(to_payload(model), buf)
    save_cache_record(path, fmt, key, buf.getvalue())
    log.info("cached %s", path)
    return model
