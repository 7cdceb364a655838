"""No file layersync reads runs code: checkpoints load weights-only, and anything else in them is refused
with one line naming what it holds; the code a hostile pickle carries never runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.core import checkpoint as ckpt
from layersync.core.runs import load_run_state

PACKAGE = Path(__file__).resolve().parents[1]


class Hostile:
    """Unpickling this calls Path.touch(marker): what `os.system` would do, made visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@dataclass(frozen=True)
class Recipe:
    run_dir: str = ""


def _checkpoint(extra: dict) -> dict:
    return {"model": {"w": torch.zeros(2)}, "ema": {"w": torch.zeros(2)}, "config": {"run_dir": ""}, **extra}


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = ckpt.checkpoint_path(tmp_path, 5)
    ckpt.atomic_save(_checkpoint({"rng": Hostile(marker)}), path)
    with pytest.raises(ckpt.CheckpointError) as err:
        load_run_state(tmp_path, None, Recipe, "test", "train.py")  # what `… sample --run DIR` does
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(path)  # what resume does
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "pathlib" in message and "run code" in message


def test_a_checkpoint_from_before_weights_only_with_numpy_rng_state_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save(_checkpoint({"rng": {"numpy": np.random.get_state()}}), path)  # how older versions saved it
    with pytest.raises(ckpt.CheckpointError, match=r"numpy\..*_reconstruct.*run code.*older layersync"):
        ckpt.load_checkpoint(path)


def test_rng_state_is_tensors_and_plain_values_and_restores_every_generator(tmp_path):
    import random

    np.random.randn()  # a cached Gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save(ckpt.rng_state(), path)
    want = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    ckpt.set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert got[:3] == want[:3] and torch.equal(got[3], want[3])


def test_a_hostile_cache_record_is_treated_as_corrupt_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "record.pt"
    torch.save({"format": 1, "key": "k", "sha256": "", "payload": Hostile(marker)}, path)
    with pytest.raises(ckpt.CorruptCacheError):
        ckpt.load_cache_record(path, 1, "k")
    assert not marker.exists()


# Loaders allowed to unpickle more than weights: each reads only a file whose sha256 is pinned in the code.
PINNED_UNPICKLERS = {"metrics/t2m_evaluator.py": 2}


def test_no_loader_unpickles_an_unchecked_file():
    """A static guard: torch.load without weights_only=True, pickle.load or allow_pickle=True anywhere in
    the package is a loader that could run a file's code."""
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True")
    found: dict[str, int] = {}
    for source in sorted(PACKAGE.rglob("*.py")):
        rel = source.relative_to(PACKAGE).as_posix()
        if rel.startswith(("tests/", ".venv/")):
            continue
        hits = len(pattern.findall(source.read_text()))
        loads = re.findall(r"torch\.load\((.*)", source.read_text())
        hits += sum("weights_only=True" not in call for call in loads)
        if hits:
            found[rel] = hits
    assert found == PINNED_UNPICKLERS


def test_clap_checkpoint_loads_weights_only_with_its_numpy_scalars_and_refuses_code(tmp_path, monkeypatch):
    from layersync.metrics import clap

    monkeypatch.setattr(clap, "ClapAudioEncoder", lambda config: torch.nn.ModuleDict(
        {"audio_projection": torch.nn.Linear(1, 1)}))
    state = {"audio_projection.weight": torch.ones(1, 1), "audio_projection.bias": torch.zeros(1)}
    torch.save({"epoch": np.int64(15), "acc": np.float64(0.9), "state_dict": state}, tmp_path / "good.pt")
    model = clap.load_clap_audio(tmp_path / "good.pt", verify=False)
    assert model.audio_projection.weight.item() == 1.0
    marker = tmp_path / "pwned"
    torch.save({"epoch": Hostile(marker), "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        clap.load_clap_audio(tmp_path / "bad.pt", verify=False)
    assert not marker.exists()
