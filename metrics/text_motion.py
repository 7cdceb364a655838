"""Text-to-motion metrics of the T2M protocol (Guo et al. 2022, utils/metrics.py and final_evaluations.py).

All act on evaluator embeddings (`t2m_evaluator.py`), row i of the text and motion arrays belonging together:
- R-precision: consecutive batches of 32 pairs (the incomplete last batch dropped, as T2M's DataLoader with
  drop_last); each text ranks the 32 motions of its batch by Euclidean distance; top-k = fraction whose own
  motion is among the k nearest;
- matching score: mean Euclidean distance between each text and its own motion, over the same rows;
- FID: Fréchet distance between Gaussians of generated and real motion embeddings;
- diversity: mean distance between 300 random pairs of motion embeddings (two draws without replacement);
- multimodality: per text, mean distance between 10 random pairs of its generations (same draw for all texts);
- each metric is repeated (T2M: 20 times) and reported as mean ± 1.96·std/√n, std with ddof 0 (np.std).
Randomness comes from a seeded `np.random.Generator` instead of T2M's global numpy state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from layersync.core.errors import UserValueError
from layersync.metrics.frechet import ArrayLike, frechet_distance


@dataclass(frozen=True)
class T2MProtocol:
    """The numbers that define the T2M evaluation."""

    name: str = "t2m"
    r_precision_batch_size: int = 32
    top_k: int = 3
    diversity_pairs: int = 300
    multimodality_pairs: int = 10
    replications: int = 20
    distance: str = "euclidean"
    ci: str = "mean ± 1.96·std(ddof=0)/sqrt(replications)"

    def to_dict(self) -> dict:
        return asdict(self)


T2M_PROTOCOL = T2MProtocol()


def _paired(text_emb: ArrayLike, motion_emb: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    text, motion = np.asarray(text_emb, dtype=np.float64), np.asarray(motion_emb, dtype=np.float64)
    if text.ndim != 2 or text.shape != motion.shape:
        raise UserValueError(f"expected paired (N, D) embeddings of one shape, got {text.shape}, "
                             f"{motion.shape}")
    return text, motion


def _full_batches(n: int, batch_size: int) -> int:
    if n < batch_size:
        raise UserValueError(f"R-precision needs at least one full batch of {batch_size} pairs, got {n}")
    return n // batch_size * batch_size


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) Euclidean distances, from differences (no ‖a‖² − 2ab + ‖b‖² cancellation)."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def r_precision(
    text_emb: ArrayLike, motion_emb: ArrayLike, batch_size: int = 32, top_k: int = 3
) -> np.ndarray:
    """(top_k,) fractions of texts whose motion is among their k nearest in its batch, k = 1 … top_k."""
    text, motion = _paired(text_emb, motion_emb)
    n = _full_batches(len(text), batch_size)
    if not 1 <= top_k <= batch_size:
        raise UserValueError(f"top_k must be in [1, {batch_size}], got {top_k}")
    hits = np.zeros(top_k)
    for start in range(0, n, batch_size):
        batch = slice(start, start + batch_size)
        dist = euclidean_distances(text[batch], motion[batch])  # (B, B)
        # Rank of the true motion = number of motions strictly closer; ties count in the text's favour,
        # as a stable sort placing the true index first among equals would.
        own = np.diag(dist)[:, None]
        rank = (dist < own).sum(1)  # (B,)
        hits += (rank[:, None] < np.arange(1, top_k + 1)[None, :]).sum(0)
    return hits / n


def matching_score(text_emb: ArrayLike, motion_emb: ArrayLike, batch_size: int | None = 32) -> float:
    """Mean ‖text_i − motion_i‖ over the rows R-precision uses (all rows if `batch_size` is None)."""
    text, motion = _paired(text_emb, motion_emb)
    n = len(text) if batch_size is None else _full_batches(len(text), batch_size)
    return float(np.linalg.norm(text[:n] - motion[:n], axis=1).mean())


def motion_fid(gen_motion_emb: ArrayLike, real_motion_emb: ArrayLike) -> float:
    """FID between generated and real motion embeddings (ddof-1 covariances, as T2M's np.cov)."""
    return frechet_distance(gen_motion_emb, real_motion_emb)


def diversity(motion_emb: ArrayLike, num_pairs: int = 300, seed: int = 0) -> float:
    """Mean distance between `num_pairs` pairs: two independent draws of distinct rows (T2M: 300)."""
    x = np.asarray(motion_emb, dtype=np.float64)
    if x.ndim != 2 or len(x) <= num_pairs:
        raise UserValueError(f"diversity needs (N, D) embeddings with N > {num_pairs}, got {x.shape}")
    rng = np.random.default_rng(seed)
    first = rng.choice(len(x), num_pairs, replace=False)
    second = rng.choice(len(x), num_pairs, replace=False)
    return float(np.linalg.norm(x[first] - x[second], axis=1).mean())


def multimodality(motion_emb: ArrayLike, num_pairs: int = 10, seed: int = 0) -> float:
    """(texts, generations per text, D) embeddings → mean distance of `num_pairs` pairs per text."""
    x = np.asarray(motion_emb, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] <= num_pairs:
        raise UserValueError(f"multimodality needs (texts, R, D) embeddings with R > {num_pairs}, got "
                             f"{x.shape}")
    rng = np.random.default_rng(seed)
    first = rng.choice(x.shape[1], num_pairs, replace=False)
    second = rng.choice(x.shape[1], num_pairs, replace=False)
    return float(np.linalg.norm(x[:, first] - x[:, second], axis=2).mean())


def mean_ci95(values: ArrayLike) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(mean, 1.96·std/√n) over repeats along axis 0, std with ddof 0 as T2M's get_metric_statistics."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0 or len(v) < 1:
        raise UserValueError("mean_ci95 needs a non-empty sequence of repeated measurements")
    mean, half = v.mean(0), 1.96 * v.std(0) / np.sqrt(len(v))
    return (float(mean), float(half)) if v.ndim == 1 else (mean, half)
