"""A run's checkpoint for the command lines: find it, load it, check its config, fit its weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from .config import ConfigError, from_dict
from .errors import UserFileNotFoundError

R = TypeVar("R")


def load_run_state(run: str | Path, ckpt_path: str | Path | None, recipe_cls: type[R], domain: str,
                   recipe_script: str) -> tuple[R, dict[str, Any], Path]:
    """(config, checkpoint dict, checkpoint path) of `run`'s newest checkpoint, or of `ckpt_path` if given.

    A checkpoint whose config does not parse as `recipe_cls` raises CheckpointError naming `domain`;
    `recipe_script` is the training script a run without checkpoints is pointed to.
    """
    if ckpt_path is None:
        if not Path(run).is_dir():
            raise UserFileNotFoundError(f"run directory {run} does not exist")
        found = list_checkpoints(run)
        if not found:
            raise UserFileNotFoundError(f"no checkpoint in {run}/checkpoints; train first with "
                                        f"{recipe_script}")
        ckpt_path = found[-1]
    state = load_checkpoint(ckpt_path)
    try:
        cfg = from_dict(recipe_cls, state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt_path} was not written by the {domain} recipe ({e})") from None
    return cfg, state, Path(ckpt_path)


def load_weights(model: torch.nn.Module, weights: Mapping[str, Any], ckpt_path: str | Path,
                 what: str = "EMA weights") -> torch.nn.Module:
    """Load `weights` (e.g. a checkpoint's "ema" entry) into `model`; a key or shape mismatch raises
    CheckpointError with torch's first line."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        # torch's message is a headline and one indented line per missing/unexpected key list and size
        # mismatch: keep all of them (the first line alone names no key), on one line.
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise CheckpointError(f"{ckpt_path}: {what} do not fit the model its config describes "
                              f"({detail or str(e).splitlines()[0]})") from None
    return model


def run_directory_line(run_dir: str | Path, entries: Iterable[str], note: str = "") -> str:
    """`run directory: DIR (a, b/, …)` naming only the entries (glob patterns allowed) that exist now, so the
    line never promises a file a run did not write; `note` (e.g. why there is no evaluation) is appended."""
    run_dir = Path(run_dir)
    present = [e for e in entries if any(run_dir.glob(e.rstrip("/")))]
    return f"run directory: {run_dir} ({', '.join(present + ([note] if note else []))})"
