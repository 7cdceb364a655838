"""λ schedules for the alignment loss and the `LO:HI` timestep gate, parsed from one-line config strings.

The LayerSync paper keeps λ constant and names scheduling it an open question (§6); these are the usual
shapes, as pure functions of the optimiser step s (so a resumed run replays them exactly):

    constant            w(s) = 1
    linear_warmup:N     w(s) = min(1, s / N)                      ramp in while the gates are still near zero
    cosine_decay:N      w(s) = ½ (1 + cos(π · min(s, N) / N))     fade out: alignment early, pure flow late
    cutoff:N            w(s) = 1 for s < N, else 0                 REPA-E / "stop aligning" ablations

The factor multiplies λ (`LayerSync(weight=λ, weight_schedule=w)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import UserValueError

Schedule = Callable[[int | torch.Tensor], float]
SCHEDULES = ("constant", "linear_warmup:N", "cosine_decay:N", "cutoff:N")


def parse_schedule(spec: str, key: str = "align.layersync_schedule") -> Schedule | None:
    """`"cosine_decay:5000"` → the function s ↦ w(s); "" or "constant" → None (λ as is)."""
    spec = spec.strip()
    if spec in ("", "constant"):
        return None
    name, _, arg = spec.partition(":")
    if name not in ("linear_warmup", "cosine_decay", "cutoff") or not arg.strip().isdigit() or int(arg) < 1:
        raise UserValueError(f"{key}={spec!r}: expected one of {', '.join(SCHEDULES)} with N ≥ 1 steps, "
                             "e.g. linear_warmup:500")
    n = int(arg)
    if name == "linear_warmup":
        return lambda step: min(1.0, float(step) / n)
    if name == "cosine_decay":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(float(step), n) / n))
    return lambda step: 1.0 if float(step) < n else 0.0


def parse_t_range(spec: str, key: str = "align.layersync_t_range") -> tuple[float, float] | None:
    """`"0.2:0.8"` → (0.2, 0.8): only samples with LO ≤ t ≤ HI are aligned (t = 0 data); "" → None."""
    spec = spec.strip()
    if not spec:
        return None
    try:
        lo, hi = (float(v) for v in spec.split(":"))
    except ValueError:
        raise UserValueError(f"{key}={spec!r}: expected LO:HI with 0 ≤ LO ≤ HI ≤ 1, e.g. 0:0.5") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise UserValueError(f"{key}={spec!r}: need 0 ≤ LO ≤ HI ≤ 1 (t = 0 is data, t = 1 noise)")
    return lo, hi
