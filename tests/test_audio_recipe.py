"""The audio recipe at toy size: run directory, WAVs and spectrograms, FAD-tagger, resume,
`layersync audio …`, MTG-Jamendo through a mel store, and one-line errors for bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from layersync.core.cli_util import run_main

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--model.depth=4", "--model.hidden_size=96", "--model.num_heads=2", "--align.layersync=2:3",
       "--train.total_steps=6", "--train.global_batch_size=8", "--train.ckpt_every=3",
       "--train.sample_every=3", "--train.log_every=3", "--data.synth_per_class=2", "--samples=4",
       "--eval_samples=16", "--sample.steps=2", "--griffin_lim_iterations=2", "--tagger.train_per_class=4",
       "--tagger.epochs=1", "--tagger.feature_dim=4", "--tagger.batch_size=16"]


def recipe(argv: list[str]) -> dict:
    """Run recipes/audio_sit.py's main in-process, as its __main__ does (user errors: one line, exit 2)."""
    spec = importlib.util.spec_from_file_location("audio_sit_recipe", ROOT / "recipes" / "audio_sit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    run_main(lambda: out.update(module.main(argv)), prog="recipes/audio_sit.py")
    return out


def layersync(argv: list[str]) -> None:
    from layersync.cli import main

    main(argv)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("LAYERSYNC_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("audio_sit") / "run"
    return run_dir, recipe([f"--run_dir={run_dir}", *TOY])


def test_run_directory_holds_wavs_spectrograms_and_a_named_fad(run):
    run_dir, result = run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["layout"] == "frames" and config["mel"]["n_mels"] == 48
    assert config["train"]["total_steps"] == 6
    names = json.loads((run_dir / "audio_data.json").read_text())["names"]
    assert names[:2] == ["flute/melody", "flute/chords"]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003.pt", "step_00000006.pt"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and "layersync/cos_2_3" in rows[-1]
    step3 = run_dir / "samples" / "ema_step_00000003"
    wavs = sorted(step3.glob("*.wav"))
    assert [w.name for w in wavs] == ["000_flute-melody.wav", "001_flute-chords.wav",
                                      "002_clarinet-melody.wav", "003_clarinet-chords.wav"]
    assert all(w.with_suffix(".png").stat().st_size > 500 for w in wavs)
    info = soundfile.info(wavs[0])
    assert (info.samplerate, info.frames, info.subtype) == (16_000, 32 * 256, "PCM_16")
    for png in ("samples_ema.png", "curves.png", "samples/ema_step_00000006/overview.png"):
        assert (run_dir / png).stat().st_size > 500
    saved = json.loads((run_dir / "eval.json").read_text())
    assert result["step"] == saved["step"] == 6 and saved["num_files"] == 16
    assert len(list((run_dir / "eval_wavs").glob("*.wav"))) == 16
    assert "not FAD-VGGish or FAD-CLAP" in saved["metric"] and saved["vocoder"] == "griffin_lim"
    assert saved["fad_tagger"] > saved["fad_tagger_floor_real"] > 0
    assert saved["fad_tagger_floor_griffin_lim"] > 0 and 0 <= saved["tagger_accuracy"] <= 1
    assert saved["nfe_per_sample"] == 3  # Heun, 2 steps: 2 + 1 evaluations


def test_rerunning_the_same_command_resumes(run, capsys):
    run_dir, _ = run
    recipe([f"--run_dir={run_dir}", *TOY])
    captured = capsys.readouterr()
    assert "resumed from step 6" in captured.out + captured.err


def test_layersync_audio_sample_then_evaluate_as_the_run_does(run, tmp_path, capsys):
    run_dir, _ = run
    layersync(["audio", "sample", "--run", str(run_dir), "--num", "8", "--steps", "2",
               "--out", str(tmp_path)])
    assert "8 clips of 0.51 s" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.wav"))) == 8 and (tmp_path / "overview.png").is_file()
    assert (tmp_path / "0007_pluck-chords.png").is_file()
    layersync(["audio", "evaluate", str(tmp_path), "--run", str(run_dir)])
    result = json.loads((tmp_path / "fad_tagger.json").read_text())
    assert result["num_files"] == 8 and result["fad_tagger"] > 0
    assert "fad_tagger" in capsys.readouterr().out


def test_sample_then_evaluate_with_default_counts_works_and_too_few_says_how_many(run, tmp_path, capsys):
    run_dir, _ = run
    layersync(["audio", "sample", "--run", str(run_dir), "--steps", "1", "--out", str(tmp_path / "default")])
    assert "16 clips of" in capsys.readouterr().out  # the run's eval_samples: what its own FAD uses
    layersync(["audio", "evaluate", str(tmp_path / "default"), "--run", str(run_dir)])
    assert json.loads((tmp_path / "default" / "fad_tagger.json").read_text())["num_files"] == 16
    layersync(["audio", "sample", "--run", str(run_dir), "--num", "2", "--steps", "1",
               "--out", str(tmp_path / "two")])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        layersync(["audio", "evaluate", str(tmp_path / "two"), "--run", str(run_dir)])
    err = capsys.readouterr().err.strip()  # 4-d tagger features, one window per 0.51 s clip
    assert err.endswith("generated audio: 2 windows from 2 files for 4-d embeddings; a Fréchet distance "
                        "needs at least 5; 5 files like these would do (e.g. `layersync audio sample --num "
                        "5`)"), err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A tiny MTG-Jamendo tree (MP3s, one corrupt) prepared into a mel store at HiFi-GAN's mel config."""
    from layersync.audio.decode import write_mp3

    root = tmp_path_factory.mktemp("jamendo")
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    tags = ["genre---rock\tinstrument---guitar", "genre---jazz\tinstrument---piano", "genre---rock",
            "genre---pop\tinstrument---piano"]
    t = np.arange(22_050) / 22_050
    for i, tag in enumerate(tags):
        lines.append(f"track_{i}\tartist_{i}\talbum_{i}\t0{i}/{i}.mp3\t1.0\t{tag}")
        wave = 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t)
        write_mp3(root / "audio" / f"0{i}" / f"{i}.mp3", wave, 22_050)
    lines.append("track_9\tartist_9\talbum_9\t09/9.mp3\t1.0\tgenre---pop")
    (root / "audio" / "09").mkdir()
    (root / "audio" / "09" / "9.mp3").write_bytes(b"\xff\xfb" + bytes(range(256)) * 8)
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    layersync(["audio", "prepare", "--tsv", str(root / "train.tsv"), "--audio-root", str(root / "audio"),
               "--out", str(root / "store"), "--min-frames", "16"])
    return root / "store"


def test_jamendo_store_trains_a_multi_hot_model_and_samples_tag_sets(store, tmp_path, cache):
    skipped = (store / "skipped.tsv").read_text().splitlines()
    assert len(json.loads((store / "index.json").read_text())["tracks"]) == 4
    assert len(skipped) == 2 and skipped[1].startswith("track_9\t") and "unreadable" in skipped[1]
    run_dir = tmp_path / "run"
    recipe([f"--run_dir={run_dir}", "--preset=jamendo-b2-multihot", f"--data.store={store}", "--data.tags=all",
            "--fad_embedding=none", "--vocoder=griffin_lim", "--clip_frames=16", "--layout=image",
            "--model.preset=S/4",
            "--model.depth=4", "--model.hidden_size=32", "--model.num_heads=2", "--align.layersync=2:3",
            "--train.total_steps=2", "--train.global_batch_size=4", "--train.lr=1e-3", "--samples=3",
            "--train.ckpt_every=0", "--train.sample_every=0", "--sample.steps=1",
            "--griffin_lim_iterations=1"])
    info = json.loads((run_dir / "audio_data.json").read_text())
    assert info["cond_kind"] == "text" and len(info["names"]) == 5  # 3 genres + 2 instruments
    assert [tuple(s) for s in info["sample_tags"][:1]] == [("genre---rock", "instrument---guitar")]
    wavs = sorted((run_dir / "samples" / "ema_step_00000002").glob("*.wav"))
    assert len(wavs) == 3 and soundfile.info(wavs[0]).samplerate == 22_050
    assert soundfile.info(wavs[0]).frames == 16 * 256


@pytest.mark.parametrize("argv, expected", [
    (["--fad_embedding=clap-laion-music"], "needs --fad_reference"),
    (["--align.repa_block=2"], "REPA aligns to an image encoder"),
    (["--vocoder=hifigan"], "use the 'hifigan22k' mel preset"),
    (["--layout=bogus"], "is not one of image, frames"),
    (["--mel.hop_length=255"], "must be even"),
    (["--model.patch_size=4"], "each token carries 192 values (48 channels × patch 4) but the width is 128"),
    (["--data.source=jamendo", "--fad_embedding=none"], "needs --data.tsv and --data.audio_root"),
    (["--data.source=jamendo", "--fad_embedding=none", "--data.store=/no/such"], "is not a mel store"),
    (["--data.source=jamendo"], "fad_embedding=tagger measures only the synthetic music"),
])
def test_bad_recipe_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        recipe([f"--run_dir={tmp_path}/run", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err


@pytest.mark.parametrize("argv, expected", [
    (["audio", "sample", "--run", "/no/such/run"], "does not exist"),
    (["audio", "evaluate", "/no/such/folder"], "is not a folder of audio files"),
    (["audio", "prepare", "--tsv", "x.tsv", "--audio-root", "/no/such", "--out", "s"], "no such folder"),
])
def test_bad_cli_input_is_one_clear_line(capsys, cache, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        layersync(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err


def test_dry_run_prints_the_config_and_the_model_size(capsys, tmp_path):
    recipe([f"--run_dir={tmp_path}/run", "--dry-run", "--preset=synth-2d"])
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1])["layout"] == "image"
    assert "24 tokens of 1×8×8 values" in out and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A random one-channel AutoencoderKL (downsampling 2, 4 latent channels) saved as a local folder."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        latent_channels=4, norm_num_groups=4, layers_per_block=1, scaling_factor=0.5)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder)
    return folder


def test_mel_vae_maps_mels_to_frequency_first_latents_and_back(tiny_vae):
    import torch

    from layersync.audio.vae import MelVae, vae_geometry

    assert vae_geometry(tiny_vae).latent_size(48, 32) == (24, 16)
    vae = MelVae(tiny_vae)
    mel = torch.randn(3, 48, 32) - 5
    z = vae.encode(mel)
    assert z.shape == (3, 4, 24, 16)
    direct = vae.vae.encode(mel.transpose(1, 2)[:, None]).latent_dist.mean * 0.5  # AudioLDM's (B, 1, T, F)
    torch.testing.assert_close(z, direct.transpose(2, 3))
    from layersync.core.sample_rng import normal, sample_keys

    keys = sample_keys(0, 4, torch.arange(3))
    sampled = vae.encode(mel, keys)  # s · (μ + σ ε), ε from each sample's key
    dist = vae.vae.encode(mel.transpose(1, 2)[:, None]).latent_dist
    expected = (dist.mean + dist.std * normal(keys, "vae", tuple(dist.mean.shape[1:]))) * 0.5
    torch.testing.assert_close(sampled, expected.transpose(2, 3))
    torch.testing.assert_close(vae.encode(mel[1:], keys[1:]), sampled[1:])  # whatever the batch
    assert vae.decode(z).shape == (3, 48, 32)
    with pytest.raises(ValueError, match="multiples of it"):
        vae.geometry.latent_size(47, 32)


def test_recipe_trains_on_vae_latents_and_decodes_samples(tiny_vae, tmp_path, cache, capsys):
    run_dir = tmp_path / "run"
    recipe([f"--run_dir={run_dir}", f"--vae={tiny_vae}", "--layout=image", "--model.preset=S/4",
            "--model.depth=4", "--model.hidden_size=64", "--model.num_heads=2", "--align.layersync=2:3",
            "--train.total_steps=2", "--train.global_batch_size=4", "--train.ckpt_every=0",
            "--data.synth_per_class=1", "--samples=2", "--fad_embedding=none", "--sample.steps=1",
            "--griffin_lim_iterations=1"])
    wavs = sorted((run_dir / "samples" / "ema_step_00000002").glob("*.wav"))
    assert len(wavs) == 2 and soundfile.info(wavs[0]).frames == 32 * 256
    np.testing.assert_array_equal(np.load(run_dir / "mel_stats.npz")["std"], np.ones(48))  # VAE: raw mels
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("run directory:"))
    assert "samples/*/*.wav" in line and "eval.json" not in line and "eval_wavs" not in line  # evaluation off


def test_jamendo_presets_are_named_by_model_size_and_xl2_is_the_papers():
    from layersync.audio.run import PRESETS, AudioRecipe, check_token_width, clip_seconds
    from layersync.core.config import apply_overrides
    from layersync.core.models import PRESETS as MODEL_PRESETS

    b2, xl2 = (apply_overrides(AudioRecipe(), PRESETS[name]) for name in ("jamendo-b2", "jamendo-xl2"))
    assert (b2.model.preset, b2.align.layersync) == ("B/2", "4:8")
    assert (xl2.model.preset, xl2.align.layersync, xl2.align.layersync_weight) == ("XL/2", "8:16", 0.2)
    assert MODEL_PRESETS["XL/2"]["depth"] == 28 and MODEL_PRESETS["XL/2"]["hidden_size"] == 1152
    assert xl2.fad_embedding == "clap-laion-music" and clip_seconds(xl2) == 2.972  # 256 · 256 / 22 050 s
    check_token_width(xl2)  # 80 mels × 2 frames = 160 values per token ≤ 1152
    assert apply_overrides(AudioRecipe(), PRESETS["jamendo-xl2-vanilla"]).align.layersync == ""
