"""MTG-Jamendo metadata, tag vocabularies, decoding (MP3/WAV, one corrupt), live clips and the mel store."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch

from layersync.audio import jamendo
from layersync.audio.decode import AudioReadError, load_audio, write_mp3, write_wav
from layersync.audio.mel import MelConfig, MelStats, MelStatsAccumulator, log_mel
from layersync.core.sample_rng import sample_keys
from layersync.audio.store import MelStore, MelStoreSource, build_mel_store

MEL = MelConfig(sample_rate_hz=16_000, n_fft=256, hop_length=128, n_mels=16)
SR = 16_000
TSV = """TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS
track_0000001\tartist_1\talbum_1\t01/1.mp3\t1.5\tgenre---rock\tinstrument---guitar\tmood/theme---happy
track_0000002\tartist_1\talbum_1\t02/2.mp3\t1.5\tgenre---jazz\tgenre---rock\tinstrument---piano
track_0000003\tartist_2\talbum_2\t03/3.mp3\t1.5\tinstrument---piano\tmood/theme---sad
track_0000004\tartist_2\talbum_2\t04/4.wav\t1.5\tgenre---pop\tinstrument---voice
track_0000005\tartist_3\talbum_3\t05/5.mp3\t1.5\tgenre---rock
track_0000006\tartist_3\talbum_3\t06/6.mp3\t0.2\tgenre---pop
"""


def sine(freq_hz: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny MTG-Jamendo tree: MP3s at 22.05 kHz, a stereo 44.1 kHz WAV, one corrupt MP3 (track 5)."""
    root = tmp_path_factory.mktemp("jamendo")
    (root / "meta.tsv").write_text(TSV)
    audio = root / "audio"
    for i, freq in ((1, 440.0), (2, 660.0), (3, 880.0), (6, 500.0)):
        write_mp3(audio / f"{i:02d}" / f"{i}.mp3", sine(freq, 1.5 if i != 6 else 0.2, 22_050), 22_050)
    stereo = np.stack([sine(550.0, 1.5, 44_100), sine(550.0, 1.5, 44_100)], axis=1)
    (audio / "04").mkdir()
    soundfile.write(audio / "04" / "4.wav", stereo, 44_100, subtype="PCM_16")
    (audio / "05").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, 4000, np.uint8)
    (audio / "05" / "5.mp3").write_bytes(b"ID3" + bytes(noise))
    return root


def test_tsv_rows_become_tracks_with_all_their_tags(dataset):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    assert len(tracks) == 6
    assert tracks[1] == jamendo.JamendoTrack("track_0000002", "artist_1", "album_1", "02/2.mp3", 1.5,
                                             ("genre---jazz", "genre---rock", "instrument---piano"))


def test_malformed_tsv_is_an_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text(TSV.splitlines()[0] + "\ntrack_1\ta\tb\t01/1.mp3\tlong\tgenre---rock\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: DURATION 'long'"):
        jamendo.read_tsv(bad)
    bad.write_text("ID PATH\n")
    with pytest.raises(ValueError, match="header"):
        jamendo.read_tsv(bad)


@pytest.mark.parametrize("category, tags", [
    ("genre", ("genre---jazz", "genre---pop", "genre---rock")),
    ("instrument", ("instrument---guitar", "instrument---piano", "instrument---voice")),
    ("moodtheme", ("mood/theme---happy", "mood/theme---sad")),
])
def test_vocabulary_of_a_category_is_its_sorted_tags(dataset, category, tags):
    assert jamendo.TagVocabulary.from_tracks(jamendo.read_tsv(dataset / "meta.tsv"), category).tags == tags


def test_top50_keeps_the_50_tags_on_most_tracks_ties_by_name():
    tracks = [jamendo.JamendoTrack(str(i), "", "", "", 30.0, tuple(f"genre---g{j:02d}" for j in range(i + 1)))
              for i in range(60)]  # tag g_j is on 60 − j tracks: g00 … g49 are the top 50
    vocab = jamendo.TagVocabulary.from_tracks(tracks, "top50")
    assert vocab.tags == tuple(f"genre---g{j:02d}" for j in range(50))
    tie = [jamendo.JamendoTrack("1", "", "", "", 30.0, tuple(f"genre---t{j:02d}" for j in range(55)))]
    assert jamendo.TagVocabulary.from_tracks(tie, "top50").tags[-1] == "genre---t49"


