"""Fréchet distance: golden values, scipy's sqrtm, closed forms, streaming/merged/all-reduced statistics."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from layersync.metrics.frechet import (
    FeatureStats,
    GaussianStats,
    frechet_distance,
    frechet_distance_from_stats,
)

GOLDEN = Path(__file__).resolve().parent / "golden" / "metrics_golden.npz"  # see golden/README.md


def structured(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    """Correlated, non-negative features (ReLU of a random mixing), like network activations."""
    return np.maximum(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + shift, 0)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The TTUR/ADM reference: sqrtm of the non-symmetric product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def test_frechet_distance_matches_golden_value_to_1e_6():
    golden = np.load(GOLDEN)
    got = frechet_distance(golden["features_a"], golden["features_b"])
    assert got == pytest.approx(float(golden["frechet_distance"]), rel=1e-6)


def test_frechet_distance_matches_scipy_sqrtm_on_correlated_features():
    rng = np.random.default_rng(0)
    a, b = structured(rng, 400, 48, 0.1), structured(rng, 500, 48, 0.3)
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-9)


def test_one_dimensional_gaussians_give_mean_and_std_differences_squared():
    # d² = (μa − μb)² + (σa − σb)² for scalars.
    got = frechet_distance_from_stats(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert got == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-12)


def test_diagonal_covariances_give_closed_form_including_singular_ones():
    # Commuting Σ: tr (Σa Σb)^½ = Σ √(a_i b_i); a zero variance exercises the clamped eigenvalues.
    var_a, var_b = np.array([1.0, 0.0, 2.5]), np.array([4.0, 1.0, 0.5])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_rank_deficient_features_score_as_their_full_rank_isometric_image():
    # (x, y, x) = Q (√2·x, y) with Q an isometry onto a plane: the 3-d covariances are singular (eigh
    # factor) and the 2-d ones positive definite (Cholesky factor); the distances must agree.
    rng = np.random.default_rng(8)
    a, b = structured(rng, 300, 2, 0.1), structured(rng, 300, 2, 0.4)
    lift = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # (2, 3)
    scale = np.diag([np.sqrt(2.0), 1.0])
    full_rank = frechet_distance(a @ scale, b @ scale)
    assert frechet_distance(a @ lift, b @ lift) == pytest.approx(full_rank, rel=1e-9)


def test_distance_is_symmetric_and_zero_between_identical_sets():
    rng = np.random.default_rng(1)
    a, b = structured(rng, 200, 16, 0.0), structured(rng, 300, 16, 0.5)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert abs(frechet_distance(a, a)) < 1e-9
    assert frechet_distance(a, b) > 0.1


def test_torch_and_numpy_inputs_agree_and_float32_is_promoted():
    rng = np.random.default_rng(2)
    a, b = structured(rng, 100, 8, 0.0), structured(rng, 120, 8, 0.2)
    reference = frechet_distance(a, b)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(reference, rel=1e-12)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert frechet_distance(torch.from_numpy(a32), b32) == pytest.approx(
        frechet_distance(a32.astype(np.float64), b32.astype(np.float64)), rel=1e-12
    )


def test_fewer_samples_than_dimension_plus_one_is_a_value_error():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 65 samples"):
        frechet_distance(rng.standard_normal((64, 64)), rng.standard_normal((100, 64)))
    stats = FeatureStats(64)
    stats.update(rng.standard_normal((64, 64)))
    with pytest.raises(ValueError, match="at least 65 samples"):
        stats.gaussian()


def test_mismatched_shapes_and_nan_statistics_are_value_errors():
    with pytest.raises(ValueError, match="one D"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_from_stats(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_streaming_statistics_equal_numpy_mean_and_cov_over_uneven_batches():
    rng = np.random.default_rng(4)
    x = structured(rng, 257, 12, 0.3) + 5.0  # an offset mean tests the Σxxᵀ − nμμᵀ cancellation
    x[:50] = x[:50].astype(np.float32)  # the first batch goes in as a float32 tensor, exactly
    stats = FeatureStats(12)
    stats.update(torch.from_numpy(x[:50]).float())
    for start in range(50, 257, 50):
        stats.update(x[start : start + 50])
    assert stats.count == 257
    np.testing.assert_allclose(stats.mean().numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov().numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-11)


def test_merged_statistics_equal_statistics_of_all_data():
    rng = np.random.default_rng(5)
    x, y = structured(rng, 300, 10, 0.2), structured(rng, 250, 10, 0.1)
    part_a, part_b, both = FeatureStats(10), FeatureStats(10), FeatureStats(10)
    part_a.update(x[:100])
    part_b.update(x[100:])
    both.update(x)
    merged = part_a.merge(part_b).gaussian()
    whole = both.gaussian()
    np.testing.assert_allclose(merged.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-10, atol=1e-12)
    other = FeatureStats(10)
    other.update(y)
    assert merged.frechet_distance(other.gaussian()) == pytest.approx(frechet_distance(x, y), rel=1e-9)
    with pytest.raises(ValueError, match="cannot merge"):
        part_a.merge(FeatureStats(11))


def test_gaussian_stats_save_and_load_with_adm_keys(tmp_path):
    rng = np.random.default_rng(6)
    stats = FeatureStats(6)
    stats.update(rng.standard_normal((40, 6)))
    gaussian = stats.gaussian()
    gaussian.save(tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as data:
        assert sorted(data.files) == ["mu", "sigma"]
    loaded = GaussianStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, gaussian.mu)
    np.testing.assert_array_equal(loaded.sigma, gaussian.sigma)
    with pytest.raises(KeyError, match="mu_s"):
        GaussianStats.load(tmp_path / "ref.npz", "mu_s", "sigma_s")


_ALL_REDUCE_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch.distributed as dist
    from layersync.metrics.frechet import FeatureStats

    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x = np.random.default_rng(0).standard_normal((31, 5))
    stats = FeatureStats(5)
    stats.update(x[rank::world])
    stats.all_reduce()
    np.savez(out, count=stats.count, mean=stats.mean().numpy(), cov=stats.cov().numpy())
    dist.destroy_process_group()
    """
)


def test_all_reduce_sums_statistics_over_processes(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    workers = [
        subprocess.Popen([sys.executable, "-c", _ALL_REDUCE_WORKER, str(rank), "2", init, str(out)])
        for rank, out in enumerate([tmp_path / "0.npz", tmp_path / "1.npz"])
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    x = np.random.default_rng(0).standard_normal((31, 5))
    for rank in range(2):
        got = np.load(tmp_path / f"{rank}.npz")
        assert int(got["count"]) == 31
        np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got["cov"], np.cov(x, rowvar=False), rtol=1e-10, atol=1e-14)


def test_all_reduce_without_process_group_keeps_local_statistics():
    stats = FeatureStats(3)
    stats.update(np.arange(12.0).reshape(4, 3))
    stats.all_reduce()
    assert stats.count == 4
    np.testing.assert_array_equal(stats.mean().numpy(), [4.5, 5.5, 6.5])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frechet_distance_on_gpu_equals_cpu():
    rng = np.random.default_rng(7)
    a, b = structured(rng, 600, 256, 0.1), structured(rng, 700, 256, 0.2)
    assert frechet_distance(a, b, device="cuda") == pytest.approx(frechet_distance(a, b), rel=1e-10)
