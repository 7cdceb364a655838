"""Fréchet distance between Gaussians fitted to feature sets (FID, sFID, FAD, FVD all reduce to it).

    d² = ‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½        (Dowson & Landau 1982; Heusel et al. 2017)

The usual code takes `scipy.linalg.sqrtm(Σa Σb)`, a Schur decomposition of a non-symmetric matrix. Σa Σb is
similar to the symmetric PSD matrix Σa^½ Σb Σa^½, so the traces of their square roots agree and a factor of Σa
and a symmetric eigendecomposition suffice: exact in float64, several times faster, and they run on a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from layersync.core.errors import UserKeyError, UserValueError

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike, device: torch.device | str | None) -> torch.Tensor:
    """A float64 tensor on `device` (default: where `x` already is; CPU for numpy)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    return x.to(device=device if device is not None else x.device, dtype=torch.float64)


def _check_enough_samples(num_samples: int, dim: int) -> None:
    """A D-dimensional covariance has full rank only with at least D + 1 samples."""
    if num_samples < dim + 1:
        raise UserValueError(
            f"a Fréchet distance on {dim}-d features needs at least {dim + 1} samples (D + 1) for a "
            f"full-rank covariance, got {num_samples}; evaluate more samples (FID protocols use 50 000)"
        )


def _trace_sqrt_product(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """tr (Σa Σb)^½ for PSD Σa, Σb, from the eigenvalues of the symmetric PSD matrix Cᵀ Σb C.

    For any C with C Cᵀ = Σa, Cᵀ Σb C is similar to Σa Σb (and to Σa^½ Σb Σa^½), so they share eigenvalues.
    C is the Cholesky factor when Σa is positive definite (one O(D³/3) factorisation, ~3× cheaper than an
    eigendecomposition) and V Λ^½ from Σa = V Λ Vᵀ when it is singular; both are exact. Eigenvalues a
    rounding error below zero are clamped.
    """
    sigma_a = (sigma_a + sigma_a.T) / 2
    factor, info = torch.linalg.cholesky_ex(sigma_a)  # (D, D) lower-triangular, info > 0: not PD
    if info.item() != 0:
        evals, evecs = torch.linalg.eigh(sigma_a)
        factor = evecs * evals.clamp_min(0).sqrt()  # (D, D), C = V Λ^½
    inner = factor.T @ sigma_b @ factor  # (D, D), symmetric PSD up to rounding
    return torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance_from_stats(
    mu_a: ArrayLike,
    sigma_a: ArrayLike,
    mu_b: ArrayLike,
    sigma_b: ArrayLike,
    device: torch.device | str | None = None,
) -> float:
    """Fréchet distance between N(μa, Σa) and N(μb, Σb), in float64 on `device`."""
    mu_a, mu_b = _as_float64(mu_a, device), _as_float64(mu_b, device)
    device = mu_a.device
    sigma_a, sigma_b = _as_float64(sigma_a, device), _as_float64(sigma_b, device)
    dim = mu_a.shape[-1]
    shapes = (mu_a.shape, mu_b.shape, sigma_a.shape, sigma_b.shape)
    if shapes != ((dim,), (dim,), (dim, dim), (dim, dim)):
        raise UserValueError(
            f"expected means (D,) and covariances (D, D) of one D; got {tuple(mu_a.shape)}, "
            f"{tuple(sigma_a.shape)}, {tuple(mu_b.shape)}, {tuple(sigma_b.shape)}"
        )
    for name, t in (("mu_a", mu_a), ("sigma_a", sigma_a), ("mu_b", mu_b), ("sigma_b", sigma_b)):
        if not torch.isfinite(t).all():
            raise UserValueError(f"{name} has NaN or inf entries; check the features it was computed from")
    tr_covmean = _trace_sqrt_product(sigma_a, sigma_b)
    diff = mu_a - mu_b
    distance = diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2 * tr_covmean
    return float(distance)


def frechet_distance(
    features_a: ArrayLike, features_b: ArrayLike, device: torch.device | str | None = None, ddof: int = 1
) -> float:
    """Fréchet distance between Gaussians fitted (mean, covariance with `ddof`: 1 as np.cov, 0 as StyleGAN's
    FeatureStats) to two (N, D) feature sets."""
    stats = []
    for name, feats in (("features_a", features_a), ("features_b", features_b)):
        x = _as_float64(feats, device)  # (N, D)
        if x.ndim != 2:
            raise UserValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")
        _check_enough_samples(x.shape[0], x.shape[1])
        mu = x.mean(0)  # (D,)
        centred = x - mu  # (N, D); two-pass covariance, as np.cov
        stats += [mu, centred.T @ centred / (x.shape[0] - ddof)]
    if stats[0].shape != stats[2].shape:
        raise UserValueError(f"feature dimensions differ: {stats[0].shape[0]} vs {stats[2].shape[0]}")
    return frechet_distance_from_stats(*stats, device=device)


@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Mean and covariance of a feature set, stored as ADM stores them (npz keys `mu`, `sigma`)."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64

    def __post_init__(self) -> None:
        mu, sigma = np.asarray(self.mu, np.float64), np.asarray(self.sigma, np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise UserValueError(f"expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def frechet_distance(self, other: GaussianStats, device: torch.device | str | None = None) -> float:
        """Fréchet distance to `other`."""
        return frechet_distance_from_stats(self.mu, self.sigma, other.mu, other.sigma, device=device)

    def save(self, path: str | os.PathLike) -> None:
        """Write an npz with keys `mu` and `sigma` (readable by ADM's evaluator and pytorch-fid)."""
        np.savez(path, mu=self.mu, sigma=self.sigma)

    @classmethod
    def load(
        cls, path: str | os.PathLike, mu_key: str = "mu", sigma_key: str = "sigma"
    ) -> GaussianStats:
        """Read from an npz; ADM reference batches keep the sFID Gaussian under `mu_s`, `sigma_s`."""
        with np.load(path) as data:
            missing = [k for k in (mu_key, sigma_key) if k not in data.files]
            if missing:
                raise UserKeyError(f"{path} lacks {missing}; it holds {sorted(data.files)}")
            return cls(data[mu_key], data[sigma_key])


class FeatureStats:
    """Streaming float64 sums Σx and Σxxᵀ over batches; merged across processes, then mean and covariance."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)  # (D,)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)  # (D, D)

    def update(self, batch: ArrayLike) -> None:
        """Add a (B, D) batch of features."""
        x = _as_float64(batch, self.sum.device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserValueError(f"expected a (B, {self.dim}) batch, got shape {tuple(x.shape)}")
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the sums of `other` (e.g. gathered from another process) to these; returns self."""
        if other.dim != self.dim:
            raise UserValueError(f"cannot merge {other.dim}-d statistics into {self.dim}-d ones")
        self.count += other.count
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum.device)
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum the statistics over all processes of the default torch.distributed group; returns self.

        Without an initialised process group this process holds all the data and nothing changes.
        The tensors must live where the backend expects them (CUDA for NCCL, any device for gloo).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        packed = torch.cat([count, self.sum, self.sum_outer.flatten()])  # one collective, exact in float64
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        self.count = int(packed[0].item())
        self.sum = packed[1 : 1 + self.dim].clone()
        self.sum_outer = packed[1 + self.dim :].reshape(self.dim, self.dim).clone()
        return self

    def mean(self) -> torch.Tensor:
        """μ = Σx / n, (D,) float64."""
        if self.count < 1:
            raise UserValueError("no features were added; call update() first")
        return self.sum / self.count

    def cov(self, ddof: int = 1) -> torch.Tensor:
        """Σ = (Σxxᵀ − n μμᵀ) / (n − ddof): ddof 1 the unbiased covariance as np.cov, ddof 0 StyleGAN's
        (`FeatureStats.get_mean_cov`, used by StyleGAN-V's FVD); (D, D) float64."""
        if self.count < 2:
            raise UserValueError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.mean()
        sigma = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - ddof)
        return (sigma + sigma.T) / 2

    def gaussian(self, ddof: int = 1) -> GaussianStats:
        """The fitted Gaussian (numpy float64); needs at least D + 1 samples for a Fréchet distance."""
        _check_enough_samples(self.count, self.dim)
        return GaussianStats(self.mean().cpu().numpy(), self.cov(ddof).cpu().numpy())