def test_first_tag_and_multi_hot_conditioning(dataset):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    vocab = jamendo.TagVocabulary.from_tracks(tracks, "genre")  # jazz 0, pop 1, rock 2
    assert jamendo.conditions(tracks, vocab, "first_tag") == [2, 0, None, 1, 2, 1]
    multi = jamendo.conditions(tracks, vocab, "multi_hot")
    np.testing.assert_array_equal(multi[1], [1, 0, 1])
    assert multi[2] is None


def test_mp3_and_stereo_wav_decode_to_mono_at_the_asked_rate(dataset):
    mp3 = load_audio(dataset / "audio/01/1.mp3", SR)
    assert abs(len(mp3) - 1.5 * SR) < 0.01 * SR  # LAME's delay and padding are removed by the decoder
    assert abs(dominant_hz(mp3, SR) - 440) < 2
    wav = load_audio(dataset / "audio/04/4.wav", SR)
    assert len(wav) == int(1.5 * SR) and abs(dominant_hz(wav, SR) - 550) < 2
    assert abs(np.sqrt(np.mean(wav[1000:-1000] ** 2)) - 0.3 / np.sqrt(2)) < 0.01  # channel mean, not sum


@pytest.mark.parametrize("content", [b"", b"ID3garbage" * 100], ids=["empty", "garbage"])
def test_undecodable_files_raise_audio_read_error(tmp_path, content):
    path = tmp_path / "x.mp3"
    path.write_bytes(content)
    with pytest.raises(AudioReadError, match="x.mp3"):
        load_audio(path, SR)
    with pytest.raises(AudioReadError, match="no such file"):
        load_audio(tmp_path / "missing.wav", SR)


def test_unusable_tracks_are_counted_listed_and_skipped_with_a_warning(dataset, tmp_path, caplog):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    vocab = jamendo.TagVocabulary.from_tracks(tracks, "genre")
    kept, conds, skipped = jamendo.select_tracks(tracks, vocab, "first_tag", dataset / "audio", ".mp3", 1.0)
    assert [t.track_id[-1] for t in kept] == ["1", "2", "4"] and conds == [2, 0, 1]
    reasons = {s.track_id[-1]: s.reason for s in skipped}
    assert reasons["3"] == "no genre tag" and "shorter than" in reasons["6"]
    assert reasons["5"].startswith("unreadable: ") and "5.mp3" in reasons["5"]
    jamendo.write_skipped(skipped, tmp_path / "skipped.tsv")
    assert len((tmp_path / "skipped.tsv").read_text().splitlines()) == 1 + 3
    with caplog.at_level(logging.WARNING):
        jamendo.report_skipped(skipped, len(tracks), "skipped.tsv")
    assert "skipped 3 of 6 tracks" in caplog.text


def test_live_source_crops_random_normalised_clips_replayed_by_the_seed(dataset):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    vocab = jamendo.TagVocabulary.from_tracks(tracks, "genre")
    kept, conds, _ = jamendo.select_tracks(tracks, vocab, "first_tag", dataset / "audio", ".mp3", 1.0)
    stats = jamendo.stats_from_tracks(kept, dataset / "audio", ".mp3", MEL, max_tracks=3)
    source = jamendo.JamendoSource(kept, jamendo.stack_conditions(conds, "first_tag"), dataset / "audio",
                                   ".mp3", MEL, stats, clip_frames=32, layout="image")
    idx = torch.tensor([0, 2, 1])
    a = source.batch(idx, sample_keys(5, 0, torch.arange(3)))
    b = source.batch(idx, sample_keys(5, 0, torch.arange(3)))
    c = source.batch(idx, sample_keys(6, 0, torch.arange(3)))
    assert a.x.shape == (3, 1, 16, 32) and a.cond.tolist() == [2, 1, 0]
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert abs(float(a.x.mean())) < 1.5  # normalised by the tracks' own statistics


