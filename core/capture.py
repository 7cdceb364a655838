"""Read block outputs of any transformer without touching its code: `capture_blocks`, a forward-hook context.

LayerSync needs the residual stream after a student block k and a teacher block k' of the same forward pass
(DESIGN §1). Our DiT returns them through `capture=`; a model we do not own (a diffusers transformer, your
own nn.Module) exposes its blocks as an nn.ModuleList, and a forward hook on blocks k and k' reads the same
tensors with no extra compute:

    with capture_blocks(transformer.transformer_blocks, (8, 16)) as hidden:   # blocks numbered from 1
        pred = transformer(x_t, t, y).sample
    loss = flow_loss + 0.2 * layersync_loss(hidden[8], hidden[16])          # hidden[k]: (B, N, D)

Blocks that return tuples (diffusers' Flux, SD3: `(encoder_hidden_states, hidden_states)`) need `take=`, the
index of the element to keep; `layout=` turns (B, T, N, D) frame tokens and channel-first maps into (B, N, D).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from .align import check_block

# "BND": tokens (B, N, D) as they are. "BTND": per-frame tokens (B, T, N, D) -> (B, T·N, D), frame-major.
# "BC...": channel-first maps (B, D, *spatial), e.g. (B, D, H, W) or (B, D, T, H, W) -> (B, H·W…, D),
# row-major.
Layout = Literal["BND", "BTND", "BC..."]
LAYOUTS: tuple[str, ...] = ("BND", "BTND", "BC...")


def to_tokens(h: torch.Tensor, layout: Layout = "BND") -> torch.Tensor:
    """A block output in `layout` as (B, N, D) tokens (a view where the layout allows one)."""
    if layout == "BND":
        if h.ndim != 3:
            raise ValueError(f"layout 'BND' expects (B, N, D) block outputs, got shape {tuple(h.shape)}; "
                             f"pass layout= one of {LAYOUTS}")
        return h
    if layout == "BTND":
        if h.ndim != 4:
            raise ValueError(f"layout 'BTND' expects (B, T, N, D) block outputs, got shape {tuple(h.shape)}")
        return h.flatten(1, 2)  # (B, T·N, D)
    if layout == "BC...":
        if h.ndim < 3:
            raise ValueError(f"layout 'BC...' expects (B, D, *spatial) block outputs, got shape "
                             f"{tuple(h.shape)}")
        return h.flatten(2).transpose(1, 2)  # (B, N, D)
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


def _select(output, take: int | None, block: int) -> torch.Tensor:
    """The tensor of a block's output that carries the tokens: the output itself, or element `take`."""
    if isinstance(output, torch.Tensor):
        if take is not None:
            raise ValueError(f"capture_blocks: block {block} returns one tensor; leave take=None")
        return output
    if isinstance(output, (tuple, list)):
        if take is None or not -len(output) <= take < len(output):
            shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in output]
            raise ValueError(f"capture_blocks: block {block} returns a {len(output)}-tuple {shapes}; pass "
                             f"take=INDEX of the image/video tokens (diffusers Flux and SD3 blocks: take=1)")
        return output[take]
    raise TypeError(f"capture_blocks: block {block} returned {type(output).__name__}, not a tensor or tuple")


# Each hooked block keeps one hook for good, a no-op outside a capture: the hook a context relies on must be
# the one a torch.compile'd graph already calls (dynamo does not guard on hooks, skip_nnmodule_hook_guards),
# so the per-context state travels through this attribute, read in eager mode, not through a fresh closure.
_SINK = "_layersync_capture_sink"
_HOOKED = "_layersync_capture_hooked"


