"""The embedded synthetic music, its tag classifier (the FAD-tagger embedding) and FAD between folders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch

from layersync.audio import evaluate, synth
from layersync.audio.decode import write_wav
from layersync.audio.tagger import AudioTagger, TaggerConfig, cache_key

TINY = TaggerConfig(train_per_class=8, epochs=20, batch_size=16, feature_dim=8)


def test_synthetic_clips_are_deterministic_balanced_and_tagged():
    synth.synth_dataset.cache_clear()
    waves, labels, tags = synth.synth_dataset("test", 2)
    synth.synth_dataset.cache_clear()
    again, _, _ = synth.synth_dataset("test", 2)
    assert waves.shape == (16, synth.CLIP_SAMPLES) and np.array_equal(waves, again)
    assert labels.tolist() == list(range(8)) * 2
    assert tags[5][:2] == ("timbre---brass", "texture---chords")  # class 5 = 2·brass + chords
    assert all(t[2].split("---")[1] in {"90", "120", "150"} and t[3].startswith("key---") for t in tags)
    rms = np.sqrt((waves.astype(np.float64) ** 2).mean(1))
    assert np.abs(waves).max() <= 0.9 + 1e-6
    peak_capped = np.abs(waves).max(1) > 0.899
    assert ((rms > 0.1 * 10 ** (-3.5 / 20)) | peak_capped).all()  # −20 dBFS ± 3 dB unless the peak is capped
    train, _, _ = synth.synth_dataset("train", 2)
    assert not np.array_equal(train, waves)  # the splits draw from different seeds


def partial_levels(timbre: str, f0: float = 220.0) -> np.ndarray:
    """Magnitude of partials 1..6 of one steady note."""
    t = np.arange(16_000) / synth.SAMPLE_RATE_HZ
    note = synth._note(timbre, f0, t, 1.0, np.zeros(synth.MAX_PARTIALS))
    spectrum = np.abs(np.fft.rfft(note[2000:14000] * np.hanning(12000)))
    freqs = np.fft.rfftfreq(12000, 1 / synth.SAMPLE_RATE_HZ)
    return np.array([spectrum[np.abs(freqs - k * f0).argmin()] for k in range(1, 7)])


def test_timbres_have_their_partial_structure():
    clarinet, brass, flute = partial_levels("clarinet"), partial_levels("brass"), partial_levels("flute")
    assert clarinet[1] < 0.05 * clarinet[2] and clarinet[3] < 0.05 * clarinet[4]  # even partials missing
    np.testing.assert_allclose(brass[:4] / brass[0], [1, 1 / 2, 1 / 3, 1 / 4], rtol=0.05)
    assert flute[4] < 1e-3 * flute[0]  # four partials only


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return AudioTagger.load_or_train(tmp_path_factory.mktemp("audio_tagger_cache"), TINY)


def test_tagger_is_cached_and_reloads_identically(tagger, tmp_path_factory, caplog):
    cache = next(p for p in tmp_path_factory.getbasetemp().glob("audio_tagger_cache*"))
    path = cache / f"audio_tagger-{cache_key(TINY)}.pt"
    assert path.is_file()
    waves, _, _ = synth.synth_dataset("test", 2)
    again = AudioTagger.load_or_train(cache, TINY)
    np.testing.assert_array_equal(again.embed_windows(waves), tagger.embed_windows(waves))
    np.testing.assert_array_equal(again.reference.sigma, tagger.reference.sigma)
    path.write_bytes(path.read_bytes()[:-10])  # truncated: retrained with a warning, same weights
    with caplog.at_level(logging.WARNING):
        retrained = AudioTagger.load_or_train(cache, TINY)
    assert "corrupt" in caplog.text
    np.testing.assert_allclose(retrained.embed_windows(waves), tagger.embed_windows(waves), rtol=1e-5,
                               atol=1e-5)


def test_tagger_embeds_every_full_window_and_names_itself_honestly(tagger):
    waves, _, _ = synth.synth_dataset("test", 1)
    two = np.concatenate([waves[0], waves[1], waves[2][:100]])  # two windows and a tail that is dropped
    feats = tagger.embed(two, synth.SAMPLE_RATE_HZ)
    assert feats.shape == (2, TINY.feature_dim) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, tagger.embed_windows(waves[:2]), rtol=1e-5, atol=1e-5)
    up = tagger.embed(np.repeat(waves[0], 2), 2 * synth.SAMPLE_RATE_HZ)  # resampled back to 16 kHz
    assert up.shape == (1, TINY.feature_dim)
    assert "not FAD-VGGish or FAD-CLAP" in tagger.describe()["metric"]
    with pytest.raises(ValueError, match="shorter than"):
        tagger.embed(waves[0][:1000], synth.SAMPLE_RATE_HZ)


def test_fad_of_a_wav_folder_equals_the_frechet_distance_of_its_embeddings(tagger, tmp_path):
    waves, _, _ = synth.synth_dataset("test", 2)
    for i, w in enumerate(waves):
        write_wav(tmp_path / "gen" / f"{i:02d}.wav", w, synth.SAMPLE_RATE_HZ)
    result = evaluate.fad_folder(tmp_path / "gen", tagger)
    pcm = np.stack([soundfile.read(tmp_path / "gen" / f"{i:02d}.wav", dtype="float32")[0] for i in range(16)])
    np.testing.assert_allclose(pcm, waves, atol=1 / 32768)  # what is measured is the 16-bit file
    direct = evaluate.gaussian(tagger.embed_windows(pcm), "g").frechet_distance(tagger.reference)
    assert result["fad_tagger"] == pytest.approx(direct, rel=1e-5)  # per-file vs batched float32 convs
    assert result["num_files"] == 16 and result["reference"].startswith("synthetic music train split")
    # The same folder as its own reference: distance 0; saved statistics give the same number.
    gen = tmp_path / "gen"
    assert evaluate.fad_folder(gen, tagger, gen)["fad_tagger"] == pytest.approx(0, abs=1e-6)
    embeddings = evaluate.embed_files(tagger, evaluate.audio_files(gen))
    evaluate.save_reference(tmp_path / "ref.npz", embeddings, tagger)
    assert evaluate.fad_folder(gen, tagger, tmp_path / "ref.npz")["fad_tagger"] == pytest.approx(0, abs=1e-6)


def test_too_few_windows_or_a_foreign_reference_are_clear_errors(tagger, tmp_path):
    waves, _, _ = synth.synth_dataset("test", 1)
    for i in range(4):
        write_wav(tmp_path / "few" / f"{i}.wav", waves[i], synth.SAMPLE_RATE_HZ)
    with pytest.raises(ValueError, match=f"at least {TINY.feature_dim + 1}"):
        evaluate.fad_folder(tmp_path / "few", tagger)
    np.savez(tmp_path / "other.npz", mu=np.zeros(8), sigma=np.eye(8), embedding='{"metric": "fad_clap"}')
    with pytest.raises(ValueError, match="another embedding"):
        evaluate.load_reference(tmp_path / "other.npz", tagger)
    with pytest.raises(FileNotFoundError, match="no .* files"):
        evaluate.audio_files(tmp_path)


def test_clap_and_vggish_need_their_weights(tmp_path, monkeypatch):
    from layersync.core.weights import MissingWeightsError

    monkeypatch.setenv("LAYERSYNC_WEIGHTS", str(tmp_path))
    for kind in ("clap-laion-audio", "clap-laion-music", "vggish"):
        with pytest.raises(MissingWeightsError):
            evaluate.load_embedder(kind)


def test_tagger_tells_the_classes_of_held_out_clips(tagger):
    waves, labels, _ = synth.synth_dataset("test", 2)
    accuracy = (tagger.predict_windows(waves) == torch.from_numpy(labels.copy())).double().mean()
    assert accuracy > 0.5  # chance is 1/8; a toy of 80 steps (the default takes 160 steps)
