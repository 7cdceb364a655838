"""Linear CKA (Kornblith et al. 2019) and linear-probe accuracy."""

import numpy as np
import pytest
import scipy.stats
import torch

from layersync.metrics.probes import cka_matrix, linear_cka, linear_probe_accuracy, probe_layers


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XXᵀ, L = YYᵀ, H = I − 11ᵀ/n."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    y = np.tanh(x @ rng.standard_normal((16, 24))) + 0.5 * rng.standard_normal((200, 24))
    return x, y


def test_cka_equals_the_hsic_formula_computed_directly(feats):
    x, y = feats
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x, y), rel=1e-12)
    assert 0.1 < linear_cka(x, y) < 0.9


def test_cka_of_a_feature_set_with_itself_is_one(feats):
    assert linear_cka(feats[0], feats[0]) == pytest.approx(1.0, abs=1e-14)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(feats):
    x, y = feats
    q_x = scipy.stats.ortho_group.rvs(16, random_state=1)
    q_y = scipy.stats.ortho_group.rvs(24, random_state=2)
    assert linear_cka(3.7 * x @ q_x, 0.01 * y @ q_y) == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_cka_is_not_invariant_to_anisotropic_scaling(feats):
    x, y = feats
    scale = np.linspace(0.1, 10, 16)
    assert abs(linear_cka(x * scale, y) - linear_cka(x, y)) > 1e-3


def test_cka_flattens_tokens_and_accepts_low_precision_tensors(feats):
    x, y = feats
    tokens_x = torch.from_numpy(x).reshape(20, 10, 16).to(torch.bfloat16)
    tokens_y = torch.from_numpy(y).reshape(20, 10, 24)
    expected = numpy_cka(tokens_x.double().reshape(200, 16).numpy(), y)
    assert linear_cka(tokens_x, tokens_y) == pytest.approx(expected, rel=1e-10)


def test_cka_rejects_mismatched_examples_and_constant_features(feats):
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(feats[0], feats[1][:100])
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((10, 3)), feats[0][:10])


def test_cka_matrix_is_symmetric_with_unit_diagonal(feats):
    x, y = feats
    blocks, m = cka_matrix({8: y, 2: x})
    assert blocks == [2, 8]
    np.testing.assert_allclose(m, [[1.0, linear_cka(x, y)], [linear_cka(x, y), 1.0]], rtol=1e-12)


def blobs(separation: float, n: int = 300, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.standard_normal((3, d)) * separation
    return centres[labels] + rng.standard_normal((n, d)), labels


def test_probe_separates_well_separated_classes_and_not_random_labels():
    x, labels = blobs(separation=6.0)
    assert linear_probe_accuracy(x, labels) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    assert linear_probe_accuracy(x, shuffled) < 0.5  # chance is 1/3


def test_probe_is_deterministic_and_its_split_follows_the_seed():
    x, labels = blobs(separation=1.0)
    first = linear_probe_accuracy(x, labels, seed=3)
    assert first == linear_probe_accuracy(x, labels, seed=3)
    assert 0.4 < first < 1.0
    accuracies = {linear_probe_accuracy(x, labels, seed=s) for s in range(4)}
    assert len(accuracies) > 1


def test_probe_layers_mean_pools_tokens_per_block():
    x, labels = blobs(separation=6.0, n=120)
    noise = np.random.default_rng(2).standard_normal((120, 4, 8))
    tokens = x[:, None, :] + noise - noise.mean(1, keepdims=True)  # token mean is exactly x
    uninformative = np.random.default_rng(3).standard_normal((120, 4, 8))
    accuracy = probe_layers({4: tokens, 8: uninformative}, labels)
    assert accuracy[4] == linear_probe_accuracy(x, labels) == 1.0
    assert accuracy[8] < 0.6


def test_probe_needs_labels_matching_the_examples():
    with pytest.raises(ValueError, match="labels"):
        linear_probe_accuracy(np.zeros((10, 3)), np.zeros(9))
