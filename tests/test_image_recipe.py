"""The default path end to end at toy size: recipe → run directory → resume → `layersync image sample|evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--model.depth=4", "--model.hidden_size=32", "--model.num_heads=2", "--align.layersync=2:3",
       "--train.total_steps=20", "--train.global_batch_size=16", "--train.ckpt_every=10",
       "--train.sample_every=10", "--train.eval_every=10", "--train.log_every=5",
       "--eval_per_class=7", "--grid_per_class=3", "--sample.steps=3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "PYTHONWARNINGS": "ignore", "LAYERSYNC_CACHE": str(cache), "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    run_dir = tmp_path_factory.mktemp("image_sit") / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={run_dir}", *TOY],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_a_second_process_with_the_same_seed_trains_the_same_weights(run_dir, env, tmp_path):
    """Initial weights follow --train.seed, not the RNG a fresh process starts with; training is bit-exact."""
    again = tmp_path / "again"
    shorter = [a for a in TOY if not a.startswith(("--train.total_steps", "--train.sample_every",
                                                   "--train.eval_every"))]
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={again}", *shorter,
                           "--train.total_steps=10", "--train.sample_every=0", "--train.eval_every=0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch

    first, second = (torch.load(d / "checkpoints" / "step_00000010.pt", weights_only=True)
                     for d in (run_dir, again))
    for key in ("model", "ema"):
        for name, value in first[key].items():
            assert torch.equal(value, second[key][name]), (key, name)


def test_run_directory_holds_everything_the_readme_promises(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["total_steps"] == 20 and config["align"]["layersync"] == "2:3"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000010.pt",
                                                                          "step_00000020.pt"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for key in ("loss", "flow_loss", "layersync/loss", "layersync/cos_2_3", "lr", "grad_norm", "samples_per_s",
                "peak_mem_gb"):
        assert key in rows[-1]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("samples_ema.png", "curves.png", "samples/ema_step_00000010.png"):
        assert (run_dir / png).stat().st_size > 200
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 20 and result["n_samples"] == 70
    assert "not Inception FID" in result["metric"]
    assert result["fd_digits"] > 0 and 0 <= result["classifier_accuracy"] <= 1
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [10, 20]


def test_rerunning_the_same_command_resumes_instead_of_retraining(run_dir, env):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={run_dir}", *TOY,
                           "--train.eval_every=0", "--eval_per_class=7"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 20" in proc.stdout + proc.stderr


def test_layersync_image_sample_then_evaluate(run_dir, env, tmp_path):
    out = tmp_path / "samples"
    sample = subprocess.run([sys.executable, "-m", "layersync.cli", "image", "sample", "--run", str(run_dir),
                             "--per-class", "7", "--steps", "2", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert (out / "grid.png").exists() and "70 samples" in sample.stdout
    import numpy as np

    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (70, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert list(data["arr_1"][:8]) == [0] * 7 + [1]
    evaluate = subprocess.run([sys.executable, "-m", "layersync.cli", "image", "evaluate",
                               str(out / "samples.npz")], capture_output=True, text=True, env=env, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads((out / "samples.eval.json").read_text())
    assert result["n_samples"] == 70 and "fd_digits" in evaluate.stdout


def test_eval_reports_model_evaluations_per_sample(run_dir):
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["sampler"] == "heun" and result["nfe_per_sample"] == 2 * 3 - 1  # Heun, 3 steps, Euler last


@pytest.mark.parametrize("argv, message", [
    (["--eval_per_class=3"], "eval_per_class=3 gives 30 samples, but fd_digits needs at least 65; use "
                             "--eval_per_class=7 or more, or 0 for no evaluation"),
    (["--grid_per_class=0"], "grid_per_class=0 is out of range: must be ≥ 1"),
])
def test_evaluation_sizes_that_cannot_work_are_refused_before_training(argv, message, tmp_path, env):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={tmp_path / 'r'}",
                           *TOY, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_eval_per_class_zero_trains_without_evaluation(tmp_path, env):
    run = tmp_path / "r"
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={run}", *TOY,
                           "--train.total_steps=2", "--train.eval_every=0", "--train.sample_every=0",
                           "--eval_per_class=0"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no evaluation: eval_per_class=0" in proc.stdout
    assert (run / "samples_ema.png").exists() and not (run / "eval.json").exists()