class _Sink:
    """Where one capture context stores block k's output; dropped from the block on exit."""

    def __init__(self, hidden: dict[int, torch.Tensor], block: int, layout: Layout, take: int | None,
                 grad_at_entry: bool):
        self.hidden, self.block, self.layout, self.take = hidden, block, layout, take
        self.grad_at_entry = grad_at_entry

    def record(self, output) -> None:
        k = self.block
        if k in self.hidden:
            if torch._C._current_graph_task_id() >= 0:  # checkpoint recomputation inside backward
                return
            raise RuntimeError(f"capture_blocks: block {k} ran twice in one context; open one "
                               "`with capture_blocks(...)` per forward pass")
        if self.grad_at_entry and not torch.is_grad_enabled():
            raise RuntimeError(f"capture_blocks: block {k} ran without autograd inside a grad-enabled "
                               "context (reentrant gradient checkpointing?); use use_reentrant=False, as "
                               "diffusers' enable_gradient_checkpointing() does")
        self.hidden[k] = to_tokens(_select(output, self.take, k), self.layout)


@torch.compiler.disable  # runs eagerly (a graph break) so that it reads the current sink, not a traced one
def _record(module: nn.Module, args, output) -> None:
    sink = module.__dict__.get(_SINK)
    if sink is not None:
        sink.record(output)


class capture_blocks:  # noqa: N801 - a context manager used like a function, as torch.no_grad
    """`with capture_blocks(blocks, which) as hidden:` fills `hidden` with {k: (B, N, D) output of block k}
    from the forward pass run inside.

    blocks: the model's blocks in execution order, numbered from 1 (an nn.ModuleList, or a list joining
    several, e.g. `[*flux.transformer_blocks, *flux.single_transformer_blocks]`). which: the blocks to read.
    layout: how a block lays out its output (LAYOUTS). take: the element to keep when blocks return tuples.

    The tensors are the blocks' own outputs (same autograd graph: a loss on them trains the blocks up to k).
    On exit the blocks drop every reference to this context and its outputs; a no-op hook stays on each block
    ever captured, so a torch.compile'd model keeps calling it (`hook_blocks` them before compiling: a graph
    traced without the hook never calls it, and the exit then raises, naming the missing blocks). Entering
    and leaving run eagerly, so the context may sit inside a compiled forward (a graph break there).
    Gradient checkpointing: a non-reentrant checkpoint re-runs the block during backward; that re-run is not
    recorded. A reentrant one (`use_reentrant=True`) runs the block without autograd, which would silently cut
    the gradient, and is refused. A block that runs twice outside backward in one context is an error: open
    one context per forward pass.
    """

    def __init__(self, blocks: Iterable[nn.Module], which: Iterable[int], layout: Layout = "BND",
                 take: int | None = None):
        self.modules = list(blocks)
        self.which = tuple(sorted({int(k) for k in which}))
        for k in self.which:
            check_block(k, len(self.modules), "capture_blocks")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        self.layout, self.take = layout, take

    @torch.compiler.disable
    def __enter__(self) -> dict[int, torch.Tensor]:
        chosen = [self.modules[k - 1] for k in self.which]
        busy = [k for k, block in zip(self.which, chosen) if block.__dict__.get(_SINK) is not None]
        if busy:
            raise RuntimeError(f"capture_blocks: blocks {busy} are already captured by an enclosing context")
        hook_blocks(chosen)
        hidden: dict[int, torch.Tensor] = {}
        grad_at_entry = torch.is_grad_enabled()
        for k, block in zip(self.which, chosen):
            block.__dict__[_SINK] = _Sink(hidden, k, self.layout, self.take, grad_at_entry)
        return hidden

    @torch.compiler.disable
    def __exit__(self, exc_type, exc, tb) -> bool:
        sinks = [self.modules[k - 1].__dict__.get(_SINK) for k in self.which]
        for k in self.which:
            self.modules[k - 1].__dict__[_SINK] = None
        hidden = sinks[0].hidden if sinks and sinks[0] is not None else {}
        missing = [k for k in self.which if k not in hidden]
        if exc_type is None and missing:
            raise RuntimeError(f"capture_blocks: the forward pass inside the context never ran blocks "
                               f"{missing} (none ran? or a torch.compile graph traced before they were "
                               "hooked: call hook_blocks(blocks) before compiling)")
        return False


def hook_blocks(blocks: Iterable[nn.Module]) -> None:
    """Give every block the (no-op until captured) hook now, so that a model compiled later calls it."""
    for block in blocks:
        if not block.__dict__.get(_HOOKED, False):
            block.register_forward_hook(_record)
            block.__dict__[_HOOKED] = True
