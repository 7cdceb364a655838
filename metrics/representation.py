"""What a trained transformer's blocks represent: per-block linear probes, block × block CKA and cosine,
block pruning, and the LayerSync pair those measurements suggest.

The LayerSync paper's evidence is largely representational (§5): linear-probe accuracy per block (higher in
the aligned model's early blocks), CKA between blocks, and robustness to dropping blocks. Here every block's
residual stream h_k is read on a held-out labelled set at a fixed noise level t, with the *null* condition
(the class label would otherwise leak into every block through adaLN):

    x_t = α_t x + σ_t ε  (ε fixed by `seed`)  →  {h_k(x_t)}_{k=1..L}, (B, N, D) each
    probe_k(t)  = accuracy of a logistic regression on mean_n h_k[b, n, :] (metrics.probes)
    CKA_kj(t)   = linear CKA of the token sets h_k, h_j;   cos_kj(t) = mean_{b,n} cos(h_k[b,n], h_j[b,n])
    prune_k     = the flow loss on the set, averaged over the same t values, with block k made the identity

Domains supply only the `ProbeSet` (their held-out data and one label per example); everything else is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.align import DECODER_FRACTION
from ..core.auto_pair import min_pair_gap, pair_bounds
from ..core.errors import UserValueError
from .probes import cka_matrix, linear_probe_accuracy

DEFAULT_T = (0.25, 0.5, 0.75)  # t = 0 is data; the paper probes at moderate noise
PROBE_TEST_FRACTION = 1 / 3


@dataclass(frozen=True)
class ProbeSet:
    """Held-out examples in model space with one integer label each, given by a domain."""

    x: torch.Tensor  # (B, ...) model-space data at t = 0
    labels: torch.Tensor  # (B,) long: what the probes predict
    cond: torch.Tensor | None  # a valid model condition for each example (dropped to null), or None
    task: str  # what the labels are, e.g. "digit class", "number of balls"

    def __post_init__(self):
        if self.labels.shape != (len(self.x),):
            raise UserValueError(f"ProbeSet needs one label per example: x {tuple(self.x.shape)}, labels "
                                 f"{tuple(self.labels.shape)}")


def _forward(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond, capture: tuple[int, ...]):
    """The model on x_t at the null condition (force_drop everywhere) when it is conditional."""
    if cond is None:
        return model(x_t, t, None, capture=capture)
    drop = torch.ones(len(x_t), dtype=torch.bool, device=x_t.device)
    return model(x_t, t, cond, capture=capture, force_drop=drop)


def _noise(probe: ProbeSet, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(probe.x.shape, generator=g)  # on the CPU: the same ε on every device


# The token streams analyze keeps per t for CKA and cosine (float32, every block). The toy sets fit whole
# (digits: 1,797 × 16 tokens × 96 × 8 blocks = 88 MB); SiT-XL/2 on 512 latents would need 17 GB (256 tokens
# × 1152 × 28 blocks), so there every example keeps the same evenly spaced tokens, 32 of 256. The probes
# always read the mean over all tokens.
STREAM_BYTES = 2 * 2**30


def kept_tokens(n_examples: int, n_tokens: int, width: int, depth: int,
                budget: int | None = STREAM_BYTES) -> torch.Tensor | None:
    """Evenly spaced token indices to keep so that (B, n, D) float32 for `depth` blocks fits `budget`
    bytes; None when every token fits (or no budget)."""
    if budget is None:
        return None
    per_example = budget // (4 * width * depth * max(n_examples, 1))
    if per_example >= n_tokens:
        return None
    keep = max(1, per_example)
    return torch.arange(keep) * n_tokens // keep


@dataclass
class Streams:
    """Every block's residual stream on a probe set at one t: token means and the kept tokens."""

    pooled: dict[int, torch.Tensor]  # (B, D) float32 CPU: the mean over all tokens (probes)
    tokens: dict[int, torch.Tensor]  # (B, n, D) float32 CPU: all tokens, or `kept` ones (CKA, cosine)
    kept: torch.Tensor | None  # the kept token indices, None for all


