"""The embedded digits data, its CNN evaluator (Fréchet distance + accuracy) and PNG grids."""

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from layersync.image import digits_eval
from layersync.image.digits import DigitsDataset, digits_tensors, split_indices
from layersync.image.digits_eval import ClassifierConfig, DigitsEvaluator, cache_key, train_classifier
from layersync.image.grid import save_class_grid, save_grid
from layersync.metrics.frechet import frechet_distance

SHORT = ClassifierConfig(epochs=1)  # a quick schedule for the cache and determinism tests


@pytest.fixture(scope="module")
def short_cache(tmp_path_factory):
    """(evaluator, cache file bytes) of the SHORT schedule, trained once."""
    folder = tmp_path_factory.mktemp("short")
    ev = DigitsEvaluator.load_or_train(folder, SHORT)
    return ev, (folder / f"digits_classifier-{cache_key(SHORT)}.pt").read_bytes()


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    """The default classifier, trained once (~10 s) into a temporary cache."""
    return DigitsEvaluator.load_or_train(tmp_path_factory.mktemp("cache"))


# --- data ---------------------------------------------------------------------------------------------


def test_splits_are_stratified_every_fifth_image_of_each_class():
    labels = load_digits().target
    test, train = split_indices("test"), split_indices("train")
    assert (len(train), len(test), len(split_indices("all"))) == (1433, 364, 1797)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    for c in range(10):
        members = np.flatnonzero(labels == c)
        assert np.array_equal(test[labels[test] == c], members[::5])


def test_tensors_are_pixels_over_16_mapped_to_minus_one_one():
    bunch = load_digits()
    for split in ("train", "test", "all"):
        x, y = digits_tensors(split)
        idx = split_indices(split)
        assert x.shape == (len(idx), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        expected = torch.from_numpy(bunch.images[idx]).float() / 16 * 2 - 1
        assert torch.equal(x[:, 0], expected)
        assert torch.equal(y, torch.from_numpy(bunch.target[idx]))
        assert x.min() == -1.0 and x.max() == 1.0


def test_dataset_items_equal_the_tensors_and_are_fresh_copies():
    ds = DigitsDataset("test")
    x, y = digits_tensors("test")
    image, label = ds[7]
    assert len(ds) == 364 and torch.equal(image, x[7]) and label == y[7] and image.shape == (1, 8, 8)
    x[0] += 1  # the tensors handed out are copies, so this cannot leak into later calls
    assert torch.equal(digits_tensors("test")[0][0], ds[0][0])


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split must be one of"):
        digits_tensors("val")


# --- classifier training and cache ------------------------------------------------------------------


def test_classifier_training_is_bitwise_deterministic_and_leaves_global_state_alone():
    torch.manual_seed(123)
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    a = train_classifier(SHORT).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    b = train_classifier(SHORT).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = train_classifier(ClassifierConfig(epochs=1, seed=1)).state_dict()
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_cache_key_depends_on_the_config():
    assert cache_key(SHORT) == cache_key(ClassifierConfig(epochs=1))
    assert cache_key(SHORT) != cache_key(ClassifierConfig(epochs=2))
    assert len(cache_key(SHORT)) == 16


def test_cache_hit_loads_without_retraining(tmp_path, monkeypatch, short_cache):
    first = DigitsEvaluator.load_or_train(tmp_path, SHORT)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"digits_classifier-{cache_key(SHORT)}.pt"]  # no temporary file left behind
    assert (tmp_path / files[0]).read_bytes() == short_cache[1]  # training and saving are deterministic

    def fail(config):
        raise AssertionError("retrained although the cache was valid")

    monkeypatch.setattr(digits_eval, "train_classifier", fail)
    second = DigitsEvaluator.load_or_train(tmp_path, SHORT)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    assert np.array_equal(first.reference.sigma, second.reference.sigma)
    assert second.reference_accuracy == first.reference_accuracy


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "env"))
    DigitsEvaluator.load_or_train(config=SHORT)
    assert (tmp_path / "env" / f"digits_classifier-{cache_key(SHORT)}.pt").is_file()


def _garble(path):
    path.write_bytes(b"not a torch file")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _tamper_payload(path):
    """A readable record whose payload no longer matches its sha256."""
    record = torch.load(path, weights_only=True)
    payload = bytearray(record["payload"])
    payload[len(payload) // 2] ^= 0xFF
    record["payload"] = bytes(payload)
    torch.save(record, path)


@pytest.mark.parametrize("corrupt", [_garble, _truncate, _tamper_payload])
def test_corrupt_cache_is_retrained_with_a_warning(tmp_path, caplog, short_cache, corrupt):
    good, good_bytes = short_cache
    path = tmp_path / f"digits_classifier-{cache_key(SHORT)}.pt"
    path.write_bytes(good_bytes)
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger=digits_eval.__name__):
        again = DigitsEvaluator.load_or_train(tmp_path, SHORT)
    assert "corrupt" in caplog.text and "retraining" in caplog.text
    for k, v in good.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])
    record = torch.load(path, weights_only=True)  # rewritten and valid again
    assert hashlib.sha256(record["payload"]).hexdigest() == record["sha256"]


# --- evaluation -----------------------------------------------------------------------------------------


def test_classifier_reaches_high_test_accuracy(evaluator):
    assert evaluator.reference_accuracy > 0.97
    x, y = digits_tensors("test")
    result = evaluator.evaluate(x, y)
    assert result["classifier_accuracy"] == pytest.approx(evaluator.reference_accuracy, abs=1e-12)
    assert all(a > 0.85 for a in result["per_class_accuracy"])
    assert result["n_samples"] == 364 and "not Inception FID" in result["metric"]


