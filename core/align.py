"""LayerSync (ICLR 2026) and the interface every alignment regularizer shares.

LayerSync reads the residual stream after a student block k and a deeper teacher block k' of the *same*
forward pass and pulls the student towards the detached teacher, token by token (DESIGN §1):

    L = λ · mean_{b,n} [ −cos( h_k[b,n,:], stopgrad(h_k'[b,n,:]) ) ]

No extra forward pass and no extra parameters. All cosines are taken over the feature dimension, in float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserKeyError, UserNotImplementedError, UserValueError

if TYPE_CHECKING:
    from layersync.core.interpolants import Interpolant

COS_EPS = 1e-6  # F.normalize clamps norms at eps: a zero token gets cosine 0 instead of NaN
DECODER_FRACTION = 0.2  # LayerSync §4: the last ~20% of blocks decode; a teacher there is a poor choice


@dataclass(frozen=True)
class AlignContext:
    """Everything a regularizer may read at one training step (docs/design.md, "Regularizer call")."""

    hidden: dict[int, torch.Tensor]  # block (1-based) -> (B, N, D) residual stream after that block
    token_mask: torch.Tensor | None = None  # (B, N) bool, True = the token counts; None = all count
    x: torch.Tensor | None = None  # clean data in model space, t = 0
    noise: torch.Tensor | None = None  # the ε that built x_t
    t: torch.Tensor | None = None  # (B,) in [0, 1]; 0 is data
    x_t: torch.Tensor | None = None  # the student's input
    cond: Any = None  # class labels, text embedding or None, as given to the model
    step: int | torch.Tensor = 0
    interpolant: Interpolant | None = None
    ema_model: nn.Module | None = None
    raw: Any = None  # raw media or precomputed encoder tokens, for REPA
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra model inputs (e.g. force_drop)
    sample_keys: torch.Tensor | None = None  # (B,) int64: each sample's RNG key (core/sample_rng.py)

    def feature(self, block: int, who: str) -> torch.Tensor:
        """The captured (B, N, D) features of `block`, or a KeyError that says how to capture them."""
        if block not in self.hidden:
            raise UserKeyError(
                f"{who} needs block {block}, but the forward pass captured {sorted(self.hidden)}; "
                "call model(x_t, t, cond, capture=regularizer.blocks)."
            )
        return self.hidden[block]

    def require(self, name: str, who: str) -> Any:
        """Field `name`, or a ValueError saying that `who` needs it."""
        value = getattr(self, name)
        if value is None:
            raise UserValueError(f"{who} needs AlignContext.{name}, which is None; the trainer must set it.")
        return value


def token_cosine(student: torch.Tensor, teacher: torch.Tensor, eps: float = COS_EPS) -> torch.Tensor:
    """Per-token cosine over the feature (last) dim, in float32: (B, N, D), (B, N, D) -> (B, N).

    Gradients flow to both inputs; detach the teacher yourself (`layersync_loss` does).
    """
    if student.shape != teacher.shape:
        raise UserValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
                             "shape")
    # Cast before normalising: bf16 norms of wide tokens lose the precision the cosine needs (DESIGN §2).
    s = F.normalize(student.float(), dim=-1, eps=eps)  # (B, N, D)
    t = F.normalize(teacher.float(), dim=-1, eps=eps)  # (B, N, D)
    return (s * t).sum(dim=-1)  # (B, N)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, N) `values` over the tokens where the (B, N) bool `mask` is True (all if None).

    Every kept token weighs the same. An all-False mask gives 0 (the term contributes nothing) rather
    than NaN: with a t-range, a batch may legitimately hold no sample in range.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape or mask.dtype != torch.bool:
        raise UserValueError(
            f"token mask must be a bool tensor of shape {tuple(values.shape)} (True = counts); "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def layersync_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Unweighted LayerSync loss: mean over kept tokens of −cos(student, stopgrad(teacher)), float32 scalar.

    student, teacher: (B, N, D); mask: (B, N) bool, True = the token counts.
    """
    if student.ndim != 3:
        raise UserValueError(f"expected (B, N, D) tokens, got shape {tuple(student.shape)}")
    return -masked_mean(token_cosine(student, teacher.detach()), mask)


def check_pair(student: int, teacher: int, depth: int | None, who: str, allow_equal: bool = False) -> None:
    """Raise a ValueError naming the valid range unless 1 ≤ student < teacher ≤ depth (or ≤ if allowed)."""
    relation = "≤" if allow_equal else "<"
    valid = f"1 ≤ student {relation} teacher ≤ {depth if depth is not None else 'depth'}"
    ordered = student <= teacher if allow_equal else student < teacher
    in_depth = depth is None or teacher <= depth
    if student < 1 or not ordered or not in_depth:
        raise UserValueError(
            f"{who}: invalid (student, teacher) = ({student}, {teacher}); blocks are numbered from 1 and "
            f"need {valid}."
        )


def check_block(block: int, depth: int | None, who: str) -> None:
    """Raise a ValueError naming the valid range unless 1 ≤ block ≤ depth."""
    if block < 1 or (depth is not None and block > depth):
        raise UserValueError(f"{who}: invalid block {block}; blocks are numbered from 1 and need "
                             f"1 ≤ block ≤ {depth if depth is not None else 'depth'}.")


