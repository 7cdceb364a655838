"""Pretrained weights from local files only, checked by sha256 (DESIGN §5: nothing downloads)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserFileNotFoundError

ENV_VAR = "LAYERSYNC_WEIGHTS"


@dataclass(frozen=True)
class WeightFile:
    """A pretrained file the toolkit knows: its name, checksum and where a user can obtain it."""

    filename: str
    sha256: str | None  # None: the publisher gives no fixed file (e.g. a folder); existence is checked
    source: str  # where to get it, for the error message
    description: str = ""


class MissingWeightsError(UserFileNotFoundError):
    """A pretrained file is absent or corrupt; the message says what to fetch and where to put it."""


def sha256sum(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def weights_dir() -> Path | None:
    """The `LAYERSYNC_WEIGHTS` directory, if set."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else None


def resolve(spec: WeightFile, path: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Find `spec` at `path` (a file or a folder holding it) or in `$LAYERSYNC_WEIGHTS`; verify its sha256.

    Raises MissingWeightsError naming the file, where to obtain it and its checksum.
    """
    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        candidates += [p / spec.filename] if p.is_dir() else [p]
    elif (d := weights_dir()) is not None:
        candidates.append(d / spec.filename)
    for candidate in candidates:
        if candidate.exists():
            if verify and spec.sha256 is not None and candidate.is_file():
                got = sha256sum(candidate)
                if got != spec.sha256:
                    raise MissingWeightsError(
                        f"{candidate} has sha256 {got}, expected {spec.sha256} for {spec.filename} "
                        f"({spec.description or 'pretrained weights'}). The file is corrupt or a different "
                        f"version; obtain it from {spec.source}."
                    )
            return candidate
    where = ", ".join(str(c) for c in candidates) if candidates else f"no path given and ${ENV_VAR} unset"
    checksum = f"sha256 {spec.sha256}" if spec.sha256 else "no fixed checksum"
    raise MissingWeightsError(
        f"{spec.filename} ({spec.description or 'pretrained weights'}) not found ({where}). "
        f"Obtain it from {spec.source} ({checksum}) and pass its path, or put it in ${ENV_VAR}."
    )
