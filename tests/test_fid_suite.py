"""ADM suite: Inception Score, k-NN precision/recall, ADM npz batches, and the whole evaluate_fid_suite."""

import numpy as np
import pytest
import torch
from torch import nn

from layersync.metrics.adm_npz import iter_npz_batches, npz_keys, write_reference_batch, write_sample_batch
from layersync.metrics.fid_suite import (
    compute_activations,
    evaluate_fid_suite,
    inception_score,
    manifold_radii,
    precision_recall,
    read_reference_batch,
)
from layersync.metrics.frechet import frechet_distance_from_stats
from layersync.metrics.inception import InceptionOutput


class TinyFeatureModel(nn.Module):
    """Stands in for the FID Inception (at 299 px and 2048-d far too slow for the ≥ D + 1 images FID needs on
    a CPU): fixed random non-linear features of 8×8 images, 24-d pool, 20-d spatial, 10 logits."""

    preprocess = "adm"

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden = nn.Parameter(torch.randn(192, 64, generator=generator) / 192**0.5, requires_grad=False)
        self.out = nn.Parameter(torch.randn(64, 24 + 20 + 10, generator=generator) / 8, requires_grad=False)

    def forward(self, images: torch.Tensor) -> InceptionOutput:  # (B, 3, 8, 8) uint8
        x = images.float().flatten(1) / 127.5 - 1  # (B, 192)
        features = torch.relu(torch.tanh(x @ self.hidden * 2) @ self.out)  # (B, 54)
        return InceptionOutput(features[:, :24], features[:, 24:44], 4 * features[:, 44:])


def images(n: int, seed: int, brightness: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (n, 8, 8, 3)) + brightness, 0, 255).astype(np.uint8)  # (N, H, W, 3)


def adm_inception_score(logits: np.ndarray, split_size: int) -> float:
    """guided-diffusion's formula, in float64 numpy."""
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_is_one_for_uniform_and_number_of_classes_for_confident_balanced_predictions():
    assert inception_score(np.zeros((100, 1008))) == pytest.approx(1.0, abs=1e-12)
    confident = 200.0 * np.eye(10)[np.arange(1000) % 10]  # (1000, 10), each class equally often
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-9)


def test_training_mode_models_and_bad_logits_are_value_errors():
    with pytest.raises(ValueError, match="call .eval()"):
        compute_activations(TinyFeatureModel().train(), [images(2, seed=0)])
    with pytest.raises(ValueError, match="no images"):
        compute_activations(TinyFeatureModel().eval(), [])
    with pytest.raises(ValueError, match=r"\(N, classes\)"):
        inception_score(np.zeros(10))


def test_inception_score_matches_adm_formula_in_splits_of_5000():
    logits = np.random.default_rng(0).standard_normal((12_000, 50)) * 3  # splits of 5000, 5000, 2000
    assert inception_score(logits) == pytest.approx(adm_inception_score(logits, 5000), rel=1e-10)
    one_split = adm_inception_score(logits, 12_000)
    assert inception_score(logits, split_size=12_000) == pytest.approx(one_split, rel=1e-10)
    assert inception_score(logits) != pytest.approx(inception_score(logits, split_size=12_000), rel=1e-4)


def test_manifold_radii_are_squared_kth_neighbour_distances_known_values():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    np.testing.assert_array_equal(manifold_radii(points, k=1).numpy(), [1, 1, 4, 9, 16])
    np.testing.assert_array_equal(manifold_radii(points, k=2, batch_size=2).numpy(), [9, 4, 9, 16, 49])
    with pytest.raises(ValueError, match="at least 4"):
        manifold_radii(points[:3], k=3)


def test_precision_and_recall_known_values():
    reference = np.array([[0.0], [1.0], [2.0], [3.0], [100.0], [101.0]])  # k=1 radii² all 1
    samples = np.array([[0.5], [2.9], [10.0], [20.0]])  # radii² 5.76, 5.76, 50.41, 100
    precision, recall = precision_recall(reference, samples, k=1)
    assert precision == 0.5  # 0.5 and 2.9 lie in reference balls; 10 and 20 do not
    assert recall == pytest.approx(4 / 6)  # 100 and 101 are far from every sample ball


def test_precision_and_recall_match_brute_force_in_float64_for_any_batch_size():
    rng = np.random.default_rng(1)
    reference, samples = rng.standard_normal((300, 16)), rng.standard_normal((250, 16)) * 1.3 + 0.2
    d_rr = ((reference[:, None] - reference[None]) ** 2).sum(-1)
    d_ss = ((samples[:, None] - samples[None]) ** 2).sum(-1)
    d_rs = ((reference[:, None] - samples[None]) ** 2).sum(-1)  # (300, 250)
    radii_r, radii_s = np.sort(d_rr, 1)[:, 3], np.sort(d_ss, 1)[:, 3]  # k = 3, self at index 0
    expected = (d_rs <= radii_r[:, None]).any(0).mean(), (d_rs <= radii_s[None]).any(1).mean()
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # neither trivially 0 nor 1
    assert precision_recall(reference, samples) == pytest.approx(expected, abs=0)
    assert precision_recall(reference, samples, batch_size=64) == pytest.approx(expected, abs=0)
    assert precision_recall(samples, samples) == (1.0, 1.0)


