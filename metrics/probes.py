"""Representation probes: linear CKA between layers and linear-probe accuracy per layer.

Linear CKA (Kornblith et al. 2019, eq. 4 with the linear kernel): for column-centred X (n×p), Y (n×q),

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F),

invariant to orthogonal transforms and isotropic scaling of either side, 1 for X = Y. Token features
(B, N, D) are flattened to (B·N, D): every token is one example, as LayerSync aligns tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from layersync.core.errors import UserValueError
from layersync.metrics.frechet import ArrayLike


def _examples(features: ArrayLike, name: str) -> torch.Tensor:
    """(n, d) float64 tensor: (B, D) as is, (B, N, D) tokens flattened to (B·N, D)."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    x = x.detach().to(torch.float64)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise UserValueError(f"{name} must be (B, D) or (B, N, D) tokens, got shape {tuple(x.shape)}")
    return x


def linear_cka(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Linear CKA in float64 between two feature sets of the same examples (widths may differ)."""
    x = _examples(feats_a, "feats_a")
    y = _examples(feats_b, "feats_b").to(x.device)
    if x.shape[0] != y.shape[0]:
        raise UserValueError(f"CKA compares the same examples: got {x.shape[0]} and {y.shape[0]} rows")
    x, y = x - x.mean(0), y - y.mean(0)  # centring = HSIC's H K H for the linear kernel
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2  # ‖YᵀX‖²_F
    norm_x, norm_y = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        raise UserValueError("CKA is undefined for a constant feature set (zero variance after centring)")
    return float(cross / (norm_x * norm_y))


def linear_probe_accuracy(
    features: ArrayLike,
    labels: ArrayLike,
    test_fraction: float = 0.25,
    seed: int = 0,
    inverse_l2: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features (seeded split, lbfgs).

    (B, N, D) token features are mean-pooled over tokens first (one label per example). `inverse_l2` is
    sklearn's C. Deterministic: lbfgs has no randomness and the split is drawn from `seed`.
    """
    # sklearn costs seconds to import; only probing needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    x = x.detach().double().cpu()
    x = (x.mean(1) if x.ndim == 3 else x).numpy()
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (len(x),):
        raise UserValueError(f"expected (B, D) or (B, N, D) features and (B,) labels, got {x.shape}, "
                             f"{y.shape}")
    if not 0 < test_fraction < 1:
        raise UserValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    if len(np.unique(y[train])) < 2:
        raise UserValueError("the training split holds fewer than two classes; use more examples")
    scaler = StandardScaler().fit(x[train])
    probe = LogisticRegression(C=inverse_l2, max_iter=max_iter)
    probe.fit(scaler.transform(x[train]), y[train])
    return float(probe.score(scaler.transform(x[test]), y[test]))


def probe_layers(
    hidden: Mapping[int, ArrayLike], labels: ArrayLike, test_fraction: float = 0.25, seed: int = 0
) -> dict[int, float]:
    """Linear-probe accuracy of every captured block (e.g. `ModelOutput.hidden`), same split for all."""
    return {block: linear_probe_accuracy(x, labels, test_fraction, seed) for block, x in hidden.items()}


def cka_matrix(hidden: Mapping[int, ArrayLike]) -> tuple[list[int], np.ndarray]:
    """Blocks and their (L, L) pairwise linear CKA, symmetric with ones on the diagonal."""
    blocks = sorted(hidden)
    out = np.eye(len(blocks))
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            out[i, j] = out[j, i] = linear_cka(hidden[a], hidden[blocks[j]])
    return blocks, out
