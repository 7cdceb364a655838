"""Throughput telemetry: FLOPs per training step (counted once), achieved FLOP/s and model FLOPs utilisation.

    MFU = (FLOPs of one training step on this process × steps) / elapsed seconds / peak FLOP/s of one device

as nanoGPT and PaLM (Chowdhery et al. 2022, App. B) define it, except that the FLOPs are counted, not
estimated: `torch.utils.flop_counter` records every matmul, convolution and attention kernel of a real step
(forward, backward and any recomputation under activation checkpointing, at 2 FLOPs per multiply-add);
elementwise work (norms, activations, the optimizer, the EMA) is not counted. The peak is the device's dense
tensor-core figure from its datasheet (`PEAK_TFLOPS`), or on a CPU a matmul measured once at start-up.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no 2:4 sparsity) peak tensor-core TFLOP/s from the vendors' datasheets: (bf16 with fp32 accumulate,
# tf32). The first name that appears as a whole word in `torch.cuda.get_device_name()` wins, so the more
# specific names come first (H100 NVL before H100 PCIe before H100, which is taken to be the SXM part).
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("GH200", 989.4, 494.7),
    ("H200 NVL", 835.5, 417.5),
    ("H200", 989.4, 494.7),
    ("H100 NVL", 835.5, 417.5),
    ("H100 PCIe", 756.5, 378.0),
    ("H100", 989.4, 494.7),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("A10", 125.0, 62.5),
    ("L40S", 362.1, 183.2),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 60.0),
    ("RTX 4090", 165.2, 82.6),
    ("MI300X", 1307.4, 653.7),
)


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a named accelerator for `precision` ("bf16", or "fp32" run as TF32); None if unknown."""
    for name, bf16, tf32 in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", device_name):
            return (bf16 if precision == "bf16" else tf32) * 1e12
    return None


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 512,
                         seconds: float = 0.25) -> float:
    """FLOP/s of the fastest of repeated (size × size) @ (size × size) products in `dtype`: a CPU's
    achievable peak, measured once (there is no datasheet figure for an arbitrary CPU and thread count)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    a @ b  # warm-up: first-call allocation and kernel selection
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it comes from) for one device running at `precision` ("bf16" or "fp32")."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name, precision)
        kind = "bf16" if precision == "bf16" else "tf32"
        if peak is None:
            return None, f"{name}: no datasheet peak in core/telemetry.PEAK_TFLOPS, MFU not reported"
        return peak, f"{name} datasheet {kind} dense {peak / 1e12:.0f} TFLOP/s"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = measured_matmul_peak(device, dtype)
    return peak, (f"{device.type} measured {precision} matmul {peak / 1e9:.1f} GFLOP/s "
                  f"({torch.get_num_threads()} threads)")


def enable_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions on CUDA use TF32 tensor cores (10-bit mantissa inputs, fp32
    accumulate), as SiT/REPA train; bf16 autocast runs are unaffected. Evaluators that need full fp32
    (metrics.inception) turn it off around themselves. Returns whether it was turned on."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether torch has a fused (single-kernel) AdamW for this device type (CUDA and, since torch 2.4, CPU)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def sdpa_backend(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """The scaled-dot-product-attention kernel torch picks for this model's unmasked attention
    (batch 1, its heads, tokens and head width, in `dtype`): FLASH_ATTENTION, EFFICIENT_ATTENTION, MATH, …"""
    config = getattr(model, "config", None)
    if not all(hasattr(config, k) for k in ("num_heads", "hidden_size", "num_tokens")):
        return "unknown (the model has no DiT config)"
    head_dim = config.hidden_size // config.num_heads
    q = torch.empty(1, config.num_heads, config.num_tokens, head_dim, device=device, dtype=dtype)
    choice = torch._fused_sdp_choice(q, q, q)
    return f"{torch.nn.attention.SDPBackend(choice).name} ({config.num_heads} heads × {head_dim}, " \
           f"{config.num_tokens} tokens, {str(dtype).removeprefix('torch.')})"


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), FLOPs it ran): matmuls, convolutions and attention, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


class Throughput:
    """Turns each logging window into achieved FLOP/s and MFU, from the FLOPs of one step counted at start."""

    def __init__(self, device: torch.device, precision: str, flops_per_step: int | None):
        self.peak, self.peak_source = device_peak(device, precision)
        self.flops_per_step = flops_per_step  # this process's share of one optimiser step

    def __str__(self) -> str:
        counted = f"; {self.flops_per_step / 1e9:.4g} GFLOP per step per process (counted)" \
            if self.flops_per_step else ""
        return f"MFU peak: {self.peak_source}{counted}"

    def row(self, steps: int, seconds: float) -> dict[str, float]:
        """Achieved TFLOP/s of one device over `steps` steps in `seconds`, and MFU (when the peak is known)."""
        if not self.flops_per_step:
            return {}
        achieved = self.flops_per_step * steps / max(seconds, 1e-9)
        out = {"tflops": achieved / 1e12}
        if self.peak:
            out["mfu"] = achieved / self.peak
        return out
