"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's whole table at tiny size on the CPU, as CI runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # a dozen tiny checks, four of them in subprocesses: ~1-2 min on 2 CPU cores
def test_cpu_smoke_prints_every_row_of_the_table_with_checked_values():
    # The compiled row is left out here (inductor's C++ builds); tests/test_fast_paths.py checks compile.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--no-compile", "--batch", "2"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("gpu_check --cpu-smoke: CPU"):]
    rows = {line.split(" | ")[0].strip(): line.split(" | ")[1:] for line in table.splitlines() if " | " in line}
    assert set(rows) == {"check", "digits default run (wall)", "S/2 train step, fp32, compile off",
                         "layersync/vanilla step time", "sra/vanilla step time", "S/2 Heun-50 sampling, fp32",
                         "S/2 Heun-50 sampling, bf16 autocast", "FID Inception features",
                         "Fréchet distance 256-d vs scipy", "1 vs 2 CPU processes, same losses"}
    assert re.fullmatch(r"\d+ s", rows["digits default run (wall)"][0].strip())
    train = rows["S/2 train step, fp32, compile off"]
    assert re.match(r"[\d.]+ img/s, MFU [\d.]+%, [\d.]+ GB", train[0]) and "TFLOP/step" in train[2]
    assert train[2].startswith("batch 2,")  # --batch reaches the trainer
    assert float(rows["layersync/vanilla step time"][0]) > 0 and float(rows["sra/vanilla step time"][0]) > 0
    assert "99 evaluations" in rows["S/2 Heun-50 sampling, fp32"][2]
    assert any(w in rows["FID Inception features"][2] for w in ("RANDOM weights", "pytorch-fid weights"))
    assert float(rows["Fréchet distance 256-d vs scipy"][0].split()[-1]) <= 1e-6
    assert rows["1 vs 2 CPU processes, same losses"][0].startswith("equal ")