@torch.no_grad()
def block_streams(model: nn.Module, interpolant, probe: ProbeSet, t: float, seed: int = 0,
                  batch_size: int = 256, budget: int | None = STREAM_BYTES) -> Streams:
    """The residual streams of every block on x_t at noise level `t` (null condition), within `budget`."""
    device = next(model.parameters()).device
    depth = len(model.blocks)
    blocks = tuple(range(1, depth + 1))
    noise = _noise(probe, seed)
    pooled: dict[int, list[torch.Tensor]] = {k: [] for k in blocks}
    tokens: dict[int, list[torch.Tensor]] = {k: [] for k in blocks}
    kept = None
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(probe.x), batch_size):
            x = probe.x[lo:lo + batch_size].to(device)
            tt = torch.full((len(x),), float(t), device=device)
            x_t = interpolant.x_t(x, noise[lo:lo + batch_size].to(device), tt)
            cond = None if probe.cond is None else probe.cond[lo:lo + batch_size].to(device)
            hidden = _forward(model, x_t, tt, cond, blocks).hidden
            if lo == 0:
                _, n_tokens, width = hidden[1].shape
                kept = kept_tokens(len(probe.x), n_tokens, width, depth, budget)
            for k in blocks:
                h = hidden[k].float()
                pooled[k].append(h.mean(1).cpu())
                tokens[k].append((h if kept is None else h[:, kept.to(device)]).cpu())
    finally:
        model.train(was_training)
    return Streams({k: torch.cat(v) for k, v in pooled.items()}, {k: torch.cat(v) for k, v in tokens.items()},
                   kept)


def block_features(model: nn.Module, interpolant, probe: ProbeSet, t: float, seed: int = 0,
                   batch_size: int = 256) -> dict[int, torch.Tensor]:
    """{block k: (B, N, D) float32 CPU} residual streams of every block on x_t at noise level `t`, whole."""
    return block_streams(model, interpolant, probe, t, seed, batch_size, budget=None).tokens


def cosine_matrix(hidden: dict[int, torch.Tensor]) -> np.ndarray:
    """(L, L) mean token cosine between every two blocks' residual streams (LayerSync's alignment)."""
    blocks = sorted(hidden)
    unit = {k: torch.nn.functional.normalize(hidden[k].double(), dim=-1) for k in blocks}
    out = np.eye(len(blocks))
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            out[i, j] = out[j, i] = float((unit[a] * unit[blocks[j]]).sum(-1).mean())
    return out


@torch.no_grad()
def pruned_flow_loss(model: nn.Module, interpolant, probe: ProbeSet, skip: int | None,
                     ts: Sequence[float] = DEFAULT_T, seed: int = 0, batch_size: int = 256) -> float:
    """Mean flow loss on the probe set over `ts` with block `skip` (1-based) replaced by the identity."""
    device = next(model.parameters()).device
    noise = _noise(probe, seed + 1)
    # A forward hook that returns the block's input makes it the identity without touching the model.
    handle = model.blocks[skip - 1].register_forward_hook(lambda m, a, o: a[0]) if skip else None
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        for t in ts:
            for lo in range(0, len(probe.x), batch_size):
                x = probe.x[lo:lo + batch_size].to(device)
                eps = noise[lo:lo + batch_size].to(device)
                tt = torch.full((len(x),), float(t), device=device)
                cond = None if probe.cond is None else probe.cond[lo:lo + batch_size].to(device)
                pred = _forward(model, interpolant.x_t(x, eps, tt), tt, cond, ())
                total += float(interpolant.loss(pred, x, eps, tt).double().sum())
                count += len(x)
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    return total / count


