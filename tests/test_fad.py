"""FAD: VGGish's log-mel front end and network, LAION-CLAP's audio tower, fadtk's presets (front end,
windows, float16 embeddings) and the file pipeline."""

import json

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from torch import nn

from layersync.core.weights import MissingWeightsError
from layersync.metrics import clap, vggish
from layersync.metrics.fad import (
    CLAP_LAION_AUDIO,
    CLAP_LAION_MUSIC,
    PRESETS,
    VGGISH_FAD,
    AudioEmbedder,
    fad,
    fad_from_files,
    front_end,
    load_reference_stats,
    save_reference_stats,
    windows,
)
from layersync.metrics.frechet import frechet_distance


def reference_mel_matrix() -> np.ndarray:
    """mel_features.spectrogram_to_mel_matrix (257 bins, 16 kHz, 64 bands, 125–7500 Hz), band by band."""
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    out = np.zeros((257, 64))
    for i in range(64):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        for k, m in enumerate(bins):
            out[k, i] = max(0.0, min((m - lo) / (mid - lo), (hi - m) / (hi - mid)))
    out[0] = 0.0
    return out


def test_mel_matrix_equals_the_reference_construction():
    np.testing.assert_allclose(vggish.mel_matrix(), reference_mel_matrix(), rtol=0, atol=1e-15)


def test_silence_gives_log_of_the_offset_and_one_example_per_0_96_s():
    examples = vggish.waveform_to_examples(np.zeros(2 * 16_000))  # 198 STFT frames → 2 examples of 96
    assert examples.shape == (2, 96, 64)
    np.testing.assert_allclose(examples, np.log(0.01), rtol=1e-6)
    assert vggish.waveform_to_examples(np.zeros(15_599)).shape == (0, 96, 64)  # 96 frames need 15 600


def test_a_1khz_tone_peaks_in_the_band_centred_nearest_1khz():
    t = np.arange(16_000) / 16_000
    mel = vggish.log_mel(0.5 * np.sin(2 * np.pi * 1000.0 * t))  # (98, 64)
    centres_mel = np.linspace(vggish.hertz_to_mel(125.0), vggish.hertz_to_mel(7500.0), 66)[1:-1]
    assert mel.mean(0).argmax() == np.abs(centres_mel - vggish.hertz_to_mel(1000.0)).argmin()
    # 1 kHz is FFT bin 32 of 512 at 16 kHz: |X| = A/2 · Σ hann = 0.25 · 200 = 50, up to leakage.
    spectrum = np.abs(np.fft.rfft(vggish.frame(0.5 * np.sin(2 * np.pi * 1000.0 * t), 400, 160)[0]
                                  * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)), 512))  # fmt: skip
    assert spectrum[32] == pytest.approx(50.0, rel=1e-3)


def test_vggish_keeps_torchvggish_parameter_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in vggish.VGGish().state_dict().items()}
    assert shapes["features.0.weight"] == (64, 1, 3, 3)
    assert shapes["features.13.weight"] == (512, 512, 3, 3)
    assert shapes["embeddings.0.weight"] == (4096, 512 * 6 * 4)
    assert shapes["embeddings.4.weight"] == (128, 4096)
    assert len(shapes) == 18  # 6 convs + 3 linears, weight and bias each


def test_vggish_flattens_features_in_tf_nhwc_order():
    torch.manual_seed(0)
    model = vggish.VGGish().eval()
    x = torch.randn(3, 1, 96, 64)
    captured = []
    model.embeddings.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        out = model(x)
        fmap = model.features(x)  # (3, 512, 6, 4)
    # TF reshapes (N, 6, 4, 512): channel c at row h, column w lands at c + 512·(w + 4·h).
    for c, h, w in ((5, 2, 3), (511, 0, 1), (0, 5, 0)):
        torch.testing.assert_close(captured[0][:, c + 512 * (w + 4 * h)], fmap[:, c, h, w])
    assert out.shape == (3, 128)
    assert (out < 0).any()  # no final ReLU: the Google FAD reads the pre-activation embedding
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def test_vggish_loads_only_the_checksummed_release(tmp_path):
    with pytest.raises(MissingWeightsError, match="vggish-10086976.pth.*torchvggish.*10086976245803"):
        vggish.load_vggish(tmp_path)
    torch.manual_seed(1)
    model = vggish.VGGish()
    torch.save(model.state_dict(), tmp_path / "vggish-10086976.pth")
    with pytest.raises(MissingWeightsError, match="corrupt"):
        vggish.load_vggish(tmp_path)
    loaded = vggish.load_vggish(tmp_path, verify=False)
    x = torch.randn(2, 1, 96, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))


