"""ADM's image metrics (Dhariwal & Nichol 2021): FID, sFID, Inception Score, improved precision and recall.

Mirrors guided-diffusion's evaluations/evaluator.py on the FID Inception port: FID on pool_3, sFID on the
2023 spatial features, IS from the bias-free logits in splits of 5000, precision/recall with k = 3 on
pool_3 of the reference batch's 10 000 images against all samples. Deliberate difference: pairwise
distances are float32 throughout, where ADM's graph first tries float16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layersync.core.errors import UserValueError
from layersync.metrics.adm_npz import POOL_FEATURES_KEY, check_images, iter_npz_batches, npz_keys
from layersync.metrics.frechet import ArrayLike, FeatureStats, GaussianStats
from layersync.metrics.inception import no_tf32


@dataclass(frozen=True, eq=False)
class Activations:
    """Inception outputs of one image set: per-image pool_3 and logits, streaming float64 statistics."""

    pool: np.ndarray  # (N, 2048) float32
    logits: np.ndarray  # (N, 1008) float32
    pool_stats: FeatureStats
    spatial_stats: FeatureStats


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def compute_activations(model: nn.Module, batches: Iterable[np.ndarray]) -> Activations:
    """Run uint8 (B, H, W, 3) batches through the FID Inception (any module returning InceptionOutput)."""
    if model.training:
        raise UserValueError("the feature model is in training mode (batch norm on batch statistics); call "
                             ".eval()")
    device = _model_device(model)
    pool_stats = spatial_stats = None
    pools, logits = [], []
    for batch in batches:
        check_images(batch, "each image batch")
        images = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2)  # (B, 3, H, W), a copy
        out = model(images)
        if pool_stats is None:  # 2048 and 2023 for the FID Inception
            pool_stats = FeatureStats(out.pool.shape[1], device=device)
            spatial_stats = FeatureStats(out.spatial.shape[1], device=device)
        pool_stats.update(out.pool)
        spatial_stats.update(out.spatial)
        pools.append(out.pool.float().cpu().numpy())
        logits.append(out.logits.float().cpu().numpy())
    if not pools:
        raise UserValueError("no images to evaluate: the batch iterator was empty")
    return Activations(np.concatenate(pools), np.concatenate(logits), pool_stats, spatial_stats)


def inception_score(logits: ArrayLike, split_size: int = 5000) -> float:
    """IS = exp E_x KL(p(y|x) ‖ p(y)) per split, averaged over splits (Salimans et al. 2016), in float64.

    Splits are consecutive chunks of `split_size` as in ADM, i.e. 10 splits for the usual 50 000 samples.
    """
    logits = torch.as_tensor(logits).double()
    if logits.ndim != 2 or len(logits) == 0:
        raise UserValueError(f"expected (N, classes) logits, got shape {tuple(logits.shape)}")
    log_probs = torch.log_softmax(logits, dim=1)  # (N, C)
    scores = []
    for chunk in log_probs.split(split_size):
        log_marginal = torch.logsumexp(chunk, dim=0) - math.log(len(chunk))  # (C,) log p(y) in the split
        kl = (chunk.exp() * (chunk - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    return float(torch.stack(scores).mean())


def _squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖u_i − v_j‖² = ‖u_i‖² − 2 u_i·v_j + ‖v_j‖², clamped at 0, (I, J) float32 (as Kynkäänniemi et al.)."""
    with no_tf32():
        d = (u * u).sum(1, keepdim=True) - 2 * u @ v.T + (v * v).sum(1)[None]
    return d.clamp_min_(0)