def analyze_blocks(model: nn.Module, interpolant, probe: ProbeSet, ts: Sequence[float] = DEFAULT_T,
                   seed: int = 0, pruning: bool = True, budget: int | None = STREAM_BYTES) -> dict:
    """Probe accuracy, CKA and cosine matrices at every t, and (optionally) block pruning, as plain JSON.
    CKA and cosine read the tokens that fit `budget` bytes (`kept_tokens`; listed in "cka_tokens")."""
    depth = len(model.blocks)
    labels = probe.labels.numpy()
    result: dict = {"blocks": list(range(1, depth + 1)), "t": [float(t) for t in ts], "task": probe.task,
                    "n_examples": len(labels), "probe_test_fraction": PROBE_TEST_FRACTION, "seed": seed,
                    "probe_accuracy": [], "cka": [], "cosine": []}
    for t in ts:
        streams = block_streams(model, interpolant, probe, t, seed, budget=budget)
        result["probe_accuracy"].append(
            [linear_probe_accuracy(streams.pooled[k], labels, PROBE_TEST_FRACTION, seed)
             for k in sorted(streams.pooled)])
        result["cka"].append(cka_matrix(streams.tokens)[1].tolist())
        result["cosine"].append(cosine_matrix(streams.tokens).tolist())
        result["cka_tokens"] = "all" if streams.kept is None else streams.kept.tolist()
    if pruning:
        full = pruned_flow_loss(model, interpolant, probe, None, ts, seed)
        result["pruning"] = {"metric": "flow_loss", "full": full,
                             "skip": [pruned_flow_loss(model, interpolant, probe, k, ts, seed)
                                      for k in range(1, depth + 1)]}
    return result


def choose_pair(analysis: dict, min_accuracy_gap: float = 0.05,
                max_cka: float = 0.9) -> tuple[tuple[int, int], str]:
    """((student, teacher), reason) from an `analyze_blocks` result, averaged over its t values.

    Teacher: the block with the highest probe accuracy among those the rules allow (the most semantic block
    that does not decode and has room for a student `min_pair_gap` blocks before it). Student: the deepest
    allowed block at least `min_pair_gap` before it with a real gap, i.e. probe accuracy at least
    `min_accuracy_gap` lower or CKA to the teacher at most `max_cka`; the deepest such block keeps the pull
    as gentle as the gap allows. Without any real gap: the pair with the largest accuracy gap, said so.
    """
    blocks = analysis["blocks"]
    first, last = pair_bounds(len(blocks))
    gap_blocks = min_pair_gap(len(blocks))
    acc = np.mean(np.asarray(analysis["probe_accuracy"]), axis=0)  # (L,) mean over t
    cka = np.mean(np.asarray(analysis["cka"]), axis=0)  # (L, L)
    teacher = max(range(first + gap_blocks, last + 1), key=lambda k: (acc[k - 1], -k))
    rules = (f"{len(blocks)} blocks: teacher ≤ {last} (the last {DECODER_FRACTION:.0%} decode), student ≥ "
             f"{first}, at least {gap_blocks} blocks apart; probe accuracy ({analysis['task']}) and CKA "
             f"averaged over t = {', '.join(f'{t:g}' for t in analysis['t'])}")
    head = (f"teacher {teacher}: highest probe accuracy {acc[teacher - 1]:.3f} among blocks "
            f"{first + gap_blocks}..{last}")
    for student in range(teacher - gap_blocks, first - 1, -1):
        gap, sim = acc[teacher - 1] - acc[student - 1], cka[student - 1, teacher - 1]
        if gap >= min_accuracy_gap or sim <= max_cka:
            why = f"accuracy gap {gap:.3f} (≥ {min_accuracy_gap:g}), CKA {sim:.3f}" \
                if gap >= min_accuracy_gap else f"accuracy gap {gap:.3f}, CKA {sim:.3f} (≤ {max_cka:g})"
            return (student, teacher), (f"{rules}. {head}; student {student}: the deepest allowed block before "
                                        f"it with a real gap: probe accuracy {acc[student - 1]:.3f}, {why}")
    student = min(range(first, teacher - gap_blocks + 1), key=lambda k: (acc[k - 1], k))
    gap = acc[teacher - 1] - acc[student - 1]
    return (student, teacher), (f"{rules}. {head}; no allowed block before it has a real gap (accuracy gap "
                                f"≥ {min_accuracy_gap:g} or CKA ≤ {max_cka:g}): student {student} has the "
                                f"largest gap, {gap:.3f}, CKA {cka[student - 1, teacher - 1]:.3f}")


def pair_chooser(probe: ProbeSet, interpolant, ts: Sequence[float] = DEFAULT_T, seed: int = 0):
    """`choose(model) -> ((student, teacher), reason)` for `--align.layersync=auto` (core.auto_pair)."""
    def choose(model: nn.Module) -> tuple[tuple[int, int], str]:
        return choose_pair(analyze_blocks(model, interpolant, probe, ts, seed, pruning=False))

    return choose
