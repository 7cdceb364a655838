"""benchmarks/layersync_study.py: its statistics (interval, steps to a target, speed-up) and its commands."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "layersync_study.py"
spec = importlib.util.spec_from_file_location("layersync_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_interval_is_the_student_t_half_width():
    mean, half = study.ci95(np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]]))
    # t_0.975 with 2 degrees of freedom is 4.302653; the sample standard deviation of 1, 2, 3 is 1.
    assert mean.tolist() == [2.0, 10.0]
    assert half[0] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and half[1] == 0.0


def test_steps_to_reach_interpolates_the_log_metric():
    steps, curve = np.array([100, 200, 300]), np.array([100.0, 10.0, 1.0])
    assert study.steps_to_reach(steps, curve, 10 ** 0.5) == pytest.approx(250.0)
    assert study.steps_to_reach(steps, curve, 1000.0) == 100.0  # reached at the first evaluation
    assert math.isnan(study.steps_to_reach(steps, curve, 0.5))


def test_speedup_is_vanillas_steps_over_the_methods_with_a_bootstrap_interval():
    steps = np.array([100, 200, 300])
    vanilla = np.array([[100.0, 10.0, 1.0]] * 2)
    ahead = np.array([[10.0, 1.0, 0.1]] * 3)  # one evaluation ahead: reaches 1 at step 200, vanilla at 300
    point, lo, hi, share = study.speedup(steps, vanilla, ahead, np.random.default_rng(0), draws=50)
    assert (point, lo, hi, share) == pytest.approx((1.5, 1.5, 1.5, 1.0))
    behind = np.array([[100.0, 50.0, 20.0], [100.0, 10.0, 2.0]])
    point, lo, hi, share = study.speedup(steps, vanilla, behind, np.random.default_rng(0), draws=200)
    assert math.isnan(point) and share == 0.0 and math.isnan(lo)


def test_a_methods_own_flags_win_over_a_common_override():
    args = argparse.Namespace(steps=100, eval_every=50, eval_per_class=5, sample_steps=4,
                              set=["model.depth=12", "align.layersync=4:8"])
    vanilla = study.recipe_command(Path("r"), "vanilla", 1, args)
    layersync = study.recipe_command(Path("r"), "layersync", 1, args)
    assert vanilla[-1] == "--align.layersync=" and "--model.depth=12" in vanilla
    assert layersync[-1] == "--align.layersync=4:8" and "--train.seed=1" in layersync


def test_tables_show_an_interval_only_over_several_seeds():
    def result(seeds):
        entry = {"metric_mean": [40.0, 2.5], "metric_ci95": [12.0, 1.0], "probe_mean": [[0.5, 0.75]],
                 "probe_ci95": [[0.05, 0.01]]}
        return {"metric": "fd_digits", "steps": [750, 2000], "seeds": seeds, "blocks": [1, 2],
                "probe_t": [0.25], "overrides": [], "methods": {"vanilla": entry}}

    three, one = study.markdown(result([0, 1, 2])), study.markdown(result([0]))
    assert "| vanilla | 40 ± 12 | 2.5 ± 1 | 1 (reference) |" in three
    assert "| vanilla | 0.25 | 0.500 ± 0.050 | 0.750 ± 0.010 | 0.625 |" in three
    assert "| vanilla | 40 | 2.5 | 1 (reference) |" in one and "±" not in one.split("\n", 1)[1]
    assert "one seed, no interval" in one


def test_a_longer_study_analyses_the_new_weights(tmp_path):
    assert not study.analysed_at(tmp_path, 1000)  # none yet
    (tmp_path / "analysis.json").write_text(json.dumps({"blocks": [1, 2]}))  # from before analyses named a step
    assert not study.analysed_at(tmp_path, 1000)
    (tmp_path / "analysis.json").write_text(json.dumps({"step": 1000, "blocks": [1, 2]}))
    assert study.analysed_at(tmp_path, 1000) and not study.analysed_at(tmp_path, 2000)
