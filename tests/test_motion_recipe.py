"""The motion recipe end to end at toy size: train → MP4s and T2M numbers → `layersync motion
sample|evaluate`; bad input is one clear line. (Resuming is the core trainer's, tested there.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layersync.motion import synthetic as S

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "motion_mdm.py"
TOY = ["--max_frames=48", "--mdm.depth=3", "--mdm.hidden_size=32", "--mdm.ff_size=64",
       "--align.layersync=2:3",
       "--train.total_steps=6", "--train.global_batch_size=8", "--train.log_every=3", "--train.ckpt_every=3",
       "--train.sample_every=3", "--train.eval_every=0", "--eval.num_texts=32", "--eval.diversity_pairs=16",
       "--eval.replications=2", "--eval.mm_texts=2", "--eval.mm_repeats=3", "--eval.mm_pairs=2",
       "--embedded_evaluator.epochs=1", "--embedded_evaluator.embed_dim=8", "--sample.steps=2",
       "--sample_prompts=1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "PYTHONWARNINGS": "ignore", "LAYERSYNC_CACHE": str(cache), "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return S.write_dataset(tmp_path_factory.mktemp("motion") / "set", seed=0,
                           sizes={"train": 13, "val": 1, "test": 16}, max_frames=48)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env, data) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("motion_mdm") / "run"
    proc = subprocess.run([sys.executable, str(RECIPE), f"--run_dir={run_dir}", f"--data={data}", *TOY],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_run_directory_holds_checkpoints_logs_mp4s_and_t2m_numbers(run_dir):
    run_dir, stdout = run_dir
    config = json.loads((run_dir / "config.json").read_text())
    assert config["backbone"] == "mdm" and config["path"] == {"path": "vp_cosine", "prediction": "x0",
                                                               "time_sampling": "uniform", "t_min": 0.0}
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003.pt", "step_00000006.pt"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and "layersync/cos_2_3" in rows[-1]
    assert len(list((run_dir / "samples" / "ema_step_00000003").glob("*.mp4"))) == 1
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 6 and result["replications"] == 2 and result["protocol"]["num_texts"] == 32
    for key in ("r_precision_top1", "r_precision_top3", "fid", "matching_score", "diversity",
                "multimodality"):
        assert np.isfinite(result[key]) and result[f"{key}_ci95"] >= 0
    assert 0 <= result["r_precision_top1"] <= result["r_precision_top3"] <= 1
    assert "all-MiniLM-L6-v2" in result["text_encoder"] and "embedded text-motion" in result["evaluator"]
    assert [e["step"] for e in map(json.loads, (run_dir / "evals.jsonl").read_text().splitlines())] == [6]
    assert "text encoder: all-MiniLM-L6-v2" in stdout and "evaluator:" in stdout
    assert "r_precision_top1" in stdout


def layersync(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layersync.cli", "motion", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_layersync_motion_sample_writes_features_joints_and_an_mp4(run_dir, env, tmp_path, capsys):
    import av

    out = tmp_path / "samples"
    proc = layersync(env, "sample", "a person walks forward and waves", "--run", str(run_dir[0]),
                     "--seconds", "2", "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = out / "00_a_person_walks_forward_and_waves"
    assert np.load(f"{stem}_features.npy").shape == (40, 263)
    assert np.load(f"{stem}_joints.npy").shape == (40, 22, 3)
    with av.open(f"{stem}.mp4") as container:
        assert sum(1 for _ in container.decode(video=0)) == 40
    assert "no body mesh" in proc.stdout and "all-MiniLM-L6-v2" in proc.stdout
    from layersync.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["motion", "sample", "x", "--run", str(run_dir[0]), "--seconds", "9"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "180 frames; this run makes 1 to 48" in err


def test_layersync_motion_evaluate_prints_the_protocol_table(run_dir, env, tmp_path):
    target = tmp_path / "eval.json"
    proc = layersync(env, "evaluate", "--run", str(run_dir[0]), "--replications", "1", "--mm-texts", "0",
                     "--steps", "2", "--out", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(target.read_text())
    assert result["replications"] == 1 and result["sample_steps"] == 2 and "multimodality" not in result
    assert "r_precision_top3" in proc.stdout and "[" in proc.stdout and "embedded text-motion" in proc.stdout


def recipe_main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("motion_mdm_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from layersync.core.cli_util import run_main

    run_main(lambda: module.main(argv), prog="recipes/motion_mdm.py")


@pytest.mark.parametrize("argv, expected", [
    (["--preset=kit-ml"], "unknown preset 'kit-ml'"),
    (["--path.path=linear"], "needs path.path=vp_cosine"),
    (["--align.layersync=3:9"], "1 ≤ student < teacher ≤ 8"),
    (["--backbone=gru"], "is not one of mdm, dit"),
    (["--data=/no/such/HumanML3D"], "no such HumanML3D folder"),
    (["--preset=humanml3d", "--data=."], "needs --text_encoder_path"),
])
def test_recipe_bad_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main([f"--run_dir={tmp_path}", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err


def test_dry_run_prints_the_paper_preset(capsys, tmp_path):
    recipe_main([f"--run_dir={tmp_path}/run", "--dry-run", "--preset=humanml3d"])
    out = capsys.readouterr().out
    config = json.loads(out[: out.rindex("}") + 1])
    assert config["train"]["total_steps"] == 600_000 and config["mdm"]["hidden_size"] == 512
    assert config["sample"] == {"sampler": "ddpm", "steps": 1000, "eta": 0.0, "cfg_scale": 2.5}
    assert "17.88M parameters" in out and not (tmp_path / "run").exists()


def test_missing_t2m_evaluator_fails_at_start_up_not_after_training(capsys, tmp_path, data, monkeypatch):
    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        recipe_main([f"--run_dir={tmp_path}/run", "--preset=humanml3d", "--text_encoder=minilm", f"--data={data}",
                     "--max_frames=48"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finest.tar" in err[0] and not (tmp_path / "run" / "checkpoints").exists()
