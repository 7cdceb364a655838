"""The ImageNet path at toy size: prepare → train a few steps → sample at scale → evaluate; and the presets.

Everything runs in-process (one diffusers import) on a folder of generated JPEGs (one CMYK, one truncated), a
random tiny AutoencoderKL with the SD-VAE's layout (32² images → 4×4×4 latents) and a random tiny DINOv2."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from layersync.core.config import apply_overrides
from layersync.core.models import PRESETS as MODEL_PRESETS
from layersync.image.run import PRESETS, ImageRecipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image_size=32", "--num_classes=3", "--model.depth=4", "--model.hidden_size=32",
        "--model.num_heads=2", "--train.total_steps=4", "--train.global_batch_size=8", "--train.log_every=2",
        "--train.ckpt_every=2", "--train.sample_every=2", "--grid_classes=0,2", "--grid_per_class=2",
        "--sample.sampler=euler", "--sample.steps=2"]
SAMPLE = ["--sampler", "euler", "--steps", "2", "--seed", "3"]


def recipe_main(argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location("image_sit_recipe", ROOT / "recipes" / "image_sit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def layersync(*argv: str) -> None:
    from layersync.cli import main

    main(list(argv))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """JPEG class folders, a tiny VAE and a tiny DINOv2, then `layersync image prepare` on them."""
    from diffusers import AutoencoderKL
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(1)
    for c, cls in enumerate(("n01", "n02", "n03")):
        (root / "src" / cls).mkdir(parents=True)
        for i in range(4):
            shape = (40 + 4 * i, 48, 3)
            base = np.full(shape, 60 * c + 20, np.uint8) + rng.integers(0, 40, shape, np.uint8)
            Image.fromarray(base).save(root / "src" / cls / f"{i}.JPEG")
    Image.fromarray(rng.integers(0, 256, (36, 36, 4), np.uint8), "CMYK").save(root / "src" / "n01" / "c.JPEG")
    (root / "src" / "n02" / "bad.JPEG").write_bytes((root / "src" / "n02" / "0.JPEG").read_bytes()[:300])
    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                  sample_size=32).save_pretrained(root / "vae")
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=224)).save_pretrained(root / "dinov2")
    layersync("image", "prepare", str(root / "src"), str(root / "latents"), "--vae", str(root / "vae"),
              "--image-size", "32", "--keep-images", "--shard-size", "5", "--workers", "2")
    return root


@pytest.fixture(scope="module")
def run_dir(work) -> Path:
    run = work / "run"
    recipe_main(["--preset=sit-l2-layersync", f"--data={work / 'latents'}", f"--run_dir={run}",
                 "--align.layersync=2:3", *TINY])
    return run


def test_prepare_reports_what_it_encoded_and_what_it_could_not_read(work, capsys):
    index = json.loads((work / "latents" / "index.json").read_text())
    assert index["num_items"] == 13 and index["num_unreadable"] == 1 and index["latent_shape"] == [4, 4, 4]
    report = json.loads((work / "latents" / "report.json").read_text())
    assert [u["item"] for u in report["unreadable"]] == ["n02/bad.JPEG"]
    layersync("image", "prepare", str(work / "src"), str(work / "latents"), "--vae", str(work / "vae"),
              "--image-size", "32", "--keep-images", "--shard-size", "5")  # a rerun finds nothing to do
    assert "13 images encoded into 3 shards" in capsys.readouterr().out


def test_training_on_prepared_latents_records_the_vae_and_writes_decoded_grids(run_dir, work):
    config = json.loads((run_dir / "config.json").read_text())
    index = json.loads((work / "latents" / "index.json").read_text())
    assert config["dataset"] == "latents" and config["model"]["preset"] == "L/2"
    assert config["vae"] == index["vae_path"] and config["vae_sha256"] == index["vae_weights_sha256"]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002.pt", "step_00000004.pt"]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and "layersync/cos_2_3" in rows[-1]
    grid = Image.open(run_dir / "samples_ema.png")
    assert grid.size == (2 * 32 + 3, 2 * 32 + 3) and grid.mode == "RGB"  # 2 classes × 2 samples, 1-px borders
    assert (run_dir / "samples" / "ema_step_00000002.png").exists()


def test_repa_preset_trains_on_latents_with_the_stored_crops_as_encoder_input(work):
    run = work / "run_repa"
    recipe_main(["--preset=sit-b2-repa", f"--data={work / 'latents'}", f"--run_dir={run}", *TINY,
                 "--train.total_steps=2", "--align.repa_block=2", f"--align.repa_encoder={work / 'dinov2'}"])
    row = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 2 and -1.0 <= row["repa/cos"] <= 1.0 and row["repa/loss"] == pytest.approx(
        -0.5 * row["repa/cos"], rel=1e-5)


def test_noise_and_labels_of_a_sample_depend_only_on_seed_and_index():
    from layersync.image.sampling import rank_slice, sample_labels, sample_noise

    torch.testing.assert_close(sample_noise([3, 5], (4, 2, 2), seed=1)[1], sample_noise([5], (4, 2, 2), 1)[0])
    assert not torch.equal(sample_noise([5], (4, 2, 2), 1), sample_noise([5], (4, 2, 2), 2))
    labels = sample_labels(3000, 3, seed=0)
    assert torch.equal(labels, sample_labels(3000, 3, seed=0)) and labels.bincount().min() > 900
    assert [list(rank_slice(10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


@pytest.fixture(scope="module")
def sampled(run_dir, work) -> tuple[Path, str]:
    """Process 1 of 2 draws its half [5, 10) and stops; `layersync image sample` then finishes the job."""
    import contextlib
    import io

    from layersync.core.recipe import build_interpolant
    from layersync.image.cli import _load_run, _spec
    from layersync.image.sampling import sample_labels, sample_pngs
    from layersync.image.vae import load_vae

    out = work / "samples"
    cfg, model, shape, _, _ = _load_run(str(run_dir), None)
    spec = _spec(cfg, type("Args", (), {"sampler": "euler", "steps": 2, "sde_steps": None, "cfg_scale": None,
                                        "cfg_interval": None})())
    vae, interpolant = load_vae(cfg.vae, cfg.vae_sha256), build_interpolant(cfg.path)
    report = sample_pngs(model, interpolant, spec, vae.decode, out / "images", sample_labels(10, 3, 3), shape,
                         seed=3, batch_size=3, rank=1, world=2, progress=False)
    assert report.written == 5 and sorted(p.name for p in (out / "images").iterdir())[0] == "000005.png"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        layersync("image", "sample", "--run", str(run_dir), "--num-samples", "10", "--batch-size", "4",
                  "--out", str(out), *SAMPLE)
    return out, stdout.getvalue()


def test_sampling_splits_indices_over_processes_resumes_and_writes_an_adm_npz(sampled, run_dir, work, capsys):
    from layersync.core.recipe import build_interpolant
    from layersync.image.cli import _load_run, _spec
    from layersync.image.sampling import png_path, sample_labels, sample_pngs
    from layersync.image.vae import load_vae

    out, stdout = sampled
    assert "this process wrote 5, kept 5" in stdout
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (10, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    labels = sample_labels(10, 3, 3)
    assert data["arr_1"].tolist() == labels.tolist()
    for i in (0, 7):
        np.testing.assert_array_equal(data["arr_0"][i], np.asarray(Image.open(png_path(out / "images", i))))
    # An ODE sample is a function of (seed, index): drawn alone it matches the one drawn in a batch of 3.
    cfg, model, shape, _, _ = _load_run(str(run_dir), None)
    spec = _spec(cfg, type("Args", (), {"sampler": "euler", "steps": 2, "sde_steps": None, "cfg_scale": None,
                                        "cfg_interval": None})())
    decode = load_vae(cfg.vae).decode
    sample_pngs(model, build_interpolant(cfg.path), spec, decode, work / "alone", labels[:8], shape, seed=3,
                batch_size=1, rank=1, world=2, progress=False)
    alone = np.asarray(Image.open(png_path(work / "alone", 7))).astype(int)
    assert np.abs(alone - data["arr_0"][7].astype(int)).max() <= 1
    with pytest.raises(SystemExit):
        layersync("image", "sample", "--run", str(run_dir), "--num-samples", "10", "--out", str(out), *SAMPLE,
                  "--cfg-scale", "2")
    assert "other settings (sample" in capsys.readouterr().err


def test_two_launched_processes_each_draw_their_half_of_the_same_samples(sampled, run_dir, work):
    import os
    import shutil
    import subprocess
    import sys

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    out = work / "samples_2proc"
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "layersync.cli"]
    command = [*launch, "image", "sample", "--run", str(run_dir), "--num-samples", "10", "--batch-size", "2",
               "--out", str(out), *SAMPLE]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "this process wrote 5, kept 0" in proc.stdout  # the main process did indices 0–4 of 10
    two, one = np.load(out / "samples.npz"), np.load(sampled[0] / "samples.npz")
    assert two["arr_1"].tolist() == one["arr_1"].tolist()
    assert np.abs(two["arr_0"].astype(int) - one["arr_0"].astype(int)).max() <= 1


class StandInInception(nn.Module):
    """Stands in for the FID Inception here only (its 2048-d FID needs ≥ 2049 samples): fixed random features
    of 8×8-pooled images, 6-d pool, 5-d spatial, 4 logits."""

    def __init__(self, preprocess: str):
        super().__init__()
        self.preprocess = preprocess
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(48, 15, generator=g), requires_grad=False)
        self.eval()

    def forward(self, images: torch.Tensor):  # (B, 3, 32, 32) uint8
        from layersync.metrics.inception import InceptionOutput

        x = F.avg_pool2d(images.float() / 127.5 - 1, 8).flatten(1)  # (B, 48)
        f = torch.tanh(x @ self.weight)  # (B, 15)
        return InceptionOutput(f[:, :6], f[:, 6:11], 3 * f[:, 11:])


def test_evaluate_with_a_reference_prints_and_writes_the_adm_suite(sampled, work, monkeypatch, capsys):
    import layersync.metrics.inception as inception
    from layersync.metrics import evaluate_fid_suite, write_sample_batch

    samples = sampled[0] / "samples.npz"
    calls = []
    monkeypatch.setattr(inception, "load_fid_inception",
                        lambda path, preprocess, device: calls.append((path, preprocess)) or StandInInception(
                            preprocess))
    crops = np.concatenate([np.load(p) for p in sorted((work / "latents").glob("shard_*/images.npy"))])
    write_sample_batch(work / "ref.npz", crops)  # the training crops as the reference batch
    layersync("image", "evaluate", str(samples), "--reference", str(work / "ref.npz"), "--inception",
              "/w/inc.pth", "--batch-size", "4")
    assert calls == [("/w/inc.pth", "adm")]
    result = json.loads(samples.with_suffix(".eval.json").read_text())
    # The CLI's batch size: equal batches reduce in the same order, so the two paths agree exactly on any machine.
    expected = evaluate_fid_suite(samples, work / "ref.npz", StandInInception("adm"), batch_size=4)
    for key in ("fid", "sfid", "is", "precision", "recall"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12)
    assert result["fid"] > 0 and result["num_samples"] == 10 and result["protocol"] == "adm"
    printed = capsys.readouterr().out
    assert "sfid" in printed and "precision" in printed and "eval.json" in printed
    layersync("image", "evaluate", str(samples), "--reference", str(samples), "--protocol", "pytorch_fid",
              "--out", str(work / "self.json"))
    itself = json.loads((work / "self.json").read_text())
    assert abs(itself["fid"]) < 1e-6 and itself["precision"] == itself["recall"] == 1.0
    assert itself["protocol"] == "pytorch_fid"


IMAGENET = {  # preset: (model, LayerSync pairs, SRA pair, REPA block)
    "sit-b2": ("B/2", "", "", 0), "sit-l2": ("L/2", "", "", 0), "sit-xl2": ("XL/2", "", "", 0),
    "sit-xl2-layersync": ("XL/2", "8:16", "", 0), "sit-l2-layersync": ("L/2", "8:18", "", 0),
    "sit-xl2-sra": ("XL/2", "", "8:20", 0), "sit-b2-sra": ("B/2", "", "3:8", 0),
    "sit-xl2-repa": ("XL/2", "", "", 8), "sit-l2-repa": ("L/2", "", "", 8), "sit-b2-repa": ("B/2", "", "", 4),
}


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_presets_equal_the_papers_settings(name):
    cfg = apply_overrides(ImageRecipe(), PRESETS[name])
    assert (cfg.model.preset, cfg.align.layersync, cfg.align.sra, cfg.align.repa_block) == IMAGENET[name]
    assert (cfg.dataset, cfg.image_size, cfg.num_classes, cfg.flip) == ("latents", 256, 1000, True)
    t = cfg.train
    assert (t.global_batch_size, t.lr, t.weight_decay, t.ema_decay, t.total_steps) == (256, 1e-4, 0.0, 0.9999,
                                                                                       400_000)
    assert (cfg.model.cond_dropout, cfg.path.path, cfg.path.prediction) == (0.1, "linear", "velocity")
    assert (cfg.sample.sampler, cfg.sample.sde_steps, cfg.sample.cfg_scale) == ("sde", 250, 1.0)
    assert cfg.align.layersync_weight == 0.2 and cfg.align.sra_weight == 0.2 and cfg.align.repa_weight == 0.5
    assert cfg.run_dir == f"runs/{name}"


def test_preset_pairs_fit_their_models_and_follow_the_papers_selection_rules():
    from layersync.core.regularizers import SRA, LayerSync

    for name, (model, layersync_pairs, sra, repa) in IMAGENET.items():
        depth, width = MODEL_PRESETS[model]["depth"], MODEL_PRESETS[model]["hidden_size"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a rule-breaking pair would warn
            if layersync_pairs:
                LayerSync(layersync_pairs, weight=0.2, depth=depth)
        if sra:
            student, teacher = map(int, sra.split(":"))
            SRA(student, teacher, hidden_size=width, depth=depth)
        assert repa <= depth


def test_dry_run_shows_an_imagenet_preset_without_data_and_names_what_repa_still_needs(capsys, tmp_path):
    recipe_main(["--preset=sit-b2-repa", "--dry-run", f"--run_dir={tmp_path}/run"])
    out = capsys.readouterr().out
    config = json.loads(out[: out.rindex("}") + 1])
    assert config["model"]["preset"] == "B/2" and config["align"]["repa_block"] == 4 and config["data"] == ""
    assert "256 tokens of 4×32×32 inputs, 1000 classes" in out
    assert "REPA on block 4 needs --align.repa_encoder" in out and not (tmp_path / "run").exists()


def test_a_sit_checkpoint_imports_to_a_run_that_samples_exports_and_fine_tunes(work, capsys):
    """`image import` → `image sample` → `image export` (bit-exact) → training from it with --init_from."""
    from layersync.core.checkpoint import CheckpointError
    from layersync.core.models import DiT, DiTConfig
    from layersync.image.reference import reference_export_state

    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=(4, 4), in_channels=4, patch_size=2, depth=4, hidden_size=32,
                          num_heads=2, num_classes=3, time_input="reversed"))
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    released = reference_export_state(model, "sit")  # SiT's released layout: bare, pos_embed, 2C outputs
    torch.save(released, work / "sit.pt")
    imported = work / "imported"
    layersync("image", "import", str(work / "sit.pt"), "--format", "sit", "--run", str(imported),
              "--num-heads", "2")
    config = json.loads((imported / "config.json").read_text())
    assert config["model"]["time_input"] == "reversed" and config["image_size"] == 32
    with pytest.raises(SystemExit):  # never over an existing run
        layersync("image", "import", str(work / "sit.pt"), "--format", "sit", "--run", str(imported))
    assert "already holds checkpoints; import into a new run directory" in capsys.readouterr().err
    layersync("image", "sample", "--run", str(imported), "--num-samples", "4", "--batch-size", "4", "--vae",
              str(work / "vae"), "--out", str(work / "imported_samples"), *SAMPLE)
    assert np.load(work / "imported_samples" / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    layersync("image", "export", str(work / "back.pt"), "--run", str(imported), "--format", "sit")
    back = torch.load(work / "back.pt", weights_only=True)
    assert back.keys() == released.keys() and all(torch.equal(back[k], released[k]) for k in released)
    data = f"--data={work / 'latents'}"
    with pytest.raises(CheckpointError, match=f"--init_from={imported}"):
        recipe_main(["--preset=sit-xl2", data, f"--run_dir={imported}", *TINY])
    with pytest.raises(ValueError, match="embeds time as 'reversed'.*--model.time_input=reversed"):
        recipe_main(["--preset=sit-xl2", data, f"--run_dir={work / 'ft_bad'}", f"--init_from={imported}",
                     "--model.time_input=continuous", *TINY])
    run = work / "ft"
    recipe_main(["--preset=sit-xl2", data, f"--run_dir={run}", f"--init_from={imported}", *TINY,
                 "--train.total_steps=2", "--train.lr=0"])  # lr 0: the weights stay those it started from
    state = torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=False)
    start = torch.load(imported / "checkpoints" / "step_00000000.pt", weights_only=True)
    assert all(torch.equal(state["model"][k], start["model"][k]) for k in start["model"])
    assert all(torch.equal(state["ema"][k], start["ema"][k]) for k in start["ema"])
