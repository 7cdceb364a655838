"""Bit-for-bit reproducible CPU training of the small models that evaluators train once and cache."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


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