def test_sample_batch_round_trips_through_streamed_batches(tmp_path):
    pictures, labels = images(7, seed=2), np.arange(7) % 3
    write_sample_batch(tmp_path / "samples.npz", pictures, labels)
    assert sorted(npz_keys(tmp_path / "samples.npz")) == ["arr_0", "arr_1"]
    batches = list(iter_npz_batches(tmp_path / "samples.npz", batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), pictures)
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["arr_1"], labels)
    np.savez_compressed(tmp_path / "compressed.npz", arr_0=pictures)
    streamed = np.concatenate(list(iter_npz_batches(tmp_path / "compressed.npz")))
    np.testing.assert_array_equal(streamed, pictures)


def test_bad_sample_batches_are_rejected_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="uint8 \\(N, H, W, 3\\)"):
        write_sample_batch(tmp_path / "x.npz", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_sample_batch(tmp_path / "x.npz", np.zeros((2, 8, 8, 3), np.float32))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(KeyError, match="holds \\['images'\\]"):
        next(iter_npz_batches(tmp_path / "other.npz"))


@pytest.fixture(scope="module")
def suite_data():
    """A 'dataset' whose Gaussians go into the reference batch, 100 of its images, and 210 samples."""
    model = TinyFeatureModel().eval()
    dataset, samples = images(500, seed=3), images(210, seed=4, brightness=30)
    data_acts = compute_activations(model, np.array_split(dataset, 5))
    return model, dataset, samples, data_acts


def test_evaluate_fid_suite_equals_each_metric_computed_directly(suite_data, tmp_path):
    model, dataset, samples, data_acts = suite_data
    reference_images = dataset[:100]
    data_pool, data_spatial = data_acts.pool_stats.gaussian(), data_acts.spatial_stats.gaussian()
    write_reference_batch(tmp_path / "ref.npz", reference_images, data_pool, data_spatial)
    assert sorted(npz_keys(tmp_path / "ref.npz")) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
    result = evaluate_fid_suite(samples, tmp_path / "ref.npz", model, batch_size=64)

    with torch.no_grad():
        out = model(torch.from_numpy(samples).permute(0, 3, 1, 2))
        ref_pool = model(torch.from_numpy(reference_images).permute(0, 3, 1, 2)).pool
    pool, spatial = out.pool.double().numpy(), out.spatial.double().numpy()
    expected_fid = frechet_distance_from_stats(
        pool.mean(0), np.cov(pool, rowvar=False), data_pool.mu, data_pool.sigma
    )
    expected_sfid = frechet_distance_from_stats(
        spatial.mean(0), np.cov(spatial, rowvar=False), data_spatial.mu, data_spatial.sigma
    )
    assert result["fid"] == pytest.approx(expected_fid, rel=1e-6) and result["fid"] > 1.0
    assert result["sfid"] == pytest.approx(expected_sfid, rel=1e-6) and result["sfid"] > 0.1
    assert result["is"] == pytest.approx(inception_score(out.logits), rel=1e-6)
    assert (result["precision"], result["recall"]) == precision_recall(ref_pool, out.pool)
    assert result["num_samples"] == 210 and result["protocol"] == "adm"


def test_samples_from_npz_and_cached_reference_features_give_the_same_results(suite_data, tmp_path):
    model, dataset, samples, data_acts = suite_data
    # Same batches as evaluate_fid_suite's default (64): float32 convolutions reduce in an order that depends on
    # the batch (and the thread count), so only equal batches give bit-equal features on every machine.
    ref_acts = compute_activations(model, [dataset[:64], dataset[64:100]])
    pool, spatial = data_acts.pool_stats.gaussian(), data_acts.spatial_stats.gaussian()
    write_reference_batch(tmp_path / "plain.npz", dataset[:100], pool, spatial)
    write_reference_batch(tmp_path / "cached.npz", dataset[:100], pool, spatial, pool_features=ref_acts.pool)
    write_sample_batch(tmp_path / "samples.npz", samples)
    cached = read_reference_batch(tmp_path / "cached.npz")  # no model needed
    np.testing.assert_array_equal(cached.pool_features, ref_acts.pool)
    from_array = evaluate_fid_suite(samples, tmp_path / "plain.npz", model)
    from_files = evaluate_fid_suite(tmp_path / "samples.npz", cached, model, batch_size=64)
    for key in ("fid", "sfid", "is"):
        assert from_files[key] == from_array[key]
    assert (from_files["precision"], from_files["recall"]) == (from_array["precision"], from_array["recall"])
    with pytest.raises(ValueError, match="load_fid_inception"):
        read_reference_batch(tmp_path / "plain.npz")


def test_samples_against_themselves_score_zero_distance_and_full_precision_recall(suite_data, tmp_path):
    model, _, samples, _ = suite_data
    write_sample_batch(tmp_path / "samples.npz", samples)  # no statistics: fitted to arr_0, as ADM does
    result = evaluate_fid_suite(samples, tmp_path / "samples.npz", model, batch_size=70)
    assert abs(result["fid"]) < 1e-6 and abs(result["sfid"]) < 1e-6
    assert result["precision"] == 1.0 and result["recall"] == 1.0
