"""Evaluation: the cached balls encoder (deterministic training, cache integrity, fd_balls values) and the FVD
plumbing (prepared-folder reference = stored statistics = the Fréchet distance computed by hand)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from layersync.metrics.frechet import frechet_distance
from layersync.video import balls_eval
from layersync.video.balls import BallsConfig, balls_clips
from layersync.video.balls_eval import BallsEvaluator, EncoderConfig, shuffle_frames, train_encoder

# Small enough to train in ~1 s; 128 test clips > 65 = feature_dim + 1.
TINY = EncoderConfig(data=BallsConfig(train_clips=128, test_clips=128), epochs=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def evaluator(cache) -> BallsEvaluator:
    return BallsEvaluator.load_or_train(TINY, cache_dir=cache)


def test_shuffle_never_gives_the_identity_or_the_reversal():
    x = torch.arange(4.0).view(1, 1, 4, 1, 1).repeat(50, 1, 1, 1, 1)  # frame index as the value
    which = torch.arange(50) % 2 == 0
    out = shuffle_frames(x, which, torch.Generator().manual_seed(0))
    orders = out[:, 0, :, 0, 0]  # (50, 4)
    assert torch.equal(orders[~which], x[~which, 0, :, 0, 0])  # unselected rows untouched
    for order in orders[which].tolist():
        assert sorted(order) == [0, 1, 2, 3] and order not in ([0, 1, 2, 3], [3, 2, 1, 0])


def test_encoder_training_is_deterministic_and_leaves_global_state_alone():
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    a = train_encoder(TINY)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = train_encoder(TINY)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG stream is not consumed
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cache_is_reused_and_a_corrupt_file_is_retrained(evaluator, cache, monkeypatch, caplog):
    path = cache / f"balls_encoder-{balls_eval.cache_key(TINY)}.pt"
    assert path.is_file()
    monkeypatch.setattr(balls_eval, "train_encoder", lambda cfg: pytest.fail("retrained a valid cache"))
    again = BallsEvaluator.load_or_train(TINY, cache_dir=cache)
    np.testing.assert_array_equal(again.reference.mu, evaluator.reference.mu)
    monkeypatch.undo()
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        BallsEvaluator.load_or_train(TINY, cache_dir=cache)
    assert "is corrupt" in caplog.text and path.stat().st_size > 1000


def test_cache_key_depends_on_the_training_recipe():
    assert balls_eval.cache_key(TINY) != balls_eval.cache_key(EncoderConfig(data=TINY.data, epochs=3))
    assert len(balls_eval.cache_key(TINY)) == 16


def test_fd_balls_is_the_frechet_distance_to_the_test_split(evaluator):
    test = balls_clips("test", TINY.data).clips
    torch.manual_seed(0)
    noisy = (test[:100] + 0.3 * torch.randn_like(test[:100])).clamp(-1, 1)
    result = evaluator.evaluate(noisy)
    expected = frechet_distance(evaluator.features(noisy), evaluator.features(test))
    assert result["fd_balls"] == pytest.approx(expected, rel=1e-9)
    train_floor = frechet_distance(evaluator.features(balls_clips("train", TINY.data).clips[:100]),
                                   evaluator.features(test))
    assert result["fd_balls_train_clips"] == pytest.approx(train_floor, rel=1e-9)
    assert result["fd_balls"] > 2 * result["fd_balls_train_clips"]  # noise is farther than real clips
    assert "not I3D FVD" in result["metric"] and result["n_samples"] == 100
    assert set(result["encoder_test_accuracy"]) == {"count", "colours", "collided", "shuffled"}


def test_fd_balls_refuses_too_few_clips_or_the_wrong_shape(evaluator):
    clips = balls_clips("test", TINY.data).clips
    with pytest.raises(ValueError, match="at least 65 clips"):
        evaluator.evaluate(clips[:64])
    with pytest.raises(ValueError, match=r"clips must be \(N, 3, 8, 16, 16\)"):
        evaluator.features(clips[:, :, :4])


# --------------------------------------------------------------------------------------------------- FVD
def mean_colour_detector(x, rescale=True, resize=True, return_features=True):
    """A stand-in detector with the I3D call signature: per-frame mean RGB, (B, 3·T) features."""
    assert rescale and resize and return_features
    return x.float().mean((3, 4)).flatten(1) / 255.0


def test_fvd_against_a_prepared_folder_equals_against_its_stored_statistics(tmp_path):
    from layersync.video.evaluate import fvd_against, reference_stats
    from layersync.video.prepared import ARRAY, FORMAT, MANIFEST, PreparedClips

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(80, 16, 8, 8, 3), dtype=np.uint8)  # the protocol wants 16 frames
    fake = rng.integers(30, 226, size=(70, 16, 8, 8, 3), dtype=np.uint8)
    folder = tmp_path / "real"
    folder.mkdir()
    np.save(folder / ARRAY, real)
    (folder / MANIFEST).write_text(
        f'{{"format": {FORMAT}, "encoding": "pixels", "n_clips": 80, "clip_shape": [16, 8, 8, 3]}}')
    assert len(PreparedClips(folder)) == 80
    direct = fvd_against(fake, folder, detector=mean_colour_detector)
    stats = reference_stats(folder, tmp_path / "stats.npz", detector=mean_colour_detector)
    stored = fvd_against(fake, tmp_path / "stats.npz", detector=mean_colour_detector)
    by_hand = frechet_distance(mean_colour_detector(torch.from_numpy(fake).permute(0, 4, 1, 2, 3)),
                               mean_colour_detector(torch.from_numpy(real).permute(0, 4, 1, 2, 3)))
    assert direct["fvd"] == pytest.approx(by_hand, rel=1e-9)
    assert stored["fvd"] == pytest.approx(by_hand, rel=1e-9)
    assert stats.dim == 48 and direct["n_reference"] == 80 and stored["n_reference"] == 80
    assert direct["n_samples"] == 70 and direct["metric"] == stored["metric"]
    assert direct["protocol"]["name"] == "prepared-clips" and direct["protocol"]["ddof"] == 1


def test_fvd_reference_must_be_stats_or_a_prepared_folder(tmp_path):
    from layersync.video.evaluate import check_reference

    with pytest.raises(FileNotFoundError, match="neither a statistics .npz"):
        check_reference(tmp_path)