def test_reference_set_has_zero_distance_to_itself(evaluator):
    result = evaluator.evaluate(*digits_tensors("all"))
    assert result["fd_digits"] == pytest.approx(0.0, abs=1e-6)


def test_distance_grows_with_corruption_and_noise_is_far(evaluator):
    x, y = digits_tensors("test")
    g = torch.Generator().manual_seed(0)
    fds = [evaluator.evaluate((x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1), y)["fd_digits"]
           for s in (0.0, 0.2, 0.5)]
    noise = evaluator.evaluate(torch.rand(x.shape, generator=g) * 2 - 1, y)
    assert fds[0] < fds[1] < fds[2] < noise["fd_digits"]
    assert fds[0] < 0.05 * noise["fd_digits"]
    assert noise["classifier_accuracy"] < 0.3


def test_fd_digits_equals_frechet_distance_to_the_features_of_all_digits(evaluator):
    x, y = digits_tensors("test")
    expected = frechet_distance(evaluator.features(x), evaluator.features(digits_tensors("all")[0]))
    assert evaluator.evaluate(x, y)["fd_digits"] == pytest.approx(expected, abs=1e-6)  # traces ~1e3 cancel
    assert 0.2 < expected < 10  # a held-out subset of 364 images is close to, not at, the reference


def test_features_are_float64_of_the_feature_dimension(evaluator):
    f = evaluator.features(digits_tensors("test")[0][:5])
    assert f.shape == (5, 64) and f.dtype == np.float64


def test_too_few_samples_raise_with_the_number_needed(evaluator):
    x, y = digits_tensors("test")
    with pytest.raises(ValueError, match="at least 65 samples"):
        evaluator.evaluate(x[:64], y[:64])
    assert evaluator.evaluate(x[:65], y[:65])["n_samples"] == 65


def test_per_class_accuracy_is_none_for_a_class_without_samples(evaluator):
    x, y = digits_tensors("test")
    keep = y != 3
    result = evaluator.evaluate(x[keep], y[keep])
    assert result["per_class_accuracy"][3] is None and len(result["per_class_accuracy"]) == 10


def test_evaluate_rejects_bad_inputs(evaluator):
    x, y = digits_tensors("test")
    with pytest.raises(ValueError, match="shape"):
        evaluator.evaluate(x[:, :, :4], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        evaluator.evaluate(x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        evaluator.evaluate(torch.full_like(x, float("nan")), y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_on_the_gpu_matches_the_cpu(evaluator):
    x, y = digits_tensors("test")
    cpu = evaluator.evaluate(x, y)
    try:
        gpu = evaluator.to("cuda").evaluate(x.cuda(), y.cuda())
    finally:
        evaluator.to("cpu")
    assert gpu["classifier_accuracy"] == cpu["classifier_accuracy"]
    assert gpu["fd_digits"] == pytest.approx(cpu["fd_digits"], rel=1e-3)


# --- grids ----------------------------------------------------------------------------------------------


def test_save_grid_lays_out_upscaled_cells_between_separators(tmp_path):
    images = torch.tensor([-1.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)  # black, white, grey cells
    path = save_grid(images, tmp_path / "g.png", nrow=2, upscale=3, pad=1, pad_value=50)
    img = Image.open(path)
    a = np.asarray(img)
    assert img.mode == "L" and a.shape == (2 * 6 + 3, 2 * 6 + 3)
    assert (a[1:7, 1:7] == 0).all() and (a[1:7, 8:14] == 255).all() and (a[8:14, 1:7] == 128).all()
    assert (a[8:14, 8:14] == 50).all()  # the missing fourth cell is left as background
    assert (a[0] == 50).all() and (a[:, 7] == 50).all() and (a[7] == 50).all() and (a[:, -1] == 50).all()


def test_save_grid_upscales_by_pixel_repetition_in_rgb(tmp_path):
    image = torch.tensor([[[-1.0, 1.0]], [[1.0, -1.0]], [[-1.0, -1.0]]])  # (3, 1, 2): red then green pixel
    a = np.asarray(Image.open(save_grid(image[None], tmp_path / "rgb.png", nrow=1, upscale=2, pad=0)))
    assert a.shape == (2, 4, 3)
    assert (a[:, :2] == [0, 255, 0]).all() and (a[:, 2:] == [255, 0, 0]).all()


def test_save_class_grid_puts_each_class_on_its_own_row(tmp_path):
    values = torch.tensor([1.0, -1.0, 0.5, 1.0])  # labels 2, 0, 2, 0
    labels = torch.tensor([2, 0, 2, 0])
    images = values.view(4, 1, 1, 1).expand(4, 1, 8, 8)
    a = np.asarray(Image.open(save_class_grid(images, labels, tmp_path / "c.png", upscale=1, pad=1)))
    assert a.shape == (3 * 8 + 4, 2 * 8 + 3)

    def cell(r, c):
        return a[1 + r * 9 : 9 + r * 9, 1 + c * 9 : 9 + c * 9]

    assert (cell(0, 0) == 0).all() and (cell(0, 1) == 255).all()  # class 0, in given order
    assert (cell(1, 0) == 128).all() and (cell(1, 1) == 128).all()  # class 1 has no images
    assert (cell(2, 0) == 255).all() and (cell(2, 1) == 191).all()  # class 2: round(1.5 · 127.5) = 191


def test_grids_reject_images_outside_the_layout(tmp_path):
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_grid(torch.zeros(2, 2, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels must lie"):
        save_class_grid(torch.zeros(2, 1, 8, 8), torch.tensor([0, 5]), tmp_path / "x.png", num_classes=3)
