"""The video recipe end to end at toy size (embedded balls, then CLEVRER-like MP4s through SD-VAE latents),
`layersync video sample|evaluate`, the 3-D token layout, and bad input as one clear line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.video.media import read_mp4

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "video_sit.py"
TOY = ["--model.depth=4", "--model.hidden_size=32", "--model.num_heads=2", "--align.layersync=2:3",
       "--train.total_steps=12", "--train.global_batch_size=8", "--train.ckpt_every=6",
       "--train.sample_every=6", "--train.eval_every=6", "--train.log_every=3", "--sample.steps=2",
       "--eval_clips=70", "--sample_clips=2", "--balls.train_clips=128", "--balls.test_clips=96"]


def recipe_main(argv):
    """Run the recipe's main in-process, as its __main__ does (one-line errors through run_main)."""
    spec = importlib.util.spec_from_file_location("video_sit_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from layersync.core.cli_util import run_main

    result = {}
    run_main(lambda: result.update(module.main(argv) or {}), prog="recipes/video_sit.py")
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "PYTHONWARNINGS": "ignore", "LAYERSYNC_CACHE": str(cache), "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    run_dir = tmp_path_factory.mktemp("video_sit") / "run"
    proc = subprocess.run([sys.executable, str(RECIPE), f"--run_dir={run_dir}", *TOY], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fd_balls = " in proc.stdout and "not I3D FVD" in proc.stdout
    return run_dir


def test_run_directory_holds_mp4s_strips_logs_and_the_distance(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["patch"] == [2, 4, 4] and config["align"]["layersync"] == "2:3"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000006.pt", "step_00000012.pt"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert "layersync/cos_2_3" in rows[-1] and "flow_loss" in rows[-1]
    for step in (6, 12):
        folder = run_dir / "samples" / f"step_{step:08d}"
        assert sorted(p.name for p in folder.iterdir()) == ["clip_000.mp4", "clip_000.png", "clip_001.mp4",
                                                           "clip_001.png", "strips.png"]
    frames = read_mp4(run_dir / "samples" / "step_00000012" / "clip_001.mp4")
    assert frames.shape == (8, 64, 64, 3)  # 8 frames of 16×16, upscaled 4×
    assert (run_dir / "samples_ema.png").stat().st_size > 200 and (run_dir / "curves.png").exists()
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == 12 and result["n_samples"] == 70 and result["nfe_per_sample"] == 3
    assert result["fd_balls"] > result["fd_balls_train_clips"] > 0
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [6, 12]


def test_rerunning_the_same_command_resumes(run_dir, env, capsys, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", env["LAYERSYNC_CACHE"])
    result = recipe_main([f"--run_dir={run_dir}", *TOY])
    captured = capsys.readouterr()
    assert "resumed from step 12" in captured.out + captured.err
    first = json.loads((run_dir / "eval.json").read_text())["fd_balls"]  # same EMA weights, same seeds
    assert result["step"] == 12 and result["fd_balls"] == pytest.approx(first, rel=1e-4)


def test_layersync_video_sample_then_evaluate(run_dir, env, tmp_path, capsys, monkeypatch):
    from layersync.cli import main as layersync

    monkeypatch.setenv("LAYERSYNC_CACHE", env["LAYERSYNC_CACHE"])  # the encoder the run trained is reused
    out = tmp_path / "samples"
    layersync(["video", "sample", "--run", str(run_dir), "--num", "70", "--write", "2", "--steps", "1",
               "--codec", "mpeg4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "70 clips" in printed and "(mpeg4)" in printed
    assert read_mp4(out / "clip_001.mp4").shape == (8, 64, 64, 3)
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (70, 8, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    layersync(["video", "evaluate", str(out / "samples.npz"), "--run", str(run_dir)])
    result = json.loads((out / "samples.eval.json").read_text())
    assert result["n_samples"] == 70 and "fd_balls" in capsys.readouterr().out and result["fd_balls"] > 0
    with pytest.raises(SystemExit) as exit_info:
        layersync(["video", "evaluate", str(out / "samples.npz"), "--metric", "fvd"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--metric=fvd needs --reference" in err


def test_video_model_uses_3d_patches_and_layersync_starts_at_minus_one():
    from layersync.core.recipe import AlignSpec, build_regularizer
    from layersync.core.regularizers import AlignContext
    from layersync.video.run import PRESETS, VideoRecipe, build_video_model
    from layersync.core.config import apply_overrides

    cfg = apply_overrides(VideoRecipe(), PRESETS["balls"])
    model = build_video_model(cfg, cfg.balls.shape)
    assert model.config.grid == (4, 4, 4) and model.num_tokens == 64 and model.config.cond_kind == "none"
    reg = build_regularizer(AlignSpec(layersync="3:6"), model)
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 8, 16, 16), torch.rand(2)
    out = model(x, t, None, capture=reg.blocks)
    assert out.hidden[3].shape == (2, 64, 96) and out.pred.shape == x.shape
    loss, logs = reg(AlignContext(hidden=out.hidden, x=x, t=t))
    assert logs["layersync/cos_3_6"].item() == pytest.approx(1.0)  # adaLN-Zero: every block is the identity
    assert loss.item() == pytest.approx(-0.2)


@pytest.mark.parametrize("argv, expected", [
    (["--preset=clevrer-xxl"], "unknown preset 'clevrer-xxl'"),
    (["--patch=3,4,4"], "not divisible by patch_size (3, 4, 4)"),
    (["--model.patch_size=2"], "set --patch=t,h,w instead"),
    (["--eval_clips=10"], "fd_balls needs at least 65 clips"),
    (["--data=/no/such/clevrer", "--eval_clips=0"], "no such folder"),
    (["--preset=clevrer-xl", "--eval_clips=0"], "give --data=<CLEVRER root>"),
    (["--data=/no/such/clevrer"], "needs --fvd_reference"),
    (["--encoding=sd_vae"], "embedded balls clips are trained in pixel space"),
    (["--codec=h265"], "is not one of auto, libx264, mpeg4"),
])
def test_recipe_bad_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main([f"--run_dir={tmp_path}", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err


def test_clevrer_through_sd_vae_latents_trains_and_writes_decoded_mp4s(tmp_path, monkeypatch):
    """Real-data path at toy size: tiny MP4 tree (one truncated) → prepared latents → train → decoded MP4s."""
    from diffusers import AutoencoderKL

    from layersync.video.clevrer import video_path
    from layersync.video.media import write_mp4

    rng = np.random.default_rng(0)
    for vid in range(3):
        frames = rng.integers(0, 256, size=(12, 24, 36, 3), dtype=np.uint8)
        write_mp4(frames, video_path(tmp_path / "clevrer", vid))
    cut = video_path(tmp_path / "clevrer", 2)
    cut.write_bytes(cut.read_bytes()[:300])
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, sample_size=16).save_pretrained(tmp_path / "vae")
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    recipe_main([f"--run_dir={run}", f"--data={tmp_path / 'clevrer'}", "--encoding=sd_vae",
                 f"--vae={tmp_path / 'vae'}",
                 "--clip.num_frames=4", "--clip.frame_stride=2", "--clip.size=16", "--patch=2,2,2",
                 "--model.depth=5", "--model.hidden_size=24", "--model.num_heads=2", "--align.layersync=2:3",
                 "--train.total_steps=2", "--train.global_batch_size=2", "--train.log_every=1",
                 "--sample.steps=1", "--sample_clips=1", "--eval_clips=0", "--upscale=2"])
    manifest = json.loads((run / "data" / "train_sd_vae" / "manifest.json").read_text())
    assert manifest["n_clips"] == 2 and manifest["clip_shape"] == [4, 4, 8, 8]
    assert [Path(s["path"]).name for s in manifest["skipped"]] == ["video_00002.mp4"]
    assert read_mp4(run / "samples" / "step_00000002" / "clip_000.mp4").shape == (4, 32, 32, 3)
    assert not (run / "eval.json").exists()
    from layersync.cli import main as layersync
    from layersync.core.weights import sha256sum

    pinned = json.loads((run / "config.json").read_text())["vae_sha256"]
    assert pinned == sha256sum(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    layersync(["video", "sample", "--run", str(run), "--num", "3", "--write", "1", "--steps", "1"])
    with np.load(run / "samples_cli" / "samples.npz") as data:
        assert data["arr_0"].shape == (3, 4, 16, 16, 3)  # latents decoded by the pinned VAE
