"""Log-mel analysis (HiFi-GAN's convention), its statistics, and Griffin-Lim back to a waveform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layersync.audio.mel import (HIFIGAN_MEL, MelConfig, MelStats, MelStatsAccumulator, griffin_lim, istft,
                                 log_mel, mel_basis, mel_to_magnitude, stft)

SR = 16_000


def tone(freqs_hz, seconds=0.512, sr=SR, amp=0.2):
    t = np.arange(int(seconds * sr)) / sr
    return torch.tensor(sum(amp * np.sin(2 * np.pi * f * t) for f in freqs_hz), dtype=torch.float32)


def librosa_reference(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """HiFi-GAN's mel_spectrogram with librosa: reflect pad (n_fft − hop)/2, no centring, √(|X|²+1e-9)."""
    import librosa

    pad = (cfg.n_fft - cfg.hop_length) // 2
    spec = librosa.stft(np.pad(x, (pad, pad), mode="reflect"), n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                        win_length=cfg.window_length, window="hann", center=False)
    magnitude = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min_hz,
                                fmax=cfg.f_max_hz)
    return np.log(np.maximum(basis @ magnitude, cfg.log_floor))


@pytest.mark.parametrize("cfg", [MelConfig(), HIFIGAN_MEL], ids=["default16k", "hifigan22k"])
def test_log_mel_matches_hifigan_mel_spectrogram_written_with_librosa(cfg):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(cfg.hop_length * 40)).astype(np.float32)
    ours = log_mel(torch.from_numpy(x), cfg).numpy()
    ref = librosa_reference(x, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, 40)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_a_clip_of_n_hops_gives_n_frames_and_istft_inverts_stft():
    cfg = MelConfig()
    x = tone([440, 1000], seconds=cfg.hop_length * 20 / SR)
    assert log_mel(x, cfg).shape == (48, 20) and cfg.frames(len(x)) == 20
    spec = stft(x[None], cfg)  # (1, 257, 20)
    torch.testing.assert_close(istft(spec, cfg)[0], x, atol=1e-5, rtol=0)


def test_a_tone_peaks_in_the_mel_band_holding_its_frequency():
    cfg = MelConfig()
    mel = log_mel(tone([1000]), cfg)  # (48, T)
    band = int(mel[:, 5:-5].mean(1).argmax())
    centres = torch.from_numpy(np.asarray(__import__("librosa").mel_frequencies(cfg.n_mels + 2, fmax=8000)))
    assert centres[band] < 1000 * 1.15 and centres[band + 2] > 1000 / 1.15  # the band's support covers 1 kHz


def test_nonnegative_mel_inversion_fits_the_mel_better_than_the_clamped_pseudo_inverse():
    cfg = MelConfig()
    logmel = log_mel(tone([220, 330, 440, 2000]), cfg)[None]
    basis = mel_basis(cfg)

    def misfit(magnitude):
        return (torch.log((basis @ magnitude).clamp_min(cfg.log_floor)) - logmel).abs().mean()

    clamped = mel_to_magnitude(logmel, cfg, nnls_iterations=0)
    refined = mel_to_magnitude(logmel, cfg, nnls_iterations=50)
    assert (refined >= 0).all()
    assert misfit(refined) < 0.5 * misfit(clamped)


def test_griffin_lim_gives_back_a_waveform_with_the_same_log_mel():
    cfg = MelConfig()
    x = tone([262, 330, 392, 523])  # a C-major chord
    target = log_mel(x, cfg)[None]
    wave = griffin_lim(target, cfg, iterations=32)
    assert wave.shape == (1, len(x))
    loud = target > target.max() - 4  # bins within 4 nats of the top: the harmonics
    error = (log_mel(wave, cfg) - target).abs()
    assert error[loud].mean() < 0.15
    assert torch.equal(wave, griffin_lim(target, cfg, iterations=32))  # deterministic (seeded phase)


def test_griffin_lim_rejects_diverged_samples_and_wrong_shapes():
    cfg = MelConfig()
    with pytest.raises(ValueError, match="NaN or inf"):
        griffin_lim(torch.full((1, 48, 8), float("nan")), cfg)
    with pytest.raises(ValueError, match=r"\(B, 48, frames\)"):
        griffin_lim(torch.zeros(1, 32, 8), cfg)


def test_stats_accumulator_equals_numpy_over_all_frames_and_round_trips(tmp_path):
    cfg = MelConfig(n_mels=8, n_fft=64, hop_length=16, f_max_hz=8000)
    rng = np.random.default_rng(1)
    parts = [rng.normal(-5, 2, (8, n)) + 1000.0 for n in (3, 10, 7)]  # a large offset tests cancellation
    acc = MelStatsAccumulator(cfg)
    for p in parts:
        acc.add(p)
    stats = acc.result()
    full = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(stats.mean, full.mean(1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, full.std(1, ddof=1), rtol=1e-9)
    assert stats.num_frames == 20
    x = torch.from_numpy(full).float()
    torch.testing.assert_close(stats.denormalize(stats.normalize(x)), x, atol=1e-3, rtol=0)
    stats.save(tmp_path / "s.npz")
    loaded = MelStats.load(tmp_path / "s.npz", cfg)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    with pytest.raises(ValueError, match="recompute"):
        MelStats.load(tmp_path / "s.npz", MelConfig())


@pytest.mark.parametrize("kwargs, match", [
    ({"n_fft": 512, "hop_length": 255}, "must be even"),
    ({"f_max_hz": 9000.0}, "f_max_hz"),
    ({"win_length": 1024}, "win_length"),
    ({"n_mels": 0}, "n_mels=0 is out of range: must be ≥ 1"),
])
def test_mel_config_rejects_inconsistent_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MelConfig(**kwargs)


@pytest.mark.parametrize("layout, shape", [("image", (2, 4, 6, 8)), ("frames", (2, 24, 8))])
def test_layouts_round_trip_latents_and_give_the_backbone_shape(layout, shape):
    from layersync.audio.layout import from_model, model_shape, to_model

    z = torch.randn(2, 4, 6, 8)  # (B, C, F, T)
    x = to_model(z, layout)
    assert x.shape == shape and torch.equal(from_model(x, layout, channels=4), z)
    input_size, channels = model_shape(layout, 4, 6, 8)
    assert (channels, *input_size) == shape[1:]
    assert to_model(z[:, 0], layout).shape == ((2, 1, 6, 8) if layout == "image" else (2, 6, 8))  # a mel
