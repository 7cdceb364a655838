"""SIGINT / SIGTERM during training: a checkpoint at the step it stopped, exit status 128 + signal (130, 143),
one line and no traceback, and the rerun continues exactly as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("train_tiny.py")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
STEPS = "12"


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def stop_mid_run(run_dir: Path, sig: int) -> tuple[subprocess.CompletedProcess, int]:
    """Start a slow 12-step run, send `sig` once 6 steps are logged; (finished process, last logged step)."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "--steps", STEPS,
                             "--step-delay", "0.4"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = run_dir / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 6):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), max(losses(run_dir))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_current_step_and_exits_with_the_conventional_status(tmp_path, sig, code):
    proc, step = stop_mid_run(tmp_path, sig)
    assert proc.returncode == code
    assert 6 <= step < int(STEPS), "the signal must land mid-run"
    assert (tmp_path / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())  # no temp file left
    assert "Traceback" not in proc.stderr + proc.stdout
    name = signal.Signals(sig).name
    assert f"stopped by {name} at step {step}" in proc.stdout + proc.stderr


def test_the_rerun_after_sigterm_continues_with_identical_losses(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, str(SCRIPT), str(reference), "--steps", STEPS], env=ENV, check=True,
                   capture_output=True)
    stopped = tmp_path / "stopped"
    _, step = stop_mid_run(stopped, signal.SIGTERM)
    out = subprocess.run([sys.executable, str(SCRIPT), str(stopped), "--steps", STEPS], env=ENV,
                         capture_output=True, text=True, check=True)
    assert f"resumed from step {step}" in out.stdout + out.stderr
    assert losses(stopped) == losses(reference)


def test_a_repeated_sigterm_is_one_request_and_a_second_ctrl_c_stops_at_once():
    """Slurm signals every process and torchrun forwards SIGTERM again: that must not kill the checkpoint."""
    from layersync.core.stopping import StopSignals

    def deliver(sig: int) -> None:
        # To this (main) thread, then bytecode until Python has run the handler.
        signal.raise_signal(sig)
        for _ in range(10_000):
            pass

    # Ctrl-C as an interactive shell gives it. A command started in the background by a non-interactive shell
    # (`cmd &`, as CI may run the suite) starts with SIGINT ignored, and Python keeps SIG_IGN.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM)
        with StopSignals() as signals:
            for _ in range(2):
                deliver(signal.SIGTERM)
            assert signals.signum == signal.SIGTERM  # still running: the checkpoint can be written
            with pytest.raises(KeyboardInterrupt):
                deliver(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
