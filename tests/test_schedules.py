"""λ schedules and the timestep gate of LayerSync, set from every recipe's `--align.*` keys."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from layersync.core.align import AlignContext, LayerSync
from layersync.core.cli_util import resolve_config
from layersync.core.models import DiT, DiTConfig
from layersync.core.recipe import AlignSpec, build_regularizer
from layersync.core.schedules import parse_schedule, parse_t_range


@pytest.mark.parametrize("spec, expected", [
    ("linear_warmup:100", {0: 0.0, 25: 0.25, 100: 1.0, 5000: 1.0}),
    ("cosine_decay:100", {0: 1.0, 50: 0.5, 25: 0.5 * (1 + math.cos(math.pi / 4)), 100: 0.0, 400: 0.0}),
    ("cutoff:100", {0: 1.0, 99: 1.0, 100: 0.0, 101: 0.0}),
])
def test_schedules_follow_their_formula_at_every_step(spec, expected):
    schedule = parse_schedule(spec)
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, abs=1e-12), (spec, step)
        assert schedule(torch.tensor(step)) == pytest.approx(value, abs=1e-12)  # a tensor step reads the same


def test_constant_and_empty_schedules_leave_lambda_alone():
    assert parse_schedule("") is None and parse_schedule("constant") is None


@pytest.mark.parametrize("spec", ["warmup:10", "linear_warmup", "linear_warmup:0", "cosine_decay:-5",
                                  "cutoff:x"])
def test_bad_schedules_are_refused_naming_the_key_and_the_forms(spec):
    with pytest.raises(ValueError, match=r"align.layersync_schedule=.*linear_warmup:N, cosine_decay:N"):
        parse_schedule(spec)


def test_t_range_parses_lo_hi_and_refuses_what_is_outside_zero_one():
    assert parse_t_range("0.2:0.8") == (0.2, 0.8) and parse_t_range("") is None
    for bad in ("0.8:0.2", "0:1.5", "0.5", "a:b"):
        with pytest.raises(ValueError, match="align.layersync_t_range"):
            parse_t_range(bad)


def tiny(depth: int = 6) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, depth=depth, hidden_size=16,
                         num_heads=2, num_classes=3))


def test_built_layersync_applies_schedule_and_t_range_to_its_loss():
    spec = AlignSpec(layersync="2:4", layersync_weight=0.5, layersync_schedule="linear_warmup:10",
                     layersync_t_range="0.5:1")
    reg = build_regularizer(spec, tiny())
    g = torch.Generator().manual_seed(0)
    hidden = {2: torch.randn(4, 3, 8, generator=g), 4: torch.randn(4, 3, 8, generator=g)}
    t = torch.tensor([0.1, 0.6, 0.9, 0.3])
    cos = torch.nn.functional.cosine_similarity(hidden[2], hidden[4], dim=-1)  # (4, 3)
    want = -0.5 * 0.3 * cos[1:3].mean()  # λ · w(3) · mean over the two samples with t ≥ 0.5
    loss, _ = reg(AlignContext(hidden=hidden, t=t, step=3))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_schedule_without_layersync_is_refused():
    with pytest.raises(ValueError, match="set --align.layersync too"):
        build_regularizer(AlignSpec(layersync_schedule="cutoff:5"), tiny())


@pytest.mark.parametrize("domain, recipe", [("image", "ImageRecipe"), ("audio", "AudioRecipe"),
                                            ("video", "VideoRecipe"), ("motion", "MotionRecipe")])
def test_every_recipe_takes_the_schedule_and_t_range_keys(domain, recipe):
    run = importlib.import_module(f"layersync.{domain}.run")
    cfg, _ = resolve_config(getattr(run, recipe), run.PRESETS, run.DEFAULT_PRESET,
                            ["--align.layersync_schedule=cosine_decay:50", "--align.layersync_t_range=0:0.5"],
                            prog="test")
    reg = build_regularizer(cfg.align, tiny(depth=8))
    assert isinstance(reg, LayerSync) and reg.t_range == (0.0, 0.5)
    assert reg.weight_schedule(25) == pytest.approx(0.5)