TINY_HTSAT = clap.HtsatConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def tiny_clap():
    torch.manual_seed(0)
    return clap.ClapAudioEncoder(TINY_HTSAT).eval()


def test_htsat_base_and_tiny_have_the_laion_sizes():
    assert (HTSAT := clap.HTSAT_BASE).num_features == 1024  # audio_projection input of the checkpoint
    assert (HTSAT.embed_dim, HTSAT.depths, HTSAT.num_heads) == (128, (2, 2, 12, 2), (4, 8, 16, 32))
    tiny = clap.HTSAT_TINY  # 630k-audioset-best.pt: laion-clap's "tiny" factory and HTSAT-tiny.json
    assert (tiny.embed_dim, tiny.depths, tiny.num_heads, tiny.num_features) == (96, (2, 2, 6, 2),
                                                                                (4, 8, 16, 32), 768)
    shapes = {k: tuple(v.shape) for k, v in clap.ClapAudioEncoder(tiny).state_dict().items()}
    assert shapes["audio_projection.0.weight"] == (512, 768)  # HTSAT-tiny.json "embed_dim": 768
    assert shapes["audio_branch.patch_embed.proj.weight"] == (96, 1, 4, 4)
    assert not any(k.startswith("audio_branch.layers.2.blocks.6.") for k in shapes)


def test_repeat_pad_tiles_whole_copies_then_zero_pads():
    clip = torch.arange(1, 200_001, dtype=torch.float32)[None]  # 200 000 samples fit twice in 480 000
    padded = clap.repeat_pad(clip)
    assert padded.shape == (1, 480_000)
    torch.testing.assert_close(padded[0, 200_000:400_000], clip[0])
    assert padded[0, 400_000:].abs().sum() == 0
    with pytest.raises(ValueError, match="windowed"):
        clap.repeat_pad(torch.zeros(1, 480_001))


def test_int16_quantisation_truncates_like_laion_clap():
    x = torch.tensor([0.5, -0.5, 1.7, 1e-6])
    expected = np.trunc(np.clip(x.numpy(), -1, 1) * 32767.0).astype(np.int16) / 32767.0
    torch.testing.assert_close(clap.quantize_int16(x), torch.from_numpy(expected.astype(np.float32)))


