"""`--align.layersync=auto` in every labelled recipe, then `layersync <domain> analyze --against` (toy)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from layersync.cli import main as layersync_main
from layersync.core.cli_util import run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.depth=5", "--model.num_heads=2", "--align.layersync=auto", "--align.layersync_auto_warmup=2",
        "--train.total_steps=3", "--train.global_batch_size=8", "--train.log_every=1", "--train.ckpt_every=3"]
DOMAINS = {
    "image": ("image_sit.py", ["--model.hidden_size=32", "--eval_per_class=0", "--grid_per_class=1",
                               "--sample.steps=2"]),
    "audio": ("audio_sit.py", ["--model.hidden_size=96", "--data.synth_per_class=2", "--samples=2",
                               "--sample.steps=2", "--griffin_lim_iterations=2", "--fad_embedding=none"]),
    "video": ("video_sit.py", ["--model.hidden_size=32", "--eval_clips=0", "--sample_clips=1",
                               "--sample.steps=2", "--balls.train_clips=64", "--balls.test_clips=48"]),
}


def recipe(domain: str, run_dir: Path) -> None:
    script, args = DOMAINS[domain]
    spec = importlib.util.spec_from_file_location(f"{domain}_recipe_17", ROOT / "recipes" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_main(lambda: module.main([f"--run_dir={run_dir}", *TINY, *args]), prog=script)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_auto_pair_is_recorded_and_analyze_writes_both_runs(domain, single_thread, tmp_path, capsys):
    run = tmp_path / "run"
    recipe(domain, run)
    record = json.loads((run / "layersync_auto.json").read_text())
    # (2, 4) is the only pair the rules allow in 5 blocks (teacher ≤ 4, student ≥ 2, 2 apart).
    assert (record["student"], record["teacher"], record["chosen_at_step"]) == (2, 4, 2)
    assert "teacher ≤ 4" in record["reason"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [("layersync/cos_2_4" in row) for row in log if "loss" in row] == [False, False, True]

    layersync_main([domain, "analyze", "--run", str(run), "--against", str(run), "--t", "0.5"])
    out = json.loads((run / "analysis.json").read_text())
    assert out["blocks"] == [1, 2, 3, 4, 5] and np.shape(out["probe_accuracy"]) == (1, 5)
    assert out["step"] == 3 and Path(out["checkpoint"]).name == "step_00000003.pt"  # what was analysed
    assert out["against"]["probe_accuracy"] == out["probe_accuracy"]  # the same run, analysed alike
    assert len(out["pruning"]["skip"]) == 5
    assert all((run / f"analysis_{k}.png").stat().st_size > 0 for k in ("cka", "cosine", "probes"))
    assert "linear-probe accuracy" in capsys.readouterr().out