def parse_pairs(spec: str) -> tuple[tuple[int, int], ...]:
    """Parse "8:16,4:12" into ((8, 16), (4, 12)): comma-separated student:teacher block pairs."""
    pairs = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UserValueError(f"cannot parse LayerSync pair {item!r} in {spec!r}; expected e.g. "
                                 "'8:16,4:12'")
        pairs.append((int(parts[0]), int(parts[1])))
    return tuple(pairs)


class Regularizer(nn.Module):
    """Base of every alignment loss: `blocks` to capture; forward(ctx) -> (λ-weighted fp32 loss, logs)."""

    # State-dict prefixes of training-only parts (SRA's head, REPA's projector). They live in the
    # regularizer, never in the model, so model/EMA checkpoints are sampling-ready as they are.
    training_only_prefixes: tuple[str, ...] = ()

    @property
    def blocks(self) -> tuple[int, ...]:
        """Blocks (1-based) whose output the student forward must capture."""
        raise UserNotImplementedError(f"{type(self).__name__} must define `blocks`")

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise UserNotImplementedError(f"{type(self).__name__} must define `forward(ctx)`")

    def sampling_state_dict_filter(self, state_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """`state_dict` without this regularizer's training-only entries (under `prefix`, e.g. "reg.")."""
        drop = tuple(prefix + p for p in self.training_only_prefixes)
        return {k: v for k, v in state_dict.items() if not (drop and k.startswith(drop))}


class LayerSync(Regularizer):
    """LayerSync: pull block-k tokens towards the detached tokens of a deeper block k' of the same pass."""

    def __init__(
        self,
        pairs: Iterable[tuple[int, int]] | str = ((8, 16),),
        weight: float = 0.2,
        depth: int | None = None,
        t_range: tuple[float, float] | None = None,
        weight_schedule: Callable[[int | torch.Tensor], float | torch.Tensor] | None = None,
    ):
        """pairs: (student, teacher) blocks, 1-based, or "8:16,4:12". Every pair counts; the loss is the
        mean over pairs of each pair's token-mean −cos, times `weight` (λ) and `weight_schedule(step)`.
        depth: the model's depth, to reject impossible pairs at start-up. t_range: (lo, hi), only samples
        with lo ≤ t ≤ hi are penalised.
        """
        super().__init__()
        if isinstance(pairs, str):
            pairs = parse_pairs(pairs)
        self.pairs = tuple((int(s), int(t)) for s, t in pairs)
        if not self.pairs:
            raise UserValueError("LayerSync needs at least one (student, teacher) pair, e.g. pairs=[(8, 16)]")
        if len(set(self.pairs)) != len(self.pairs):
            raise UserValueError(f"LayerSync pairs repeat: {self.pairs}")
        for student, teacher in self.pairs:
            check_pair(student, teacher, depth, "LayerSync")
            if depth is not None:
                warn_against_paper_rules(student, teacher, depth)
        if t_range is not None and not 0.0 <= t_range[0] <= t_range[1] <= 1.0:
            raise UserValueError(f"LayerSync t_range must satisfy 0 ≤ lo ≤ hi ≤ 1; got {t_range}")
        self.weight = float(weight)
        self.t_range = t_range
        self.weight_schedule = weight_schedule

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted({b for pair in self.pairs for b in pair}))

    def forward(self, ctx: AlignContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_mask = self._loss_mask(ctx)
        logs: dict[str, torch.Tensor] = {}
        per_pair = []
        for student, teacher in self.pairs:
            cos = token_cosine(ctx.feature(student, "LayerSync"), ctx.feature(teacher, "LayerSync").detach())
            per_pair.append(-masked_mean(cos, loss_mask))
            # The logged cosine describes the model at every t: the t-range only selects what is penalised.
            logs[f"layersync/cos_{student}_{teacher}"] = masked_mean(cos.detach(), ctx.token_mask)
        scale = self.weight
        if self.weight_schedule is not None:
            scale = scale * self.weight_schedule(ctx.step)
        loss = torch.stack(per_pair).mean() * scale
        logs["layersync/loss"] = loss.detach()
        return loss, logs

    def _loss_mask(self, ctx: AlignContext) -> torch.Tensor | None:
        """Token mask combined with the t-range: (B, N) bool, or None when every token counts."""
        if self.t_range is None:
            return ctx.token_mask
        t = ctx.require("t", "LayerSync with t_range")  # (B,)
        lo, hi = self.t_range
        in_range = (t >= lo) & (t <= hi)  # (B,)
        batch, tokens = ctx.feature(self.pairs[0][0], "LayerSync").shape[:2]
        in_range = in_range[:, None].expand(batch, tokens)  # (B, N)
        return in_range if ctx.token_mask is None else in_range & ctx.token_mask


def warn_against_paper_rules(student: int, teacher: int, depth: int) -> None:
    """Warn (not fail) where a valid pair breaks the paper's selection rules (LayerSync §4)."""
    if teacher > (1.0 - DECODER_FRACTION) * depth:
        warnings.warn(
            f"LayerSync teacher block {teacher} is in the last {DECODER_FRACTION:.0%} of the {depth} blocks, "
            "which decode rather than represent; the paper keeps teachers ≤ "
            f"{int((1.0 - DECODER_FRACTION) * depth)} (e.g. 8:16 for depth 28).",
            stacklevel=3,
        )
    if student == 1:
        warnings.warn(
            "LayerSync student block 1 is the first block; the paper picks a student a few blocks in "
            "(e.g. 8 of 28) so the aligned features are already semantic.",
            stacklevel=3,
        )

