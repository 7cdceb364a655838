"""core/cached.py: a model trained once is cached under its key, reused, and rebuilt when its file is bad."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

import pytest
import torch

from layersync.core import cached


@dataclass(frozen=True)
class _Config:
    seed: int = 0
    width: int = 4


class _Builder:
    """Counts builds; the 'model' is a seeded tensor, its payload a dict of a tensor and a plain value."""

    def __init__(self):
        self.calls = 0

    def build(self) -> torch.Tensor:
        self.calls += 1
        return torch.randn(4, generator=torch.Generator().manual_seed(self.calls))

    def load(self, cache_dir) -> torch.Tensor:
        return cached.load_or_build("toy", "0123456789abcdef", 1, self.build,
                                    lambda w: {"weight": w, "width": len(w)}, _from_payload, cache_dir)


def _from_payload(state: dict) -> torch.Tensor:
    assert state["width"] == 4
    return state["weight"]


def test_a_built_model_is_cached_then_reused_without_rebuilding(tmp_path):
    builder = _Builder()
    first = builder.load(tmp_path)
    assert builder.calls == 1
    assert [p.name for p in tmp_path.iterdir()] == ["toy-0123456789abcdef.pt"]  # no temporary file left
    again = builder.load(tmp_path)
    assert builder.calls == 1 and torch.equal(again, first)


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(p.read_bytes()[:-100]),
                                    lambda p: p.write_bytes(b"not a torch file")])
def test_a_corrupt_file_is_logged_rebuilt_and_replaced(tmp_path, caplog, damage):
    builder = _Builder()
    first = builder.load(tmp_path)
    path = tmp_path / "toy-0123456789abcdef.pt"
    damage(path)
    with caplog.at_level(logging.WARNING, logger="layersync"):
        rebuilt = builder.load(tmp_path)
    assert builder.calls == 2 and not torch.equal(rebuilt, first)  # the second build (seed 2), not the file
    assert f"cache {path} is corrupt or unusable (unreadable" in caplog.text
    assert "retraining it" in caplog.text
    assert torch.equal(builder.load(tmp_path), rebuilt) and builder.calls == 2  # the file was replaced


class _Opaque:
    """An object a weights-only load refuses to unpickle."""


def test_payloads_load_weights_only_and_a_refused_one_raises(tmp_path):
    def load():
        return cached.load_or_build("opaque", "0123456789abcdef", 1, _Opaque, lambda obj: {"obj": obj},
                                    lambda state: state["obj"], tmp_path)

    assert isinstance(load(), _Opaque)  # built, and saved with torch.save
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load()  # an intact record whose payload is not tensors and plain values is a bug: no silent rebuild


def test_the_key_covers_config_format_sources_extra_data_and_the_shared_module(tmp_path, monkeypatch):
    source = tmp_path / "domain.py"
    source.write_text("x = 1\n")
    key = cached.cache_key(_Config(), 1, [source], "data=a")
    assert len(key) == 16 and key == cached.cache_key(_Config(), 1, [source], "data=a")
    assert key != cached.cache_key(_Config(), 1, [source], "data=b")
    assert key != cached.cache_key(_Config(), 1, [source])
    assert key != cached.cache_key(_Config(width=5), 1, [source], "data=a")
    assert key != cached.cache_key(_Config(), 2, [source], "data=a")
    source.write_text("x = 2\n")
    assert key != cached.cache_key(_Config(), 1, [source], "data=a")
    source.write_text("x = 1\n")
    shared = tmp_path / "cached.py"  # a change in the shared flow (it lays out the payload) retrains too
    shared.write_bytes(open(cached.__file__, "rb").read())
    monkeypatch.setattr(cached, "__file__", str(shared))
    assert cached.cache_key(_Config(), 1, [source], "data=a") == key
    shared.write_bytes(shared.read_bytes() + b"# changed\n")
    assert cached.cache_key(_Config(), 1, [source], "data=a") != key
