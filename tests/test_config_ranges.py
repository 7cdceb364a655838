"""Every numeric setting of every recipe is range-checked when the config is resolved, so `--dry-run`
refuses exactly what training would, with one line naming the key and its valid range."""

from __future__ import annotations

import dataclasses
import sys
import typing

import pytest

from layersync.core.config import ConfigError, apply_overrides, from_dict
from layersync.core.errors import UserError
from layersync.core.trainer import TrainConfig


def recipe_classes():
    import importlib.util
    from pathlib import Path

    from layersync.audio.run import AudioRecipe
    from layersync.image.run import ImageRecipe
    from layersync.motion.run import MotionRecipe
    from layersync.video.run import VideoRecipe

    lora_path = Path(__file__).resolve().parents[1] / "recipes" / "finetune_lora.py"
    spec = importlib.util.spec_from_file_location("finetune_lora", lora_path)
    lora = sys.modules.setdefault("finetune_lora", importlib.util.module_from_spec(spec))  # for dataclasses
    spec.loader.exec_module(lora)
    return {"image": ImageRecipe, "audio": AudioRecipe, "video": VideoRecipe, "motion": MotionRecipe,
            "lora": lora.LoraRecipe}


def numeric_fields(cls: type, prefix: str = ""):
    """(dotted key, owning class, field name) of every int/float (or tuple of them) field, at any depth."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from numeric_fields(tp, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(tp)) | {tp}
        inner = {a for t in args for a in typing.get_args(t)}
        if (args | inner) & {int, float} and bool not in args:
            yield f"{prefix}{f.name}", cls, f.name


@pytest.mark.parametrize("domain", ["image", "audio", "video", "motion", "lora"])
def test_every_numeric_field_of_every_recipe_has_a_range(domain):
    cls = recipe_classes()[domain]
    unchecked = [key for key, owner, name in numeric_fields(cls)
                 if name not in getattr(owner, "config_ranges", {})]
    assert unchecked == [], f"give these fields a range with core.config.checked: {unchecked}"
    from_dict(cls, {})  # and every default is inside its range


@pytest.mark.parametrize("domain, key, value, valid", [
    ("image", "align.layersync_weight", "-0.2", "≥ 0"),
    ("image", "train.total_steps", "-5", "≥ 1"),
    ("image", "train.global_batch_size", "-4", "≥ 1"),
    ("image", "train.grad_accum_steps", "0", "≥ 1"),
    ("image", "train.log_every", "0", "≥ 1"),
    ("image", "sample.steps", "0", "≥ 1"),
    ("image", "train.lr", "nan", "≥ 0"),
    ("image", "train.ema_decay", "1.5", "[0, 1]"),
    ("audio", "align.sra_weight", "-1", "≥ 0"),
    ("video", "align.dispersive_weight", "-1", "≥ 0"),
    ("motion", "align.repa_weight", "-0.5", "≥ 0"),
    ("motion", "sample.steps", "0", "≥ 1"),
])
def test_a_value_out_of_range_is_refused_with_the_key_and_range(domain, key, value, valid):
    cls = recipe_classes()[domain]
    with pytest.raises(ConfigError) as err:
        apply_overrides(cls(), {key: value})
    message = str(err.value)
    assert message.startswith(f"{key}=") and valid in message and "\n" not in message


def test_the_global_batch_must_split_into_accumulation_steps():
    with pytest.raises(ConfigError, match=r"^train\.global_batch_size=10 is not a multiple of "
                                          r"grad_accum_steps=4"):
        apply_overrides(recipe_classes()["image"](),
                        {"train.global_batch_size": "10", "grad_accum_steps": "4"})
    assert TrainConfig(global_batch_size=12, grad_accum_steps=4).global_batch_size == 12


@pytest.mark.parametrize("script, args", [
    ("image_sit", ["--align.layersync_weight=-0.2"]),
    ("image_sit", ["--train.total_steps=-5"]),
    ("motion_mdm", ["--sample.steps=0"]),
    ("motion_mdm", ["--eval.num_texts=32"]),
    ("image_sit", ["--eval_per_class=3"]),
])
def test_dry_run_refuses_what_training_refuses(script, args, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for dry in (["--dry-run"], []):
        with pytest.raises(UserError):
            module.main([*args, f"--run_dir={tmp_path / 'run'}", *dry])
    assert not (tmp_path / "run").exists()  # refused before the run directory was created
