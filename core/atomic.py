"""Atomic file writes that survive a full disk: temp file, fsync, rename; never a half-written file.

A write that cannot fit is refused before it starts when the free space is known to be short, and a write
that fails (the disk filled meanwhile, or any other error) removes its temp file, so a full disk is not kept
full by our debris and every earlier file stays as it was. A full disk raises DiskFullError: one line naming
the folder and the space the file needs.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import UserRuntimeError

MIB = 2**20


class DiskFullError(UserRuntimeError):
    """No space left where a file must be written; rerunning after freeing space continues."""

    def __init__(self, path: Path, needed_bytes: int, free_bytes: int):
        super().__init__(f"no space left in {path.parent}: {path.name} needs about {needed_bytes / MIB:.1f} "
                         f"MiB, {free_bytes / MIB:.1f} MiB free; free space (e.g. delete old checkpoints or "
                         "samples) and rerun the same command to continue")


def _caused_by_full_disk(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: torch.save turns it into RuntimeError("… unexpected pos …")."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], needed_bytes: int) -> None:
    """Call `write(f)` on `.<name>.tmp-<pid>` beside `path`, fsync it, rename it over `path`, fsync the
    folder.

    `needed_bytes` is the expected size: a folder with less free space is refused before writing. On any
    failure the temp file is removed; one caused by a full disk (ENOSPC, or a writer such as torch.save's
    failing while the space left is short of what remained to write) raises DiskFullError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed_bytes:
        raise DiskFullError(path, needed_bytes, free)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        free = shutil.disk_usage(path.parent).free  # before the temp file gives its space back
        tmp.unlink(missing_ok=True)
        if _caused_by_full_disk(e) or isinstance(e, Exception) and free < needed_bytes - written:
            raise DiskFullError(path, needed_bytes, free) from None
        raise
    fsync_dir(path.parent)
