"""Bit-for-bit reproducible CPU training of the small models that evaluators train once and cache."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def deterministic_cpu(seed: int) -> Iterator[None]:
    """One CPU thread, deterministic algorithms and a forked CPU RNG seeded with `seed`.

    One thread makes the reduction order independent of the core count. The caller's thread count,
    determinism flags and CPU RNG state are restored on exit, also when the body raises. Only the CPU
    generator is seeded (torch.manual_seed would reseed CUDA too); CUDA RNGs are neither forked nor touched.
    """
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)


def fit_classifier(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int,
                     batch_size: int, peak_lr: float, weight_decay: float) -> nn.Module:
    """Cross-entropy on (x, y): AdamW with a one-cycle schedule (Smith & Topin 2019) over shuffled minibatches,
    reproducibly under `deterministic_cpu(seed)`. `build()` makes the model inside it, so the seeded generator
    draws its initialisation and dropout; the minibatch order has its own generator. Returns it in eval mode."""
    steps = epochs * -(-len(y) // batch_size)
    with deterministic_cpu(seed):
        order = torch.Generator().manual_seed(seed)
        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr, total_steps=steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=order)
            for i in range(0, len(y), batch_size):
                batch = perm[i : i + batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()
