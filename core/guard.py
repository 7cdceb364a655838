"""Non-finite guard: a step whose loss or gradient norm is not finite updates nothing.

Users of SiT, REPA, LightningDiT and RAE report bf16 runs whose loss turns NaN after hundreds of thousands of
steps; one such step written into the weights (and the EMA) ruins the run and every later checkpoint. Here a
step with a non-finite loss or gradient norm skips the optimiser and EMA updates (the LR schedule and the data
stream still advance, so the run stays a function of the step number); it is counted and logged, and after
`max_consecutive` such steps in a row the run stops, naming the last checkpoint written before the streak.
Every process takes the same decision: the flag is summed over processes before it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .config import ConfigError
from .errors import UserRuntimeError


class NonFiniteError(UserRuntimeError):
    """The run stopped on non-finite values; the message is one line that names what to do."""


class NonFiniteGuard:
    """Decides, once per step and alike on every process, whether the step's update may be applied."""

    def __init__(self, max_consecutive: int, key: str = "train.max_nonfinite_steps"):
        if max_consecutive < 1:
            raise ConfigError(f"{key}={max_consecutive} must be ≥ 1 (consecutive non-finite steps before the "
                              "run stops)")
        self.max_consecutive = max_consecutive
        self.skipped = 0  # steps skipped by this process since it started
        self.consecutive = 0  # the current streak
        self.streak_start: int | None = None  # step number of the streak's first skipped step

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor,
              reduce: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """True when the step may update; `reduce` sums a tensor over processes. One host read per step."""
        bad = (~torch.isfinite(loss.detach().float()) | ~torch.isfinite(torch.as_tensor(grad_norm).float()))
        bad = reduce(bad.float().reshape(1).to(loss.device))
        ok = bool(bad.item() == 0)
        if ok:
            self.consecutive, self.streak_start = 0, None
        else:
            self.skipped += 1
            self.consecutive += 1
            self.streak_start = step if self.streak_start is None else self.streak_start
        return ok

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.max_consecutive


@torch.no_grad()
def all_finite(tensors: Iterable[torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device) -> bool:
    """Whether every value of every tensor (this process's pieces) is finite, on all processes."""
    bad = torch.zeros(1, device=device)
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            bad += (~torch.isfinite(t)).any().to(device)
    return bool(reduce(bad).item() == 0)
