"""examples/point_clouds.py: a modality built on the public API alone trains, samples, evaluates, reloads."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layersync.core
import layersync.metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "point_clouds.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("point_clouds_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the string annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("point_clouds") / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--preset=quick", f"--run_dir={run_dir}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_the_example_imports_layersync_only_through_core_and_metrics():
    imported = {}
    for node in ast.walk(ast.parse(EXAMPLE.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("layersync"):
            imported.setdefault(node.module, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("layersync") for alias in node.names)
    assert set(imported) == {"layersync.core", "layersync.metrics"}
    assert imported["layersync.core"] <= set(layersync.core.__all__), imported["layersync.core"] - set(
        layersync.core.__all__)
    for name in imported["layersync.core"]:
        assert getattr(layersync.core, name) is not None
    assert all(hasattr(layersync.metrics, name) for name in imported["layersync.metrics"])


def test_every_stable_name_is_exported_and_documented():
    api = (ROOT / "docs" / "api.md").read_text()
    for name in layersync.core.__all__:
        assert hasattr(layersync.core, name), name
        assert f"`{name}`" in api, f"{name} is exported but docs/api.md does not list it"


def test_the_data_source_is_a_pure_function_of_the_indices(example):
    cfg = example.PointCloudRun()
    source = example.ShapeClouds(cfg)
    indices = torch.tensor([5, 0, 9, 2, 7])
    batch = source.batch(indices)
    assert batch.x.shape == (5, 3, cfg.max_points) and batch.cond.tolist() == [1, 0, 1, 2, 3]
    sizes = batch.token_mask.sum(1)
    assert cfg.min_points <= sizes.min() and sizes.max() <= cfg.max_points and len(set(sizes.tolist())) > 1
    assert torch.equal(batch.loss_mask[:, 0].bool(), batch.token_mask)
    assert not batch.x.masked_select(~batch.token_mask[:, None]).any()  # padding is zero
    again = source.batch(indices.flip(0))  # another batch holding the same clouds
    assert torch.equal(again.x.flip(0), batch.x) and torch.equal(again.token_mask.flip(0), batch.token_mask)
    held_out = example.ShapeClouds(cfg, offset=10**9).batch(indices)
    assert not torch.equal(held_out.x, batch.x)


def test_the_vanilla_preset_drops_layersync_only(example, capsys):
    assert example.main(["--preset=vanilla", "--dry-run"]) == {}
    printed = capsys.readouterr().out
    assert "layersync=''" in printed and "run_dir='runs/point_clouds_vanilla'" in printed


def test_the_quick_run_trains_with_layersync_samples_a_picture_and_evaluates(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(-1.0 <= r["layersync/cos_1_2"] <= 1.0 for r in rows) and "flow_loss" in rows[-1]
    (result,) = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert result["step"] == 20 and result["mmd_cd"] > 0
    assert 0 <= result["cov_cd"] <= 1 and 0 <= result["nna_cd"] <= 1
    assert (run_dir / "samples_ema.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_run_loader_rebuilds_the_trained_model_from_its_run_directory(run_dir, example):
    cfg, state, path = layersync.core.load_run_state(run_dir, None, example.PointCloudRun, "point clouds",
                                                     "examples/point_clouds.py")
    assert path.name == "step_00000020.pt" and cfg.max_points == 24 and cfg.layersync == "1:2"
    model = layersync.core.load_weights(example.build_model(cfg), state["ema"], path)
    like = example.ShapeClouds(cfg, offset=10**9).batch(torch.arange(8))
    clouds = example.generate(model, cfg, like, seed=0)
    assert clouds.shape == like.x.shape and torch.isfinite(clouds).all()
    torch.testing.assert_close(example.generate(model, cfg, like, seed=0), clouds, rtol=0, atol=0)
