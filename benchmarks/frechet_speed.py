"""Fréchet distance at 2048-d: ours (factor of Σa + symmetric eigenvalues, float64 torch) vs scipy's sqrtm.

    python benchmarks/frechet_speed.py                  # 10k x 2048 features, CPU
    python benchmarks/frechet_speed.py --device cuda    # ours on the GPU, scipy on the CPU

Both start from the same means and covariances (np.cov, ddof 1); the reference is the formula of ADM's and
TTUR's evaluators: ‖μa − μb‖² + tr Σa + tr Σb − 2 tr Re sqrtm(Σa Σb). Prints both times, the speed-up and the
absolute and relative difference of the two distances.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch

from layersync.metrics.frechet import frechet_distance_from_stats


def structured_features(rng: np.random.Generator, num_samples: int, dim: int, shift: float) -> np.ndarray:
    """Non-negative, correlated features with a decaying spectrum, like Inception pool3 activations."""
    latent_dim = dim // 2
    mixing = rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)  # (L, D)
    scales = 1.0 / np.sqrt(1.0 + np.arange(latent_dim))  # power-law spectrum
    latent = rng.standard_normal((num_samples, latent_dim)) * scales  # (N, L)
    return np.maximum(latent @ mixing + shift, 0.0)  # (N, D), ReLU-like


def scipy_reference(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """The sqrtm formula of the TTUR/ADM evaluators."""
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean).real)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="device for our implementation: cpu, cuda, cuda:1 …")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    features_a = structured_features(rng, args.num_samples, args.dim, shift=0.1)
    features_b = structured_features(rng, args.num_samples, args.dim, shift=0.2)
    mu_a, sigma_a = features_a.mean(0), np.cov(features_a, rowvar=False)
    mu_b, sigma_b = features_b.mean(0), np.cov(features_b, rowvar=False)
    print(f"features: 2 x {args.num_samples} x {args.dim}; torch threads {torch.get_num_threads()}; "
          f"ours on {args.device}")

    device = torch.device(args.device)
    if device.type == "cuda":  # the first cuSOLVER call pays for its initialisation
        frechet_distance_from_stats(mu_a[:8], sigma_a[:8, :8], mu_b[:8], sigma_b[:8, :8], device=device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    ours = frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, device=device)  # float() syncs
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    reference = scipy_reference(mu_a, sigma_a, mu_b, sigma_b)
    scipy_s = time.perf_counter() - start

    abs_diff = abs(ours - reference)
    print(f"ours  (eigvalsh, float64)  {ours_s:8.2f} s   FD = {ours!r}")
    print(f"scipy (sqrtm)              {scipy_s:8.2f} s   FD = {reference!r}")
    relative = abs_diff / abs(reference)
    print(f"speed-up {scipy_s / ours_s:.1f}x   |diff| = {abs_diff:.3e}   relative = {relative:.3e}")


if __name__ == "__main__":
    main()
