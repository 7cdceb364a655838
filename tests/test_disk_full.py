"""A full disk: one line naming the folder and the space needed, no temp file left behind, earlier
checkpoints intact, and the rerun resumes once there is space."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layersync.core import atomic, checkpoint as ckpt
from layersync.core.atomic import DiskFullError
from layersync.core.config import save_json
from layersync.core.trainer import TrainConfig

SCRIPT = Path(__file__).with_name("train_tiny.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def fill_disk_after(monkeypatch, nbytes: int) -> None:
    """Writes to any file fail with ENOSPC once `nbytes` have been written (as on a full tmpfs)."""
    real_open = open

    class Filling:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > nbytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic, "open", lambda *a, **k: Filling(real_open(*a, **k)), raising=False)


def test_a_checkpoint_that_fills_the_disk_is_one_line_leaves_no_temp_file_and_keeps_the_last(tmp_path,
                                                                                              monkeypatch):
    state = {"model": {"w": torch.ones(1000)}, "ema": {}, "config": {}}
    ckpt.atomic_save(state, ckpt.checkpoint_path(tmp_path, 1))
    fill_disk_after(monkeypatch, 1000)
    with pytest.raises(DiskFullError) as err:
        ckpt.atomic_save(state, ckpt.checkpoint_path(tmp_path, 2))
    message = str(err.value)
    assert "\n" not in message and f"no space left in {tmp_path / 'checkpoints'}" in message
    assert "step_00000002.pt needs about 0.0 MiB" in message and "rerun the same command" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001.pt"]
    kept = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 1))
    assert torch.equal(kept["model"]["w"], torch.ones(1000))


def test_a_write_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 3 << 20))
    with pytest.raises(DiskFullError, match=r"needs about 4\.0 MiB, 3\.0 MiB free"):
        ckpt.atomic_save({"model": torch.zeros(2**20)}, tmp_path / "step_00000001.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_config_json_that_fills_the_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    fill_disk_after(monkeypatch, 10)
    with pytest.raises(DiskFullError, match="config.json needs about"):
        save_json(TrainConfig(), tmp_path / "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == "{}"


def test_training_on_a_full_disk_stops_with_one_line_and_the_rerun_resumes(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--steps", "12",
                           "--disk-full-at", "10"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and f"no space left in {tmp_path / 'checkpoints'}" in error[0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005.pt"]
    again = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--steps", "12"], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step 5" in again.stdout + again.stderr
    assert (tmp_path / "checkpoints" / "step_00000012.pt").is_file()
