"""Per-sample randomness: every draw of a training step is a function of (seed, step, slot).

`slot` is a sample's position in the step's GLOBAL batch, j ∈ [0, global_batch_size). Each sample carries
one 64-bit key, key = mix(seed, step, j), and every random quantity of that sample (the source's flip and
crop, the latent's posterior ε, the flow noise ε, the time t, the label dropout, SRA's teacher time) is drawn
from a stream named by purpose and seeded by mix(key, crc32(purpose)). Nothing depends on which process draws the sample, in
which micro-batch, or in which thread, so 1, 2 or N processes and any accumulation split see the same numbers.

    keys = sample_keys(seed, step, torch.arange(lo, hi))   # (B,) int64, one per sample of this process
    flip = uniform(keys, "flip") < 0.5                     # (B,) one scalar draw per sample, vectorised
    eps = normal(keys, "latent", (4, 32, 32))              # (B, 4, 32, 32), one CPU generator per row

Mixing is SplitMix64's finaliser (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators"),
in numpy uint64 arithmetic, which wraps modulo 2⁶⁴ on every platform.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (a bijection with full avalanche)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _combine(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(a + _GOLDEN + _mix(np.asarray(b, dtype=np.uint64) + _GOLDEN))


def _u64(keys: torch.Tensor) -> np.ndarray:
    return keys.detach().cpu().numpy().astype(np.int64, copy=False).view(np.uint64)


def _salt(purpose: str) -> int:
    return zlib.crc32(purpose.encode())  # stable across processes (Python's hash() is not)


def sample_keys(seed: int, step: int, slots: torch.Tensor) -> torch.Tensor:
    """(B,) int64 keys of global-batch slots `slots` at `step` of a run seeded with `seed`."""
    base = _combine(np.asarray([seed % 2**64], np.uint64), step % 2**64)
    return torch.from_numpy(_combine(base, slots.cpu().numpy().astype(np.uint64)).view(np.int64))


def stream_seeds(keys: torch.Tensor, purpose: str) -> list[int]:
    """One generator seed in [0, 2⁶⁴) per key for the stream named `purpose`."""
    return [int(s) for s in _combine(_u64(keys), _salt(purpose))]


def generators(keys: torch.Tensor, purpose: str) -> list[torch.Generator]:
    """One seeded CPU generator per key, for draws that are more than a scalar."""
    return [torch.Generator().manual_seed(s) for s in stream_seeds(keys, purpose)]


def uniform(keys: torch.Tensor, purpose: str) -> torch.Tensor:
    """(B,) float64 in [0, 1): one draw per key from stream `purpose`, the top 53 bits of a mixed key."""
    bits = _combine(_u64(keys), _salt(purpose)) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def normal(keys: torch.Tensor, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) float32 standard normal, row b from its own generator."""
    out = torch.empty((len(keys), *shape))
    for row, g in zip(out, generators(keys, purpose)):
        row.normal_(generator=g)
    return out


def randint(keys: torch.Tensor, purpose: str, high: torch.Tensor) -> torch.Tensor:
    """(B,) int64 uniform in [0, high_b) per key (high ≥ 1)."""
    return (uniform(keys, purpose) * high.double()).long().clamp(max=high - 1)
