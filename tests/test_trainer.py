"""Trainer contract: exact resume after SIGKILL (mid-run and mid-checkpoint-write), config checks,
same losses for any process count or accumulation, EMA, logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_tiny.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def run(run_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run_dir), *args], env=ENV, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_tiny failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def step_losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss; a resumed run re-logs steps after its checkpoint, the last row of a step wins."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["flow_loss"], r["layersync/loss"], r["grad_norm"]) for r in rows}


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    """An uninterrupted 24-step run."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_dir) -> dict[int, float]:
    return step_losses(reference_dir)


def test_uninterrupted_run_logs_every_step_with_all_terms(reference):
    assert sorted(reference) == list(range(1, 25))
    loss, flow, ls, _ = reference[1]
    assert loss == pytest.approx(flow + ls, rel=1e-5)  # total = flow + λ·LayerSync, λ inside ls
    assert -0.5 <= ls < 0  # λ 0.5 × (−cos)


def test_sigkill_mid_run_resumes_with_identical_per_step_losses(tmp_path, reference):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "--step-delay", "0.3"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 13:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(step_losses(tmp_path))
    assert 13 <= killed_at < 24, "the kill must land mid-run"
    assert (tmp_path / "checkpoints" / "step_00000010.pt").exists()
    out = run(tmp_path)
    assert "resumed from step 10" in out.stderr + out.stdout
    assert step_losses(tmp_path) == reference  # exactly equal, every term, every step


def test_sigkill_mid_checkpoint_write_keeps_last_good_and_resumes_exactly(tmp_path, reference):
    proc = run(tmp_path, "--kill-in-save-at", "15", check=False)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "step_00000015.pt" not in names and "step_00000010.pt" in names
    assert any(n.startswith(".step_00000015.pt.tmp") for n in names)  # the half-written file
    out = run(tmp_path)
    assert "resumed from step 10" in out.stderr + out.stdout
    assert step_losses(tmp_path) == reference


def test_checkpoint_from_another_config_is_refused_with_the_difference(tmp_path):
    run(tmp_path, "--steps", "5")
    proc = run(tmp_path, "--steps", "8", "--lr", "0.01", check=False)
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "train.lr" in proc.stderr


def test_changing_only_total_steps_extends_the_run(tmp_path, reference):
    run(tmp_path, "--steps", "10")
    run(tmp_path, "--steps", "24")
    assert step_losses(tmp_path) == reference


def test_gradient_accumulation_matches_one_big_batch(tmp_path, reference):
    run(tmp_path, "--steps", "4", "--accum", "2")
    accum = step_losses(tmp_path)
    for step in range(1, 5):
        assert accum[step] == pytest.approx(reference[step], rel=2e-4, abs=1e-6)


def test_two_processes_train_with_the_same_global_batch_as_one(tmp_path, reference):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher must be installed beside python"
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(tmp_path),
                           "--steps", "4"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on 2 process(es) (MULTI_CPU" in proc.stdout + proc.stderr
    two = step_losses(tmp_path)
    for step in range(1, 5):  # gloo all-reduce of gradients: equal up to float summation order
        assert two[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6)


def test_ema_update_is_the_exponential_average():
    from layersync.core.ema import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_index_stream_is_a_permutation_per_epoch_and_replays():
    from layersync.core.trainer import IndexStream

    s = IndexStream(10, seed=1)
    first = s.take(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(IndexStream(10, seed=1).take(5, 10), torch.cat([first[5:], s.take(10, 5)]))
    assert not torch.equal(s.take(10, 10), first)  # a new permutation each epoch


def test_run_leaves_loss_plot_tensorboard_and_prunes_old_checkpoints(reference_dir):
    assert (reference_dir / "curves.png").stat().st_size > 1000
    assert list((reference_dir / "tensorboard").glob("events.out.tfevents.*"))
    names = sorted(p.name for p in (reference_dir / "checkpoints").iterdir())
    assert names == ["step_00000020.pt", "step_00000024.pt"]  # keep_checkpoints=2


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "multi_node.yaml", "cpu_2proc.yaml"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / name))
    assert config.num_processes >= 2 and config.mixed_precision in ("bf16", "no")