def manifold_radii(
    features: ArrayLike, k: int = 3, batch_size: int = 2048, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Squared distance from each feature vector to its k-th nearest neighbour in the set, itself excluded."""
    x = torch.as_tensor(features).to(device=device, dtype=torch.float32)  # (N, D)
    if len(x) < k + 1:
        raise UserValueError(f"k-NN radii with k={k} need at least {k + 1} feature vectors, got {len(x)}")
    radii = [
        # Each row's own zero distance sorts first, so the (k+1)-th smallest is the k-th neighbour.
        torch.kthvalue(_squared_distances(rows, x), k + 1, dim=1).values
        for rows in x.split(batch_size)
    ]
    return torch.cat(radii)  # (N,)


def precision_recall(
    reference: ArrayLike,
    samples: ArrayLike,
    k: int = 3,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of samples against reference features.

    Each set's manifold is the union of balls reaching every vector's k-th nearest neighbour. Precision is
    the fraction of samples inside the reference manifold, recall the fraction of references inside the
    sample manifold.
    """
    ref = torch.as_tensor(reference).to(device=device, dtype=torch.float32)  # (M, D)
    gen = torch.as_tensor(samples).to(device=device, dtype=torch.float32)  # (N, D)
    ref_radii = manifold_radii(ref, k, batch_size, device)  # (M,)
    gen_radii = manifold_radii(gen, k, batch_size, device)  # (N,)
    gen_inside = torch.zeros(len(gen), dtype=torch.bool, device=device)
    ref_inside = torch.zeros(len(ref), dtype=torch.bool, device=device)
    for i in range(0, len(ref), batch_size):
        for j in range(0, len(gen), batch_size):
            d = _squared_distances(ref[i : i + batch_size], gen[j : j + batch_size])  # (I, J)
            gen_inside[j : j + batch_size] |= (d <= ref_radii[i : i + batch_size, None]).any(0)
            ref_inside[i : i + batch_size] |= (d <= gen_radii[None, j : j + batch_size]).any(1)
    return int(gen_inside.sum()) / len(gen), int(ref_inside.sum()) / len(ref)


@dataclass(frozen=True, eq=False)
class ReferenceBatch:
    """What samples are compared with: dataset Gaussians (FID, sFID), pool_3 features (precision/recall)."""

    pool: GaussianStats  # 2048-d
    spatial: GaussianStats  # 2023-d
    pool_features: np.ndarray  # (M, 2048), M = 10 000 in ADM's reference batches


def _array_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def read_reference_batch(
    path: str | os.PathLike, model: nn.Module | None = None, batch_size: int = 64
) -> ReferenceBatch:
    """Load an ADM reference batch, computing whatever it does not store from `arr_0` with `model`.

    With `mu`, `sigma`, `mu_s`, `sigma_s` present (ADM's reference batches) those are used, as ADM does;
    otherwise (a plain sample batch as reference) they are fitted to `arr_0`. Pool features come from our
    `pool_features` key when present, else from running `arr_0` through the model.
    """
    keys = set(npz_keys(path))
    has_stats = {"mu", "sigma", "mu_s", "sigma_s"} <= keys
    if has_stats and POOL_FEATURES_KEY in keys:
        with np.load(path) as data:
            pool_features = data[POOL_FEATURES_KEY]
        return ReferenceBatch(
            GaussianStats.load(path), GaussianStats.load(path, "mu_s", "sigma_s"), pool_features
        )
    if model is None:
        raise UserValueError(
            f"{path} stores no {POOL_FEATURES_KEY!r}{'' if has_stats else ' and no mu/sigma/mu_s/sigma_s'}; "
            "pass the FID Inception (load_fid_inception()) to compute them from its arr_0 images"
        )
    acts = compute_activations(model, iter_npz_batches(path, "arr_0", batch_size))
    if has_stats:
        pool, spatial = GaussianStats.load(path), GaussianStats.load(path, "mu_s", "sigma_s")
    else:
        pool, spatial = acts.pool_stats.gaussian(), acts.spatial_stats.gaussian()
    return ReferenceBatch(pool, spatial, acts.pool)


def evaluate_fid_suite(
    samples: str | os.PathLike | np.ndarray,
    reference: str | os.PathLike | ReferenceBatch,
    model: nn.Module,
    batch_size: int = 64,
) -> dict[str, float | int | str]:
    """FID, sFID, IS, precision and recall of samples (ADM npz path or uint8 NHWC array) against a reference.

    `model` is the FID Inception (`load_fid_inception()`); its `preprocess` names the protocol: "adm" is
    ADM's evaluator, "pytorch_fid" the same metrics on pytorch-fid's resize.
    """
    if not isinstance(reference, ReferenceBatch):
        reference = read_reference_batch(reference, model, batch_size)
    if isinstance(samples, np.ndarray):
        batches = _array_batches(check_images(samples, "samples"), batch_size)
    else:
        batches = iter_npz_batches(samples, "arr_0", batch_size)
    acts = compute_activations(model, batches)
    device = _model_device(model)
    precision, recall = precision_recall(reference.pool_features, acts.pool, device=device)
    return {
        "fid": acts.pool_stats.gaussian().frechet_distance(reference.pool, device=device),
        "sfid": acts.spatial_stats.gaussian().frechet_distance(reference.spatial, device=device),
        "is": inception_score(acts.logits),
        "precision": precision,
        "recall": recall,
        "num_samples": len(acts.pool),
        "protocol": str(model.preprocess),
    }
