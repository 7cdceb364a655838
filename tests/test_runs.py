"""core.runs: a run's newest (or a given) checkpoint, its config parsed as the recipe's, its weights fitted."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from layersync.core.checkpoint import CheckpointError, atomic_save, checkpoint_path
from layersync.core.runs import load_run_state, load_weights


@dataclasses.dataclass(frozen=True)
class TinyRecipe:
    width: int = 3
    name: str = "tiny"


def save(run_dir, step: int, config: dict, width: int = 3):
    model = torch.nn.Linear(width, 2)
    state = {"model": model.state_dict(), "ema": model.state_dict(), "config": config, "step": step}
    atomic_save(state, checkpoint_path(run_dir, step))
    return checkpoint_path(run_dir, step)


def load(run, ckpt=None):
    return load_run_state(run, ckpt, TinyRecipe, "tiny", "recipes/tiny.py")


def test_newest_checkpoint_is_loaded_and_its_config_parsed(tmp_path):
    save(tmp_path, 1, {"width": 3})
    newest = save(tmp_path, 20, {"width": 3, "name": "newest"})
    cfg, state, path = load(str(tmp_path))
    assert cfg == TinyRecipe(width=3, name="newest") and state["step"] == 20 and path == newest


def test_a_given_checkpoint_wins_and_needs_no_run_directory(tmp_path):
    older = save(tmp_path / "run", 1, {"name": "older"})
    save(tmp_path / "run", 2, {})
    cfg, state, path = load(str(tmp_path / "elsewhere"), str(older))
    assert cfg.name == "older" and state["step"] == 1 and path == older


def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nope does not exist"):
        load(str(tmp_path / "nope"))


@pytest.mark.parametrize("make_folder", [False, True])
def test_run_without_checkpoints_points_to_the_recipe(tmp_path, make_folder):
    if make_folder:
        (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*/checkpoints; train first with "
                                                 r"recipes/tiny\.py"):
        load(str(tmp_path))


def test_foreign_config_is_refused_naming_the_domain(tmp_path):
    path = save(tmp_path, 1, {"width": 3, "depth": 12})
    with pytest.raises(CheckpointError) as info:
        load(str(tmp_path))
    assert str(info.value).startswith(f"{path} was not written by the tiny recipe (unknown key depth")


def test_weights_that_do_not_fit_raise_one_clear_line(tmp_path):
    path = save(tmp_path, 1, {"width": 5}, width=5)
    cfg, state, path = load(str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_weights(torch.nn.Linear(3, 2), state["ema"], path)
    message = str(info.value)
    assert message.startswith(f"{path}: EMA weights do not fit the model its config describes (")
    assert "\n" not in message and "size mismatch for weight" in message  # names the key, not just "Error(s)"
    model = torch.nn.Linear(5, 2)
    assert load_weights(model, state["ema"], path) is model
    assert torch.equal(model.weight, state["ema"]["weight"])


def test_a_checkpoint_without_ema_weights_is_refused_by_name(tmp_path):
    path = checkpoint_path(tmp_path, 3)
    atomic_save({"model": {}, "config": {"width": 3}, "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"not a layersync checkpoint \(no model/ema/config entries\)"):
        load(str(tmp_path))
