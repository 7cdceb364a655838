"""Probe sets on real labelled data (analyze, --align.layersync=auto): MTG-Jamendo held-out tracks (a test TSV
or a mel store, with and without a mel VAE) and prepared ImageNet-style latents, each equal to what the
training pipeline feeds the model for the same items; then `analyze` and `auto` end to end on tiny runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.audio import jamendo, probe as audio_probe
from layersync.audio.decode import write_wav
from layersync.audio.mel import MelConfig, MelStats
from layersync.audio.run import AudioData, AudioRecipe
from layersync.core.cli_util import run_main
from layersync.core.errors import UserError, UserValueError
from layersync.core.sample_rng import sample_keys

ROOT = Path(__file__).resolve().parents[1]
MEL = MelConfig(sample_rate_hz=16_000, n_fft=256, hop_length=128, n_mels=16)
CLIP = 8  # frames: 8 × 128 samples = 0.064 s
HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
# id, tags, seconds of audio (None: no file, "bad": not audio), sine frequency
TEST = [("10", "genre---rock\tinstrument---guitar", 0.31, 440), ("11", "mood/theme---sad", 0.3, 500),
        ("12", "genre---jazz\tgenre---rock", 0.27, 660), ("13", "genre---pop", None, 0),
        ("14", "genre---rock", "bad", 0), ("15", "genre---pop", 0.05, 300),
        ("16", "genre---blues", 0.2, 770), ("17", "instrument---voice\tgenre---pop", 0.4, 550)]
TRAIN = [(str(20 + i), f"genre---{g}\tinstrument---{ins}", 0.3, 200 + 60 * i) for i, (g, ins) in
         enumerate([("rock", "guitar"), ("jazz", "piano"), ("pop", "voice"), ("blues", "guitar")] * 2)]
# 11: no tag of the vocabulary, 13: missing, 14: unreadable, 15: shorter than a clip
PROBED = ["10", "12", "16", "17"]


def write_split(root: Path, name: str, rows) -> Path:
    lines = [HEADER]
    for track, tags, seconds, freq in rows:
        lines.append(f"track_{track}\ta\tb\t{track[-1]}/{track}.wav\t1.0\t{tags}")
        path = root / "audio" / track[-1] / f"{track}.wav"
        if seconds == "bad":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"RIFF" + bytes(range(200)))
        elif seconds is not None:
            t = np.arange(int(seconds * MEL.sample_rate_hz)) / MEL.sample_rate_hz
            write_wav(path, 0.3 * np.sin(2 * np.pi * freq * t), MEL.sample_rate_hz)
    tsv = root / "splits" / "split-0" / f"autotagging-{name}.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text("\n".join(lines) + "\n")
    return tsv


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jamendo")
    write_split(root, "test", TEST)
    write_split(root, "train", TRAIN)
    return root


def jamendo_cfg(root: Path, **data) -> AudioRecipe:
    tsv = str(root / "splits" / "split-0" / "autotagging-train.tsv")
    return AudioRecipe(data=AudioData(**{"source": "jamendo", "tsv": tsv, "audio_root": str(root / "audio"),
                                         **data}), mel=MEL, clip_frames=CLIP)


def vocabulary(root: Path, category: str = "genre") -> jamendo.TagVocabulary:
    return jamendo.TagVocabulary.from_tracks(jamendo.read_tsv(root / "splits" / "split-0" /
                                                              "autotagging-train.tsv"), category)


STATS = MelStats(np.linspace(-6, -2, MEL.n_mels), np.linspace(1, 3, MEL.n_mels), MEL, 100)


def centre(lengths: torch.Tensor, clip: int, keys: torch.Tensor) -> torch.Tensor:
    return (lengths - clip).clamp_min(0) // 2


def probed_tracks(root: Path) -> list[jamendo.JamendoTrack]:
    tracks = jamendo.read_tsv(root / "splits" / "split-0" / "autotagging-test.tsv")
    return [t for t in tracks if t.track_id.removeprefix("track_") in PROBED]


@pytest.mark.parametrize("rule, layout", [("first_tag", "frames"), ("multi_hot", "image")])
def test_jamendo_probe_is_the_test_split_as_training_feeds_it(split, monkeypatch, caplog, rule, layout):
    category = "genre" if rule == "first_tag" else "all"
    cfg = dataclasses.replace(jamendo_cfg(split, conditioning=rule, tags=category), layout=layout)
    vocab = vocabulary(split, category)
    probe = audio_probe.probe_set(cfg, STATS, vocab.tags)
    # Training's source for the same tracks, its random crop moved to the centre.
    monkeypatch.setattr(jamendo, "random_offsets", centre)
    tracks = probed_tracks(split)
    conds = jamendo.stack_conditions(jamendo.conditions(tracks, vocab, rule), rule)
    source = jamendo.JamendoSource(tracks, conds, split / "audio", ".mp3", MEL, STATS, CLIP, layout)
    batch = source.batch(torch.arange(4), sample_keys(0, 0, torch.arange(4)))
    torch.testing.assert_close(probe.x, batch.x)
    torch.testing.assert_close(probe.cond, batch.cond)
    first = ["genre---rock", "genre---jazz", "genre---blues", "genre---pop"]
    if rule == "multi_hot":
        first[3] = "instrument---voice"  # track 17's first tag of all: it comes before its genre
    assert probe.labels.tolist() == [vocab.tags.index(t) for t in first]
    assert probe.task.startswith(f"first {category} tag (first_tag rule")
    assert ("multi_hot" in probe.task) == (rule == "multi_hot")
    assert "4 centre clips of autotagging-test.tsv, 4 tracks skipped" in probe.task
    assert "skipped 4 tracks" in caplog.text and "unreadable: 2" in caplog.text


def test_jamendo_probe_stops_at_its_cap(split, monkeypatch):
    monkeypatch.setattr(audio_probe, "PROBE_TRACKS", 2)
    probe = audio_probe.probe_set(jamendo_cfg(split), STATS, vocabulary(split).tags)
    assert len(probe.x) == 2 and "2 centre clips of autotagging-test.tsv, 1 tracks skipped" in probe.task


def test_jamendo_probe_reads_a_held_out_mel_store_as_the_store_source_does(split, tmp_path, monkeypatch):
    from layersync.audio import store as store_module
    from layersync.audio.store import MelStore, MelStoreSource, build_mel_store

    folder = tmp_path / "test_store"
    build_mel_store(jamendo.read_tsv(split / "splits" / "split-0" / "autotagging-test.tsv"), split / "audio",
                    folder, MEL, audio_suffix=".mp3")
    vocab = vocabulary(split)
    cfg = jamendo_cfg(split, store="/a/training/store", tsv="", probe_data=str(folder))
    probe = audio_probe.probe_set(cfg, STATS, vocab.tags)
    monkeypatch.setattr(store_module, "random_offsets", centre)
    source = MelStoreSource(MelStore(folder), vocab, "first_tag", CLIP, "frames", STATS)
    batch = source.batch(torch.arange(len(source)), sample_keys(0, 0, torch.arange(len(source))))
    assert [MelStore(folder).entries[i]["track_id"] for i in source.keep] == [f"track_{t}" for t in PROBED]
    torch.testing.assert_close(probe.x, batch.x)
    assert probe.labels.tolist() == batch.cond.tolist() == [3, 1, 0, 2]  # blues, jazz, pop, rock
    assert "of test_store, 2 tracks skipped" in probe.task  # 11: no genre, 15: too short (13, 14: not stored)


def test_jamendo_probe_through_a_mel_vae_is_its_posterior_mean(split, tmp_path):
    from diffusers import AutoencoderKL

    from layersync.audio.layout import to_model
    from layersync.audio.vae import MelVae

    torch.manual_seed(0)
    AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=2,
                  norm_num_groups=4, layers_per_block=1, scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    vae, identity = MelVae(tmp_path / "vae"), MelStats.identity(MEL)
    cfg = dataclasses.replace(jamendo_cfg(split), layout="image", vae=str(tmp_path / "vae"))
    probe = audio_probe.probe_set(cfg, identity, vocabulary(split).tags, vae)
    # Training: raw log-mels in the frames layout (run.load_data), encoded by VaeSource; s·μ without keys.
    tracks = probed_tracks(split)
    source = jamendo.JamendoSource(tracks, torch.zeros(4), split / "audio", ".mp3", MEL, identity, CLIP,
                                   "frames")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jamendo, "random_offsets", centre)
        raw = source.batch(torch.arange(4), sample_keys(0, 0, torch.arange(4))).x
    expected = to_model(vae.encode(raw), "image")
    assert probe.x.shape == (4, 2, MEL.n_mels // 2, CLIP // 2)
    torch.testing.assert_close(probe.x, expected)


@pytest.mark.parametrize("change, message", [
    ({"store": "/a/store", "tsv": ""}, "names no split to probe; give held-out tracks with --probe-data"),
    ({"tsv": "/data/meta.tsv"}, "has no test split beside it (a name with train in it)"),
    ({"probe_data": "/no/such.tsv"}, "probe data /no/such.tsv: no such TSV or mel store"),
])
def test_jamendo_probe_refusals_are_one_line_saying_what_to_do(split, change, message):
    with pytest.raises(UserError) as err:
        audio_probe.probe_set(jamendo_cfg(split, **change), STATS, vocabulary(split).tags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_probe_data_of_a_synthetic_run_and_clevrer_runs_are_refused_in_one_line():
    from layersync.video.probe import probe_set as video_probe_set
    from layersync.video.run import VideoRecipe

    with pytest.raises(UserError, match="a synthetic-music run probes the synthetic test split") as err:
        audio_probe.probe_set(AudioRecipe(data=AudioData(probe_data="test.tsv")), STATS, ())
    with pytest.raises(UserError, match="reads the videos, not their annotations") as err2:
        video_probe_set(VideoRecipe(data="/data/clevrer"))
    assert "\n" not in str(err.value) + str(err2.value)


def test_jamendo_probe_with_one_class_says_so(split, tmp_path):
    one = write_split(tmp_path, "one", [TEST[0], TEST[2]])  # rock, jazz; the jazz track's clip is kept
    cfg = jamendo_cfg(split, probe_data=str(one), tags="instrument")  # only track 10 has an instrument
    with pytest.raises(UserValueError, match=r"1 usable tracks of 1 instrument class\(es\) \(1 skipped\)"):
        audio_probe.probe_set(cfg, STATS, vocabulary(split, "instrument").tags)


# ImageNet-style latents: prepared folders in the format `layersync image prepare` writes.
LABELS = np.array([0, 1, 2, 3, 4] * 3 + [2, 0, 4, 4, 1, 3, 0])  # 22 items, 5 classes


def write_prepared(root: Path, labels: np.ndarray, sha: str, vae_path: str = "/nowhere", seed: int = 0,
                   shard_size: int = 8) -> Path:
    """Shards of moments (μ ‖ log σ², and the mirror image's) with labels, and the index."""
    rng = np.random.default_rng(seed)
    n, shards = len(labels), []
    for s, lo in enumerate(range(0, n, shard_size)):
        hi = min(n, lo + shard_size)
        shard = root / f"shard_{s:05d}"
        shard.mkdir(parents=True)
        for name in ("moments", "moments_flip"):
            np.save(shard / f"{name}.npy", rng.standard_normal((hi - lo, 8, 4, 4)).astype(np.float32))
        np.save(shard / "labels.npy", labels[lo:hi].astype(np.int64))
        shards.append({"name": shard.name, "count": hi - lo})
    index = {"format": 1, "image_size": 32, "latent_shape": [4, 4, 4], "scaling_factor": 0.25, "flip": True,
             "keep_images": False, "class_names": [f"n{c}" for c in range(5)], "num_classes": 5,
             "vae_path": vae_path, "vae_weights_sha256": sha, "source": "/nowhere", "num_items": n,
             "num_unreadable": 0, "shards": shards}
    (root / "index.json").write_text(json.dumps(index))
    return root


def latents_cfg(data: Path, **kw):
    from layersync.image.run import ImageRecipe

    return ImageRecipe(dataset="latents", data=str(data), image_size=32, num_classes=5, vae_sha256="ab" * 32,
                       **kw)


def test_latent_probe_is_the_training_source_without_flip_or_draw(tmp_path, monkeypatch):
    from layersync.image import latent_probe, latents
    from layersync.image.run import probe_set

    data = write_prepared(tmp_path / "train", LABELS, "ab" * 32)
    monkeypatch.setattr(latent_probe, "PER_CLASS", 2)
    monkeypatch.setattr(latent_probe, "MAX_EXAMPLES", 6)  # 3 of the 5 classes: 0, 2 and 4
    probe = probe_set(latents_cfg(data))
    pick = [0, 2, 4, 5, 7, 9]  # the first two items of classes 0, 2, 4 in storage order (over 2 shards)
    assert probe.labels.tolist() == probe.cond.tolist() == LABELS[pick].tolist() == [0, 2, 4, 0, 2, 4]
    assert probe.task == "class, 6 latents (3 classes × ≤ 2) of train, the run's training data"
    # Training's source on the same items, mirrored never and its posterior draw ε set to 0: z = s·μ.
    monkeypatch.setattr(latents, "normal", lambda keys, purpose, shape: torch.zeros(len(keys), *shape))
    source = latents.LatentSource(data, flip=False)
    batch = source.batch(torch.tensor(pick), sample_keys(0, 0, torch.arange(6)))
    torch.testing.assert_close(probe.x, batch.x, rtol=0, atol=0)
    assert probe.x.shape == (6, 4, 4, 4) and batch.cond.tolist() == probe.labels.tolist()


def test_latent_probe_reads_a_held_out_folder_of_the_runs_vae_and_classes(tmp_path):
    from layersync.image.run import probe_set

    train = write_prepared(tmp_path / "train", LABELS, "ab" * 32)
    val = write_prepared(tmp_path / "val", np.arange(10) % 5, "ab" * 32, seed=1)
    probe = probe_set(latents_cfg(train, probe_data=str(val)))
    assert probe.labels.tolist() == list(np.arange(10) % 5) and probe.task.endswith("of val, held out")
    assert probe_set(latents_cfg(train), str(val)).task == probe.task  # analyze's --probe-data
    other = write_prepared(tmp_path / "other", LABELS, "cd" * 32)
    no_sha = dataclasses.replace(latents_cfg(train, probe_data=str(other)), vae_sha256="")  # the index's VAE
    for cfg, message in [(latents_cfg(train, probe_data=str(other)), "prepare it with the run's --vae"),
                         (no_sha, f"the run by {'ab' * 32}"),
                         (latents_cfg(train, probe_data=str(tmp_path)), "make it with `layersync image"),
                         (latents_cfg(write_prepared(tmp_path / "one", np.zeros(4, int), "ab" * 32)),
                          "holds 1 class; the probes need two or more")]:
        with pytest.raises(UserError, match=message) as err:
            probe_set(cfg)
        assert "\n" not in str(err.value)
    from layersync.image.run import ImageRecipe

    with pytest.raises(UserError, match="a digits run probes all 1,797 digits"):
        probe_set(ImageRecipe(), str(val))


def run_recipe(script: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"{script}_17b", ROOT / "recipes" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_main(lambda: module.main(argv), prog=script)


TINY = ["--model.depth=5", "--model.hidden_size=32", "--model.num_heads=2", "--align.layersync=auto",
        "--align.layersync_auto_warmup=1", "--train.total_steps=2", "--train.global_batch_size=4",
        "--train.ckpt_every=2", "--train.log_every=1"]


def analyze(domain: str, run: Path, *extra: str) -> dict:
    from layersync.cli import main

    main([domain, "analyze", "--run", str(run), "--t", "0.5", "--no-pruning", *extra])
    return json.loads((run / "analysis.json").read_text())


def test_jamendo_run_chooses_its_pair_and_is_analysed_on_its_test_split(split, tmp_path, single_thread,
                                                                         monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run_recipe("audio_sit.py", [f"--run_dir={run}", "--data.source=jamendo", "--fad_embedding=none",
                                f"--data.tsv={split / 'splits' / 'split-0' / 'autotagging-train.tsv'}",
                                f"--data.audio_root={split / 'audio'}", "--mel.n_fft=256",
                                "--mel.hop_length=128", "--mel.n_mels=16", f"--clip_frames={CLIP}", *TINY,
                                "--samples=2", "--sample.steps=1", "--griffin_lim_iterations=1"])
    record = json.loads((run / "layersync_auto.json").read_text())
    assert (record["student"], record["teacher"]) == (2, 4) and "of autotagging-test.tsv" in record["reason"]
    out = analyze("audio", run)
    assert out["n_examples"] == 4 and "4 centre clips of autotagging-test.tsv" in out["task"]
    assert np.shape(out["probe_accuracy"]) == (1, 5)


def test_latents_run_chooses_its_pair_on_held_out_latents_and_analyze_probes_either(tmp_path, single_thread):
    from diffusers import AutoencoderKL

    from layersync.core.weights import sha256sum

    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                  sample_size=32).save_pretrained(tmp_path / "vae")
    sha = sha256sum(next((tmp_path / "vae").glob("diffusion_pytorch_model.*")))
    train = write_prepared(tmp_path / "train", LABELS, sha, str(tmp_path / "vae"))
    val = write_prepared(tmp_path / "val", np.arange(10) % 5, sha, str(tmp_path / "vae"), seed=1)
    run = tmp_path / "run"
    run_recipe("image_sit.py", [f"--run_dir={run}", "--dataset=latents", f"--data={train}", "--image_size=32",
                                "--num_classes=5", f"--probe_data={val}", *TINY, "--grid_classes=0,1",
                                "--grid_per_class=1", "--sample.sampler=euler", "--sample.steps=1"])
    record = json.loads((run / "layersync_auto.json").read_text())
    assert (record["student"], record["teacher"]) == (2, 4) and "10 latents" in record["reason"]
    assert analyze("image", run)["task"].endswith("of val, held out")  # the run's probe_data
    out = analyze("image", run, "--probe-data", str(train))
    assert out["n_examples"] == 22 and out["task"].endswith("of train, held out")
