"""Non-finite guard: a step with a non-finite loss or gradient norm changes nothing, is counted and logged;
K in a row stop the run with one line naming its last good checkpoint; no checkpoint holds non-finite weights."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("tiny_trainer", Path(__file__).with_name("tiny_trainer.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

SCRIPT = Path(__file__).with_name("train_tiny.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("explode_at, good", [(6, "step_00000005.pt"), (4, None)])
def test_exploding_learning_rate_skips_updates_then_stops_naming_the_last_good_checkpoint(tmp_path, explode_at,
                                                                                           good):
    # lr × 1e30 from step index e: step e + 1 applies a finite but huge update, the next 3 overflow. With e = 4
    # the checkpoint of step 5 holds those huge weights: finite, but the cause, so not named as good.
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--explode-at", str(explode_at),
                           "--max-nonfinite", "3"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last, stop = proc.stderr.strip().splitlines()[-1], explode_at + 4
    assert last == (f"train_tiny: error: stopped at step {stop}: 3 consecutive steps with a non-finite loss or "
                    "gradient norm (train.max_nonfinite_steps=3); last good checkpoint: "
                    f"{tmp_path / 'checkpoints' / good if good else 'none'}")
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())}
    assert sorted(rows) == list(range(1, stop + 1))
    assert rows[1]["tflops"] > 0 and rows[1]["mfu"] > 0  # telemetry rides along in every row
    out = proc.stderr + proc.stdout
    assert "attention: " in out and "GFLOP per step per process" in out
    assert [rows[s]["skipped_steps"] for s in range(1, stop + 1)] == [0] * (stop - 3) + [1, 2, 3]
    assert math.isfinite(rows[stop - 3]["loss"])
    assert all(math.isnan(rows[s]["loss"]) for s in range(stop - 2, stop + 1))
    # A checkpoint due inside the streak (step 10) is not written; step 5's holds finite weights.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005.pt"]
    state = torch.load(tmp_path / "checkpoints" / "step_00000005.pt", weights_only=False)
    for key in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in state[key].values() if v.is_floating_point())


def test_a_skipped_step_leaves_weights_optimizer_and_ema_untouched_but_advances_the_schedule(tmp_path):
    trainer = tiny.tiny_trainer(tmp_path, warmup_steps=4)
    trainer.train_step()  # one good step: the optimizer has moments to protect
    weights = [p.detach().clone() for p in trainer.raw_model.parameters()]
    ema = [p.clone() for p in trainer.ema.model.parameters()]
    moments = [s["exp_avg_sq"].clone() for s in trainer.raw_optimizer.state.values()]
    clean = trainer.source.data.x.clone()
    poisoned = trainer.stream.take(trainer.step * 8, 8)[0]  # one item of the next step's batch …
    trainer.source.data.x[poisoned, 0, 0, 0] = float("nan")  # … poisoned: the whole step is skipped
    trainer.prefetch.close()  # drop the batches loaded ahead before the poisoning (core/prefetch.py)
    logs = trainer.train_step()
    assert trainer.guard.skipped == 1 and trainer.guard.consecutive == 1 and math.isnan(logs["loss"].item())
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.raw_model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema, trainer.ema.model.parameters()))
    assert all(torch.equal(a, s["exp_avg_sq"]) for a, s in zip(moments, trainer.raw_optimizer.state.values()))
    assert trainer.scheduler.last_epoch == trainer.step  # the LR schedule follows the step number
    trainer.source.data.x.copy_(clean)
    trainer.prefetch.close()
    trainer.train_step()
    assert trainer.guard.consecutive == 0 and trainer.guard.skipped == 1
    assert not torch.equal(weights[0], next(trainer.raw_model.parameters()))  # updates resume


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from layersync.core.guard import NonFiniteError

    trainer = tiny.tiny_trainer(tmp_path)
    trainer.train_step()
    with torch.no_grad():
        next(trainer.ema.model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match="not writing .*step_00000001.pt.*non-finite"):
        trainer.save()
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("value", [0, -1])
def test_max_nonfinite_steps_below_one_is_refused_at_start_up(tmp_path, value):
    from layersync.core.config import ConfigError

    with pytest.raises(ConfigError, match=rf"max_nonfinite_steps={value} is out of range: must be ≥ 1"):
        tiny.tiny_trainer(tmp_path, max_nonfinite_steps=value)


def test_the_decision_is_summed_over_processes_before_it_is_read():
    """A process whose own loss is finite still skips when another process's is not (the reduction sums)."""
    from layersync.core.guard import NonFiniteGuard

    guard = NonFiniteGuard(2)
    other_process_bad = lambda t: t + 1  # noqa: E731 - stands for an all-reduce where another rank saw a NaN
    assert not guard.check(5, torch.tensor(1.0), torch.tensor(0.5), other_process_bad)
    assert guard.check(6, torch.tensor(1.0), torch.tensor(0.5), lambda t: t)
    assert not guard.check(7, torch.tensor(1.0), torch.tensor(float("inf")), lambda t: t)
    assert not guard.exhausted and guard.streak_start == 7
    assert not guard.check(8, torch.tensor(float("nan")), torch.tensor(0.5), lambda t: t)
    assert guard.exhausted and guard.skipped == 3 and guard.streak_start == 7
