"""Telemetry: datasheet peaks by device name, FLOPs counted without changing the run, TFLOP/s and MFU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from layersync.core import telemetry

_spec = importlib.util.spec_from_file_location("tiny_trainer", Path(__file__).with_name("tiny_trainer.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.mark.parametrize("name, bf16, tf32", [
    ("NVIDIA H200", 989.4, 494.7), ("NVIDIA H100 80GB HBM3", 989.4, 494.7), ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100 NVL", 835.5, 417.5), ("NVIDIA A100-SXM4-80GB", 312.0, 156.0), ("NVIDIA A10", 125.0, 62.5),
    ("NVIDIA L40S", 362.1, 183.2), ("NVIDIA L40", 181.0, 90.5), ("NVIDIA L4", 121.0, 60.0),
    ("NVIDIA GeForce RTX 4090", 165.2, 82.6), ("NVIDIA GH200 480GB", 989.4, 494.7),
])
def test_datasheet_peak_is_found_by_whole_name_most_specific_first(name, bf16, tf32):
    assert telemetry.datasheet_peak(name, "bf16") == bf16 * 1e12
    assert telemetry.datasheet_peak(name, "fp32") == tf32 * 1e12  # fp32 matmuls run as TF32


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla V100-SXM2-16GB", "NVIDIA L400"])
def test_an_unknown_device_has_no_peak_rather_than_a_neighbours(name):
    assert telemetry.datasheet_peak(name, "bf16") is None


def test_count_flops_counts_forward_and_backward_matmuls():
    lin = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)  # no input gradient: backward computes only the weight's, 2·B·I·O like forward
    _, flops = telemetry.count_flops(lambda: lin(x).sum().backward())
    assert flops == 2 * (2 * 4 * 16 * 8)


def test_counting_step_flops_changes_nothing_in_the_run(tmp_path):
    plain = tiny.tiny_trainer(tmp_path / "a")
    counted = tiny.tiny_trainer(tmp_path / "b")
    flops = counted.count_step_flops()
    assert all(p.grad is None for p in counted.raw_model.parameters())
    for _ in range(2):  # bit-identical: counting a real step instead changed its last bits
        a, b = plain.train_step(), counted.train_step()
        assert all(torch.equal(a[k], b[k]) for k in ("loss", "grad_norm"))
    # Linear in the batch, and the same whatever the accumulation (global batch fixed).
    assert tiny.tiny_trainer(tmp_path / "c", grad_accum_steps=2).count_step_flops() == flops
    assert tiny.tiny_trainer(tmp_path / "d", global_batch_size=16).count_step_flops() == 2 * flops


def test_throughput_row_is_achieved_flops_over_the_peak():
    meter = telemetry.Throughput(torch.device("cpu"), "fp32", flops_per_step=10**12)
    assert meter.peak > 0 and "measured fp32 matmul" in meter.peak_source
    meter.peak = 4e12
    assert meter.row(steps=2, seconds=1.0) == {"tflops": 2.0, "mfu": 0.5}
    assert str(meter).endswith("; 1000 GFLOP per step per process (counted)")
    assert telemetry.Throughput(torch.device("cpu"), "fp32", None).row(2, 1.0) == {}


def test_attention_backend_is_named_for_the_models_shape(tmp_path):
    model = tiny.tiny_trainer(tmp_path).raw_model
    report = telemetry.sdpa_backend(model, torch.device("cpu"), torch.float32)
    name = report.split()[0]
    assert name in torch.nn.attention.SDPBackend.__members__ and "2 heads × 16, 4 tokens, float32" in report
    assert telemetry.sdpa_backend(torch.nn.Linear(2, 2), torch.device("cpu"), torch.float32).startswith("unknown")


def test_tf32_is_only_turned_on_for_cuda():
    before = torch.backends.cuda.matmul.allow_tf32
    assert telemetry.enable_tf32(torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.allow_tf32 == before