def test_clap_tower_gives_unit_norm_512_d_embeddings_deterministically(tiny_clap):
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 48_000, generator=g)
    with torch.no_grad():
        emb = tiny_clap(audio)
        again = tiny_clap(audio)
        tiled = tiny_clap(audio.repeat(1, 10))  # exactly what repeatpad makes of the 1 s clips
    assert emb.shape == (2, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(again, emb, rtol=0, atol=0)
    torch.testing.assert_close(tiled, emb, rtol=1e-5, atol=1e-6)
    assert (emb[0] - emb[1]).abs().max() > 1e-4


def test_clap_loader_names_file_source_and_checksum(tmp_path):
    match = "music_audioset_epoch_15_esc_90.14.pt.*laion_clap.*fae3e9c0"
    with pytest.raises(MissingWeightsError, match=match):
        clap.load_clap_audio(tmp_path)
    with pytest.raises(MissingWeightsError, match="630k-audioset-best.pt.*laion_clap"):
        clap.load_clap_audio(tmp_path, clap.CLAP_AUDIO_WEIGHTS)


def test_presets_are_fadtks_models():
    assert set(PRESETS) == {"vggish", "clap-laion-audio", "clap-laion-music"}
    settings = lambda p: (p.sample_rate_hz, p.window_seconds, p.hop_seconds, p.min_seconds,  # noqa: E731
                          p.embedding_dim, p.embedding_dtype)
    assert settings(VGGISH_FAD) == (16_000, 0.96, 0.96, 1.0, 128, "float16")
    assert settings(CLAP_LAION_AUDIO) == (48_000, 10.0, 1.0, 0.0, 512, "float16")
    assert settings(CLAP_LAION_MUSIC) == settings(CLAP_LAION_AUDIO)
    assert CLAP_LAION_MUSIC.l2_normalized and not VGGISH_FAD.l2_normalized
    music = json.loads(json.dumps(CLAP_LAION_MUSIC.to_dict()))
    assert music["weights"] == "music_audioset_epoch_15_esc_90.14.pt"
    assert CLAP_LAION_AUDIO.weights == "630k-audioset-best.pt"


def test_clap_windows_start_every_second_and_are_zero_padded_to_10_s():
    x = np.random.default_rng(0).uniform(-1, 1, 25 * 48_000)
    w = windows(x, CLAP_LAION_MUSIC)
    assert w.shape == (25, 480_000)  # starts 0, 1, …, 24 s
    for k in (0, 7, 15, 20, 24):  # fadtk: audio[k s : k s + 10 s], zero-padded at the end
        expected = np.zeros(480_000)
        chunk = x[k * 48_000 : k * 48_000 + 480_000]
        expected[: len(chunk)] = chunk
        np.testing.assert_allclose(w[k], expected, rtol=0, atol=1e-7)
    assert windows(np.ones(3 * 48_000 + 1), CLAP_LAION_AUDIO).shape == (4, 480_000)  # a 4th start at 3 s
    short = windows(np.ones(24_000), CLAP_LAION_AUDIO)
    assert short.shape == (1, 480_000) and short[0, :24_000].all() and not short[0, 24_000:].any()


def test_vggish_pads_clips_under_1_s_with_zeros_as_fadtk():
    assert windows(np.zeros(8_000), VGGISH_FAD).shape == (1, 1, 96, 64)  # padded to 16 000 samples
    np.testing.assert_array_equal(windows(np.full(8_000, 0.1), VGGISH_FAD),
                                  windows(np.r_[np.full(8_000, 0.1), np.zeros(8_000)], VGGISH_FAD))


def test_front_end_is_fadtks_torchaudio_resampling_and_16_bit_file(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (44_100, 2))
    mono = torch.from_numpy(stereo.T.astype(np.float32)).mean(0, keepdim=True)  # torchaudio.load, float32
    resampler = torchaudio.transforms.Resample(  # fadtk/fad.py's settings
        44_100, 48_000, lowpass_filter_width=64, rolloff=0.9475937167399596,
        resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
    soundfile.write(tmp_path / "converted.wav", resampler(mono)[0].numpy(), 48_000, subtype="PCM_16")
    expected = soundfile.read(tmp_path / "converted.wav", dtype="int16")[0] / 32768.0
    np.testing.assert_array_equal(front_end(stereo, 44_100, 48_000), expected)
    same_rate = front_end(np.array([0.25, -0.5, 0.3]), 48_000, 48_000)
    np.testing.assert_array_equal(same_rate, np.array([8192, -16384, 9830]) / 32768.0)


def test_embeddings_are_rounded_to_float16_and_clips_cut_to_clip_seconds():
    embedder = AudioEmbedder(VGGISH_FAD, MeanBands(), clip_seconds=2.0)
    x = 0.3 * np.sin(np.arange(16_000 * 5) * 0.05)
    emb = embedder.embed(x, 16_000)
    assert emb.shape == (2, 64) and emb.dtype == np.float64  # 2 s: two 0.96 s windows, not five
    np.testing.assert_array_equal(emb, emb.astype(np.float16).astype(np.float64))
    whole = AudioEmbedder(VGGISH_FAD, MeanBands()).embed(x, 16_000)
    np.testing.assert_array_equal(whole[:2], emb)
    with pytest.raises(ValueError, match="clip_seconds must be > 0"):
        AudioEmbedder(VGGISH_FAD, MeanBands(), clip_seconds=0.0)


def test_fad_is_the_frechet_distance_of_the_embeddings():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 16)), rng.standard_normal((300, 16)) * 1.1
    assert fad(a, b) == frechet_distance(a, b)


class MeanBands(nn.Module):
    """A stand-in embedding for the pipeline tests: the 64 band means of each log-mel example."""

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        return examples.mean(dim=(1, 2)).double()  # (N, 64)