def test_mel_store_holds_every_readable_track_and_lists_the_corrupt_one(dataset, tmp_path, caplog):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    with caplog.at_level(logging.WARNING):
        summary = build_mel_store(tracks, dataset / "audio", tmp_path / "store", MEL, min_frames=32)
    assert summary.kept == 4 and [s.track_id[-1] for s in summary.skipped] == ["5", "6"]
    assert "unreadable" in summary.skipped[0].reason and "skipped 2 of 6" in caplog.text
    assert not (tmp_path / "store.tmp").exists()
    skipped_lines = (tmp_path / "store" / "skipped.tsv").read_text().splitlines()
    assert len(skipped_lines) == 3 and "5.mp3" in skipped_lines[1]
    store = MelStore(tmp_path / "store")
    wave = torch.from_numpy(load_audio(dataset / "audio/02/2.mp3", SR))
    expected = log_mel(wave, MEL).numpy()  # (F, frames)
    assert store.entries[1]["frames"] == expected.shape[1]
    np.testing.assert_allclose(store.clip(1, 5, 20), expected[:, 5:25], atol=0.01, rtol=0.002)  # float16
    acc = MelStatsAccumulator(MEL)
    for i, e in enumerate(store.entries):
        acc.add(store.clip(i, 0, e["frames"]))
    np.testing.assert_allclose(store.stats.mean, acc.result().mean, atol=1e-3)
    with pytest.raises(ValueError, match="already exists"):
        build_mel_store(tracks, dataset / "audio", tmp_path / "store", MEL)
    build_mel_store(tracks, dataset / "audio", tmp_path / "store2", MEL, min_frames=32, workers=2)
    assert (tmp_path / "store2/mels.f16").read_bytes() == (tmp_path / "store/mels.f16").read_bytes()


def test_store_source_gives_clips_with_classes_or_multi_hot_vectors(dataset, tmp_path):
    tracks = jamendo.read_tsv(dataset / "meta.tsv")
    build_mel_store(tracks, dataset / "audio", tmp_path / "store", MEL, min_frames=32)
    store = MelStore(tmp_path / "store")
    vocab = jamendo.TagVocabulary.from_tracks(store.tracks, "instrument")  # guitar, piano, voice
    source = MelStoreSource(store, vocab, "multi_hot", clip_frames=32, layout="frames")
    assert len(source) == 4
    batch = source.batch(torch.tensor([1, 2]), sample_keys(0, 0, torch.arange(2)))
    assert batch.x.shape == (2, 16, 32)
    assert batch.cond.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]  # track 2: piano; track 3: piano
    classes = MelStoreSource(store, jamendo.TagVocabulary.from_tracks(store.tracks, "genre"), "first_tag", 32,
                             "image")
    assert len(classes) == 3 and classes.cond.tolist() == [2, 0, 1]  # track 3 has no genre


def test_stats_file_refuses_a_different_mel_config(tmp_path):
    stats = MelStats(np.zeros(16), np.ones(16), MEL, 10)
    stats.save(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="mel config"):
        MelStats.load(tmp_path / "s.npz", MelConfig())


def test_written_wav_is_16_bit_and_clipped(tmp_path):
    path = write_wav(tmp_path / "a" / "x.wav", np.array([0.0, 0.5, 2.0, -3.0]), SR)
    info = soundfile.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == SR
    np.testing.assert_allclose(soundfile.read(path)[0], [0.0, 0.5, 1.0, -1.0], atol=1 / 32768)


def test_recipe_reads_jamendo_live_with_first_tag_classes(dataset, tmp_path):
    from layersync.audio.run import AudioData, AudioRecipe, load_data

    data = AudioData(source="jamendo", tsv=str(dataset / "meta.tsv"), audio_root=str(dataset / "audio"),
                     tags="genre", stats_tracks=2)
    cfg = AudioRecipe(data=data, mel=MEL, clip_frames=32, fad_embedding="none")
    source, info, stats = load_data(cfg, tmp_path)
    assert info.cond_kind == "class" and info.names == ("genre---jazz", "genre---pop", "genre---rock")
    assert len(source) == 3 and stats.mel == MEL  # tracks 1, 2, 4: 3 has no genre, 5 is corrupt, 6 is short
    assert len((tmp_path / "skipped_tracks.tsv").read_text().splitlines()) == 1 + 3
    batch = source.batch(torch.tensor([0, 2]), sample_keys(0, 0, torch.arange(2)))
    assert batch.x.shape == (2, 16, 32) and batch.cond.tolist() == [2, 1]
    labels, names = info.conditions(4)
    assert labels.tolist() == [0, 0, 1, 2] and names[0] == "genre---jazz"
