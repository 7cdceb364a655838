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
    reg = lambda r: next(v for k, v in r.items() if k.endswith("/loss"))  # noqa: E731 - layersync/ or sra/
    return {r["step"]: (r["loss"], r["flow_loss"], reg(r), r["grad_norm"]) for r in rows}


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def launch(config: str, run_dir: Path, *args: str) -> str:
    """train_tiny under `accelerate launch --config_file configs/accelerate/<config>`; returns its output."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher must be installed beside python"
    proc = subprocess.run([accelerate, "launch", "--config_file", str(CONFIGS / config), str(SCRIPT),
                           str(run_dir), *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_close_steps(got: dict, want: dict, steps) -> None:
    for step in steps:  # gloo reductions: equal up to float summation order
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-6), step


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
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())  # removed on resume
    assert step_losses(tmp_path) == reference


def test_checkpoint_from_another_config_is_refused_with_the_difference(tmp_path):
    run(tmp_path, "--steps", "5")
    written = (tmp_path / "config.json").read_text()
    proc = run(tmp_path, "--steps", "8", "--lr", "0.01", check=False)
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "train.lr" in proc.stderr
    assert (tmp_path / "config.json").read_text() == written  # the run's own config is not overwritten


def test_a_recipes_resumable_keys_may_change_on_resume(tmp_path, reference):
    run(tmp_path, "--steps", "5", "--note", "first")
    out = run(tmp_path, "--steps", "8", "--note", "second")
    assert "resumed from step 5" in out.stdout + out.stderr
    assert step_losses(tmp_path) == {s: reference[s] for s in range(1, 9)}


def test_fingerprint_drops_resumable_keys_at_their_own_level_only():
    from layersync.core.trainer import fingerprint

    config = {"train": {"lr": 1e-4, "total_steps": 10, "log_every": 5}, "sample": {"steps": 50},
              "eval_per_class": 3, "model": {"sample": 1}}
    assert fingerprint(config, ("sample", "eval_per_class")) == {"train": {"lr": 1e-4}, "model": {"sample": 1}}
    assert fingerprint(config) == {"train": {"lr": 1e-4}, "sample": {"steps": 50}, "eval_per_class": 3,
                                   "model": {"sample": 1}}


def test_a_field_added_after_a_checkpoint_counts_as_its_default_on_resume():
    from dataclasses import dataclass, field

    from layersync.core.trainer import config_difference

    @dataclass
    class Model:
        depth: int = 8
        new_gate: bool = False  # added after the checkpoint was written

    @dataclass
    class Run:
        lr: float = 1e-3
        model: Model = field(default_factory=Model)
        added: str = ""  # also added later
        resumable_keys = ("added",)

    old = {"lr": 1e-3, "model": {"depth": 8}}  # the checkpoint's fingerprint, written before both fields
    assert config_difference(old, Run()) == ""
    assert config_difference(old, Run(added="x")) == ""  # resumable anyway
    assert config_difference(old, Run(model=Model(new_gate=True))) == "model.new_gate: checkpoint False, now True"
    assert config_difference(old, Run(lr=1e-2)) == "lr: checkpoint 0.001, now 0.01"
    assert config_difference({**old, "gone": 1}, Run()) == "gone: checkpoint 1, now None"

    @dataclass
    class NoDefaults:  # nothing to fill: a missing key is a difference
        lr: float
        depth: int

    assert config_difference({"lr": 1e-3}, NoDefaults(1e-3, 8)) == "depth: checkpoint None, now 8"


def test_recipes_declare_only_their_own_sampling_and_eval_fields_resumable():
    from dataclasses import fields

    from layersync.audio.run import AudioRecipe
    from layersync.image.run import ImageRecipe
    from layersync.motion.run import MotionRecipe
    from layersync.video.run import VideoRecipe

    for recipe in (ImageRecipe, AudioRecipe, VideoRecipe, MotionRecipe):
        names = {f.name for f in fields(recipe)}
        assert recipe.resumable_keys and set(recipe.resumable_keys) <= names, recipe.__name__
        assert not {"train", "model", "path", "align", "data"} & set(recipe.resumable_keys)


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


def test_every_source_trains_alike_on_one_process_and_on_two_with_accumulation(tmp_path):
    """Latent flips and ε with SRA (time gap 0.5) and REPA, mel-store crops with LayerSync, motion crops with
    text dropout: 1 process × 8 and 2 processes × 2 micro-batches × 2 see the same draws
    (tests/train_sources.py)."""
    script = Path(__file__).with_name("train_sources.py")
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    two = subprocess.run([accelerate, "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), str(script),
                          str(tmp_path / "two"), "--accum", "2"], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "micro-batch 2 × 2 accumulation × 2 = 8" in two.stdout + two.stderr
    # Both processes destroyed the gloo group before finalisation (core/process_group.py): one left up made
    # a process abort after training had finished, now and then.
    assert (two.stdout + two.stderr).count("process group at exit: down") == 2, two.stdout[-2000:]
    for name, term in (("latent", "sra/loss"), ("latent", "repa/loss"), ("audio", "layersync/loss"),
                       ("motion", "flow_loss")):
        a, b = ({r["step"]: r for r in map(json.loads, (tmp_path / run / name / "log.jsonl").open())}
                for run in ("one", "two"))
        assert sorted(a) == sorted(b) == [1, 2, 3]
        for step in a:  # gloo all-reduce: equal up to float summation order
            for key in ("loss", "flow_loss", term, "grad_norm"):
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (name, step, key)
            assert 0 <= a[step]["data_wait_frac"] < 1


def test_fsdp_matches_one_process_resumes_exactly_and_moves_between_modes(tmp_path, reference):
    whole, part = tmp_path / "whole", tmp_path / "part"
    out = launch("fsdp_cpu_2proc.yaml", whole, "--steps", "8")
    assert "training on 2 process(es) (FSDP full shard, cpu" in out
    sharded = step_losses(whole)
    assert_close_steps(sharded, reference, range(1, 9))

    launch("fsdp_cpu_2proc.yaml", part, "--steps", "5")
    assert "resumed from step 5" in launch("fsdp_cpu_2proc.yaml", part, "--steps", "8")
    assert step_losses(part) == sharded  # exact resume under FSDP, every term, every step
    a, b = (torch.load(d / "checkpoints" / "step_00000008.pt", weights_only=True) for d in (whole, part))
    for key in ("model", "ema"):  # full tensors, keyed like a one-process run's
        assert a[key].keys() == reference_keys(key)
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][name][k]) for k, v in state.items()), name

    # The FSDP checkpoint resumes in one process, and that one's under FSDP again.
    single = run(part, "--steps", "10")
    assert "resumed from step 8" in single.stdout + single.stderr
    assert "resumed from step 10" in launch("fsdp_cpu_2proc.yaml", part, "--steps", "12")
    assert_close_steps(step_losses(part), reference, range(1, 13))


def reference_keys(key: str) -> set[str]:
    from layersync.core.models import DiT, DiTConfig

    model = DiT(DiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, depth=4, hidden_size=32, num_heads=2,
                          num_classes=3))
    return set(model.state_dict())


def test_fsdp_shards_a_trained_regularizer_and_gathers_the_ema_teacher(tmp_path):
    """SRA: a trainable head sharded beside the model, and an EMA teacher gathered from shards every step."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(one, "--steps", "6", "--reg", "sra", "--accum", "2")
    launch("fsdp_cpu_2proc.yaml", two, "--steps", "6", "--reg", "sra", "--accum", "2")
    single, sharded = step_losses(one), step_losses(two)
    assert single[1][2] != 0 and single[6] != single[5]  # the untrained head's cosine has either sign
    assert_close_steps(sharded, single, range(1, 7))
    a, b = (torch.load(d / "checkpoints" / "step_00000006.pt", weights_only=True) for d in (one, two))
    for key in ("model", "ema", "regularizer"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-4, atol=1e-6, msg=f"{key} {name}")
    assert any(name.startswith("regularizer.head.") for name in b["optimizer"]["state"])