def write_tones(folder, seed: int, rate: int, count: int = 7, seconds: float = 10.0):
    """Noisy tones as int16 WAVs (10 windows of 0.96 s each)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(count):
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        soundfile.write(folder / f"{i:02d}.wav", x, rate, subtype="PCM_16")
    return folder


def test_fad_from_files_pools_every_window_and_records_the_preset(tmp_path):
    embedder = AudioEmbedder(VGGISH_FAD, MeanBands())
    gen = write_tones(tmp_path / "gen", seed=0, rate=16_000)
    ref = write_tones(tmp_path / "ref", seed=1, rate=22_050)  # resampled to 16 kHz on reading
    result = fad_from_files(gen, ref, "vggish", embedder=embedder)
    gen_emb = embedder.embed_files(sorted(gen.iterdir()))
    ref_emb = embedder.embed_files(sorted(ref.iterdir()))
    assert gen_emb.shape == (70, 64) == ref_emb.shape  # 7 files × 10 windows
    assert result.fad == pytest.approx(frechet_distance(gen_emb, ref_emb), rel=1e-9)
    assert result.fad > 1.0
    record = result.to_dict()
    assert record["preset"] == VGGISH_FAD.to_dict() and record["num_gen_windows"] == 70
    assert record["clip_seconds"] is None and record["weights"]["sha256"] is None
    assert record["num_ref_windows"] == 70 and record["num_gen_files"] == 7


def test_fad_against_saved_reference_stats_equals_the_folder_result(tmp_path):
    embedder = AudioEmbedder(VGGISH_FAD, MeanBands())
    gen = write_tones(tmp_path / "gen", seed=0, rate=16_000)
    ref = write_tones(tmp_path / "ref", seed=2, rate=16_000)
    stats_path = tmp_path / "ref_stats.npz"
    save_reference_stats(stats_path, embedder.embed_files(sorted(ref.iterdir())), embedder)
    from_stats = fad_from_files(gen, stats_path, "vggish", embedder=embedder)
    from_folder = fad_from_files(gen, ref, "vggish", embedder=embedder)
    assert from_stats.fad == pytest.approx(from_folder.fad, rel=1e-9)
    assert fad_from_files(gen, gen, "vggish", embedder=embedder).fad == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="preset 'vggish'"):
        load_reference_stats(stats_path, AudioEmbedder(CLAP_LAION_MUSIC, MeanBands()))
    with pytest.raises(ValueError, match="cut to None s, these are cut to 3.0 s"):
        load_reference_stats(stats_path, AudioEmbedder(VGGISH_FAD, MeanBands(), clip_seconds=3.0))


def test_resampling_keeps_a_tone_in_place():
    embedder = AudioEmbedder(VGGISH_FAD, MeanBands())
    t44, t16 = np.arange(44_100 * 2) / 44_100, np.arange(16_000 * 2) / 16_000
    tone = lambda t: 0.3 * np.sin(2 * np.pi * 440.0 * t)  # noqa: E731
    stereo = np.stack([tone(t44), tone(t44)], axis=1)  # (T, 2) → mono mean
    np.testing.assert_allclose(embedder.embed(stereo, 44_100), embedder.embed(tone(t16), 16_000), atol=0.05)


def test_too_short_clips_and_empty_folders_are_errors(tmp_path):
    embedder = AudioEmbedder(VGGISH_FAD, MeanBands())
    with pytest.raises(ValueError, match="empty.wav is too short for FAD-clap-laion-music"):
        AudioEmbedder(CLAP_LAION_MUSIC, MeanBands()).embed(np.zeros(0), 48_000, name="empty.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav"):
        fad_from_files(tmp_path / "empty", tmp_path / "empty", "vggish", embedder=embedder)
    with pytest.raises(KeyError, match="unknown FAD preset"):
        fad_from_files(tmp_path / "empty", tmp_path / "empty", "pann", embedder=embedder)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vggish_and_clap_tower_on_gpu_match_cpu(tiny_clap):
    torch.manual_seed(0)
    model = vggish.VGGish().eval()
    noise = 0.1 * np.random.default_rng(0).standard_normal(48_000)
    examples = torch.from_numpy(vggish.waveform_to_examples(noise))
    audio = 0.1 * torch.randn(2, 96_000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        cpu, clap_cpu = model(examples[:, None]), tiny_clap(audio)
        gpu = model.cuda()(examples[:, None].cuda()).cpu()
        clap_gpu = tiny_clap.cuda()(audio.cuda()).cpu()
        tiny_clap.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clap_gpu, clap_cpu, rtol=1e-3, atol=1e-4)
