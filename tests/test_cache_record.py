"""The shared cache record of trained evaluators: {format, key, sha256, payload}, written and verified in core."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from layersync.core.checkpoint import (CheckpointError, CorruptCacheError, config_cache_key, default_cache_dir,
                                       load_cache_record, save_cache_record)

PAYLOAD = bytes(range(256)) * 8
KEY = "0123456789abcdef"


@pytest.fixture
def record(tmp_path):
    path = tmp_path / "sub" / "model-0123456789abcdef.pt"
    save_cache_record(path, 1, KEY, PAYLOAD)
    return path


def test_round_trip_leaves_one_readable_file(record):
    assert load_cache_record(record, 1, KEY) == PAYLOAD
    assert [p.name for p in record.parent.iterdir()] == [record.name]  # no temporary file left behind
    assert record.stat().st_mode & 0o777 == 0o644


def _tamper(path):
    """A readable record whose payload no longer matches its sha256."""
    torch.save({**torch.load(path, weights_only=True), "payload": PAYLOAD[::-1]}, path)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _garble(path):
    path.write_bytes(b"not a torch file")


def _not_a_dict(path):
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize(("damage", "message"), [(_tamper, "sha256 mismatch"), (_truncate, "unreadable"),
                                                 (_garble, "unreadable"), (_not_a_dict, "format 1"),
                                                 (lambda p: p.unlink(), "unreadable")])
def test_a_damaged_or_missing_file_raises_corrupt_cache_error(record, damage, message):
    damage(record)
    with pytest.raises(CorruptCacheError, match=message):
        load_cache_record(record, 1, KEY)


def test_another_key_or_format_raises_corrupt_cache_error(record):
    with pytest.raises(CorruptCacheError, match=f"key {KEY} does not match fedcba9876543210"):
        load_cache_record(record, 1, "fedcba9876543210")
    with pytest.raises(CorruptCacheError, match="format 2"):
        load_cache_record(record, 2, KEY)
    assert issubclass(CorruptCacheError, CheckpointError)


def test_cache_dir_is_the_environment_variable_or_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("LAYERSYNC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "layersync"


@dataclass(frozen=True)
class _Config:
    seed: int = 0
    width: int = 8


def test_config_cache_key_depends_on_config_format_and_sources(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    key = config_cache_key(_Config(), 1, [source])
    assert len(key) == 16 and key == config_cache_key(_Config(), 1, [source])
    assert key != config_cache_key(_Config(width=9), 1, [source])
    assert key != config_cache_key(_Config(), 2, [source])
    source.write_text("x = 2\n")
    assert key != config_cache_key(_Config(), 1, [source])