@pytest.mark.parametrize("env, message", [
    ({"FSDP_VERSION": "1"}, "fsdp_version: 2"),
    ({"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params"),
    ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "grad_checkpointing"),
    ({"FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "HYBRID_SHARD"),
])
def test_fsdp_settings_refuse_what_is_not_implemented_by_name(env, message):
    from layersync.core.fsdp import fsdp_settings

    with pytest.raises(ValueError, match=message):
        fsdp_settings("FSDP", env)


def test_fsdp_settings_read_accelerates_launch_environment():
    from layersync.core.fsdp import FSDPSettings, fsdp_settings

    assert fsdp_settings("MULTI_CPU", {}) is None and fsdp_settings("MULTI_GPU", {"FSDP_VERSION": "2"}) is None
    on_cpu = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}
    assert fsdp_settings("MULTI_CPU", on_cpu) == FSDPSettings(reshard_after_forward=True)
    assert fsdp_settings("FSDP", {"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}) == \
        FSDPSettings(reshard_after_forward=False)
    assert fsdp_settings("FSDP", {"FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}) == \
        FSDPSettings(reshard_after_forward=False)


def test_optimizer_state_is_keyed_by_name_and_reads_integer_ids_from_older_checkpoints():
    from layersync.core.fsdp import load_optimizer_state, optimizer_state

    torch.manual_seed(0)
    modules = torch.nn.ModuleDict({"model": torch.nn.Linear(3, 2), "regularizer": torch.nn.Linear(2, 2)})
    opt = torch.optim.AdamW(modules.parameters(), lr=0.1)
    modules["regularizer"](modules["model"](torch.randn(4, 3))).sum().backward()
    opt.step()
    named = optimizer_state(modules, opt)
    assert set(named["state"]) == {"model.weight", "model.bias", "regularizer.weight", "regularizer.bias"}
    for saved in (named, opt.state_dict()):  # new format, and the integer ids runs wrote before
        fresh = torch.optim.AdamW(modules.parameters(), lr=0.1)
        load_optimizer_state(modules, fresh, saved)
        for p in modules.parameters():
            assert torch.equal(fresh.state[p]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
            assert torch.equal(fresh.state[p]["step"], opt.state[p]["step"])


def test_tokens_wider_than_the_model_are_refused_unless_it_predicts_x0():
    from layersync.core.interpolants import Interpolant
    from layersync.core.models import DiT, DiTConfig
    from layersync.core.trainer import check_token_width

    model = DiT(DiTConfig(input_size=(8, 8), in_channels=5, patch_size=4, depth=1, hidden_size=64, num_heads=2))
    for prediction in ("velocity", "noise"):
        with pytest.raises(ValueError, match=r"carries 80 values \(5 channels × patch 4×4\).*width is 64"):
            check_token_width(model, Interpolant(prediction=prediction))
    check_token_width(model, Interpolant(prediction="x0"))
    narrow_enough = DiT(DiTConfig(input_size=(8, 8), in_channels=4, patch_size=4, depth=1, hidden_size=64,
                                  num_heads=2))
    check_token_width(narrow_enough, Interpolant())  # 64 values at width 64


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


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "multi_node.yaml", "cpu_2proc.yaml", "fsdp.yaml",
                                  "fsdp_cpu_2proc.yaml"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / name))
    assert config.num_processes >= 2 and config.mixed_precision in ("bf16", "no")
