"""`--align.layersync=auto`: train without alignment for a short warm-up, then let the model's own
representations pick the LayerSync pair, and align that pair from then on.

The paper leaves the pair to the user (§4: teacher outside the last ~20% of blocks, student not among the
first, far enough apart) and names automatic selection an open question (§6). The rule itself lives with the
probes (`metrics.representation.choose_pair`); core only runs it once, at step `warmup_steps`, through the
`choose(model) -> ((student, teacher), reason)` the recipe hands in (core imports no metrics).

Exact resume: the choice is a deterministic function of the weights at the warm-up step (fixed probe data,
fixed noise, no global random draws), and once made it is a buffer of this module, so it travels in the
checkpoint's "regularizer" entry; a run resumed after the choice never chooses again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .align import DECODER_FRACTION, AlignContext, LayerSync, Regularizer
from .errors import UserValueError

RECORD = "layersync_auto.json"


def min_pair_gap(depth: int) -> int:
    """Fewest blocks between student and teacher: a quarter of the depth, at least 2. The paper's pairs keep
    a real distance (SiT-XL 8←16 of 28, SiT-L 8←18 of 24, our digits 3←6 of 8, Wan2.1 9←17 of 30); adjacent
    blocks of a trained model are near-copies through the residual stream, and pulling one onto the next only
    makes a block the identity (the digits study: blocks 4–6 of 3←6 at λ 0.2 already do)."""
    return max(2, math.ceil(depth / 4))


def pair_bounds(depth: int) -> tuple[int, int]:
    """(first allowed student, last allowed teacher) by the paper's rules (LayerSync §4): the teacher is not
    in the last ~20% of blocks (they decode), the student not among the first ~10% (and never block 1), and
    the two at least `min_pair_gap(depth)` blocks apart."""
    last_teacher = math.floor((1.0 - DECODER_FRACTION) * depth + 1e-9)
    first_student = max(2, math.ceil(0.1 * depth))
    if first_student + min_pair_gap(depth) > last_teacher:
        raise UserValueError(f"a model of depth {depth} leaves no (student, teacher) pair within the paper's "
                             f"rules (student ≥ {first_student}, teacher ≤ {last_teacher}, at least "
                             f"{min_pair_gap(depth)} blocks apart); give the pair")
    return first_student, last_teacher


class AutoLayerSync(Regularizer):
    """LayerSync whose (student, teacher) pair is chosen by `choose(model)` at step `warmup_steps`."""

    def __init__(self, model: nn.Module, choose: Callable[[nn.Module], tuple[tuple[int, int], str]],
                 warmup_steps: int, weight: float = 0.2, t_range: tuple[float, float] | None = None,
                 weight_schedule: Callable | None = None, run_dir: str | Path | None = None):
        super().__init__()
        if warmup_steps < 1:
            raise UserValueError(f"align.layersync_auto_warmup={warmup_steps}: the automatic pair needs ≥ 1 "
                                 "warm-up step (at initialisation every block is the identity)")
        self.depth = len(model.blocks)
        pair_bounds(self.depth)  # refuse a model too shallow for the rules now, not after the warm-up
        # Held outside the module tree: the model is the trainer's, not a part of this regularizer.
        object.__setattr__(self, "_model", model)
        self.choose, self.warmup_steps, self.run_dir = choose, warmup_steps, run_dir
        self.layersync_kwargs = {"weight": weight, "t_range": t_range, "weight_schedule": weight_schedule}
        self.register_buffer("pair", torch.zeros(2, dtype=torch.long))  # (0, 0) until chosen
        self._inner: LayerSync | None = None

    @property
    def blocks(self) -> tuple[int, ...]:
        # The pair is unknown when the trainer asks; capturing every block only keeps references.
        return tuple(range(1, self.depth + 1))

    @property
    def chosen(self) -> tuple[int, int] | None:
        student, teacher = (int(v) for v in self.pair.tolist())
        return (student, teacher) if student else None

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.chosen is None and int(ctx.step) >= self.warmup_steps:
            self._choose(int(ctx.step))
        if self.chosen is None:
            zero = torch.zeros((), device=self.pair.device)
            return zero, {"layersync/loss": zero}
        if self._inner is None or self._inner.pairs[0] != self.chosen:  # first step after a choice or resume
            self._inner = LayerSync([self.chosen], depth=self.depth, **self.layersync_kwargs)
        return self._inner(ctx)

    def _choose(self, step: int) -> None:
        (student, teacher), reason = self.choose(self._model)
        if not 1 <= student < teacher <= self.depth:
            raise RuntimeError(f"the pair chooser returned ({student}, {teacher}) for depth {self.depth}")
        self.pair.copy_(torch.tensor([student, teacher]))
        rank = int(os.environ.get("RANK", "0"))
        if self.run_dir is not None and rank == 0:
            record = {"student": student, "teacher": teacher, "chosen_at_step": step,
                      "layersync": f"{student}:{teacher}", "reason": reason}
            path = Path(self.run_dir) / RECORD
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"layersync=auto at step {step}: {student}:{teacher} ({reason}) → {path}", flush=True)
