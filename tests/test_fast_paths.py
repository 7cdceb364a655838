"""The fast paths a GPU run takes, run on the CPU at tiny size: bf16 autocast, torch.compile, fused AdamW."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("tiny_trainer", Path(__file__).with_name("tiny_trainer.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def losses(trainer, steps: int = 3) -> list[tuple[float, float, float]]:
    out = []
    for _ in range(steps):
        logs = trainer.train_step()
        out.append((logs["loss"].item(), logs["flow_loss"].item(), logs["grad_norm"].item()))
    return out


def test_bf16_autocast_step_matches_fp32_closely_and_keeps_fp32_weights(tmp_path):
    fp32 = losses(tiny.tiny_trainer(tmp_path / "fp32", "no"))
    trainer = tiny.tiny_trainer(tmp_path / "bf16", "bf16")
    seen = []
    trainer.raw_model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    bf16 = losses(trainer)
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls ran in bf16 …
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())  # … on fp32 master weights
    assert all(p.dtype == torch.float32 for p in trainer.ema.model.parameters())
    assert bf16 != fp32  # not the fp32 path under another name
    for got, want in zip(bf16, fp32):  # bf16 keeps 8 mantissa bits: ~1% per step, losses in fp32
        assert got == pytest.approx(want, rel=3e-2, abs=1e-3)


@pytest.mark.slow  # inductor compiles C++ kernels: ~1 min on 2 CPU cores
def test_compiled_training_step_matches_eager(tmp_path):
    eager = losses(tiny.tiny_trainer(tmp_path / "eager"), steps=2)
    trainer = tiny.tiny_trainer(tmp_path / "compiled", compile=True)
    assert trainer.model is not trainer.raw_model  # the compiled wrapper is what trains
    compiled = losses(trainer, steps=2)
    for got, want in zip(compiled, eager):  # fused kernels reorder float sums: equal to rounding
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_adamw_is_fused_on_the_cpu_and_its_step_is_adamws_formula(tmp_path):
    """Loshchilov & Hutter's AdamW, first step: m̂ = g, v̂ = g², p ← p(1 − lr·wd) − lr·m̂/(√v̂ + ε)."""
    trainer = tiny.tiny_trainer(tmp_path, weight_decay=0.1, grad_clip=0.0)
    assert trainer.raw_optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    grads = []
    trainer.raw_optimizer.register_step_pre_hook(
        lambda opt, *_: grads.extend(p.grad.clone() for p in trainer.raw_model.parameters()))
    trainer.train_step()
    lr, wd, eps = 1e-3, 0.1, 1e-8
    for p0, g, p1 in zip(before, grads, trainer.raw_model.parameters()):
        want = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p1.detach(), want, rtol=1e-5, atol=1e-7)
