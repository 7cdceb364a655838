"""`layersync image prepare` and the latent data set: ADM crop, RGB conversion, unreadable files reported,
folder and parquet sources, resume and data-parallel shards, posterior sampling with flips."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.core.sample_rng import sample_keys
from layersync.image.imagenet import center_crop_adm, decode_rgb, open_source
from layersync.image.latents import LatentSource
from layersync.image.prepare import PrepareConfig, encode_shards, finalize
from layersync.image.vae import load_vae

SIZE = 32  # crop size: the tiny VAE (4 levels, like kl-f8) turns it into 4×4×4 latents


def jpeg_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A random AutoencoderKL laid out as the SD-VAE (4 levels: 8× down, 4 latent channels), tiny widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_files() -> dict[str, bytes]:
    """Class folder → JPEG files: RGB of several shapes, one CMYK, one greyscale, one truncated."""
    rng = np.random.default_rng(0)
    files = {}
    for c, cls in enumerate(("n0001", "n0002", "n0003")):
        for i in range(3):
            pixels = rng.integers(0, 256, (30 + 9 * i, 44 + c, 3), np.uint8)
            files[f"{cls}/{cls}_{i}.JPEG"] = jpeg_bytes(pixels)
    files["n0001/cmyk.JPEG"] = jpeg_bytes(rng.integers(0, 256, (40, 40, 4), np.uint8), "CMYK")
    files["n0002/grey.JPEG"] = jpeg_bytes(rng.integers(0, 256, (36, 48), np.uint8), "L")
    whole = jpeg_bytes(rng.integers(0, 256, (64, 64, 3), np.uint8))
    files["n0003/truncated.JPEG"] = whole[: len(whole) // 2]
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory, image_files) -> Path:
    root = tmp_path_factory.mktemp("ilsvrc")
    for key, data in image_files.items():
        (root / key).parent.mkdir(exist_ok=True)
        (root / key).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, folder, vae_dir) -> tuple[PrepareConfig, dict]:
    out = tmp_path_factory.mktemp("latents") / "out"
    cfg = PrepareConfig(str(folder), str(out), vae=str(vae_dir), image_size=SIZE, keep_images=True,
                        shard_size=4, batch_size=3, workers=2)
    encode_shards(cfg, progress=False)
    return cfg, finalize(out)


def read_shards(out: str | Path, name: str) -> np.ndarray:
    index = json.loads((Path(out) / "index.json").read_text())
    return np.concatenate([np.load(Path(out) / s["name"] / f"{name}.npy") for s in index["shards"]])


def test_adm_center_crop_cuts_the_middle_square_of_an_image_that_needs_no_resize():
    image = np.zeros((SIZE, 3 * SIZE, 3), np.uint8)  # left third red, middle green, right blue
    image[:, :SIZE, 0] = 255
    image[:, SIZE : 2 * SIZE, 1] = 255
    image[:, 2 * SIZE :, 2] = 255
    crop = center_crop_adm(Image.fromarray(image), SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    assert (crop == [0, 255, 0]).all()


def test_adm_center_crop_box_halves_large_images_and_upscales_small_ones_to_the_short_side():
    checker = (np.indices((4 * SIZE, 4 * SIZE)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    crop = center_crop_adm(Image.fromarray(checker).convert("RGB"), SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and set(np.unique(crop)) <= {127, 128}  # 2×2 box means, exact
    small = center_crop_adm(Image.fromarray(np.full((10, 20, 3), 77, np.uint8)), SIZE)
    assert small.shape == (SIZE, SIZE, 3) and (small == 77).all()


def test_cmyk_and_greyscale_jpegs_decode_to_rgb(image_files):
    cmyk, grey = decode_rgb(image_files["n0001/cmyk.JPEG"]), decode_rgb(image_files["n0002/grey.JPEG"])
    assert cmyk.mode == grey.mode == "RGB"
    g = np.asarray(grey)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    with pytest.raises(OSError, match="truncated"):
        decode_rgb(image_files["n0003/truncated.JPEG"])


def test_unreadable_files_are_counted_and_listed_in_the_report_never_skipped_silently(prepared):
    cfg, index = prepared
    report = json.loads((Path(cfg.out) / "report.json").read_text())
    assert report["num_listed"] == 12 and report["num_encoded"] == index["num_items"] == 11
    assert [u["item"] for u in report["unreadable"]] == ["n0003/truncated.JPEG"]
    assert "truncated" in report["unreadable"][0]["error"] and index["num_unreadable"] == 1
    assert [s["count"] for s in index["shards"]] == [4, 4, 3]


def test_shards_hold_vae_moments_of_adm_crops_and_of_their_mirror_images(prepared, folder, vae_dir):
    cfg, index = prepared
    keys = "".join((Path(cfg.out) / s["name"] / "keys.txt").read_text() for s in index["shards"]).split()
    assert keys[:4] == ["n0001/cmyk.JPEG", "n0001/n0001_0.JPEG", "n0001/n0001_1.JPEG", "n0001/n0001_2.JPEG"]
    assert index["class_names"] == ["n0001", "n0002", "n0003"] and index["latent_shape"] == [4, 4, 4]
    assert read_shards(cfg.out, "labels").tolist() == [0] * 4 + [1] * 4 + [2] * 3
    crops = np.stack([center_crop_adm(decode_rgb((folder / k).read_bytes()), SIZE) for k in keys])
    np.testing.assert_array_equal(read_shards(cfg.out, "images"), crops)
    vae = load_vae(vae_dir)
    assert index["scaling_factor"] == pytest.approx(0.18215) and index["vae_weights_sha256"] == \
        vae.info.weights_sha256
    moments, flipped = read_shards(cfg.out, "moments"), read_shards(cfg.out, "moments_flip")
    assert moments.shape == (11, 8, 4, 4) and moments.dtype == np.float32
    np.testing.assert_allclose(moments, vae.encode_moments(crops).numpy(), atol=1e-5)
    np.testing.assert_allclose(flipped, vae.encode_moments(crops[:, :, ::-1].copy()).numpy(), atol=1e-5)
    assert not np.allclose(moments, flipped)


def test_parquet_files_give_the_same_shards_as_the_class_folder(tmp_path, prepared, image_files, vae_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder_cfg, folder_index = prepared
    keys = sorted(image_files)  # folder order: classes sorted, files sorted inside each
    labels = [("n0001", "n0002", "n0003").index(k.split("/")[0]) for k in keys]
    table = pa.table({"image": [{"bytes": image_files[k], "path": k} for k in keys], "label": labels})
    hf = {"info": {"features": {"label": {"names": ["n0001", "n0002", "n0003"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 7), tmp_path / "data" / "train-00000-of-00002.parquet", row_group_size=3)
    pq.write_table(table.slice(7), tmp_path / "data" / "train-00001-of-00002.parquet", row_group_size=3)
    assert open_source(tmp_path / "data").format == "parquet"
    cfg = PrepareConfig(str(tmp_path / "data"), str(tmp_path / "out"), vae=str(vae_dir), image_size=SIZE,
                        keep_images=True, shard_size=4, batch_size=5, workers=1)
    encode_shards(cfg, progress=False)
    index = finalize(cfg.out)
    assert index["class_names"] == folder_index["class_names"] and index["num_unreadable"] == 1
    for name in ("labels", "images", "moments", "moments_flip"):
        np.testing.assert_allclose(read_shards(cfg.out, name), read_shards(folder_cfg.out, name), atol=1e-6)


def test_parquet_without_class_names_counts_classes_and_an_unlabelled_split_is_refused(tmp_path, image_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = image_files["n0001/n0001_0.JPEG"]
    table = pa.table({"image": [{"bytes": data, "path": "a"}] * 3, "label": [0, 4, 2]})  # no HF metadata
    pq.write_table(table, tmp_path / "a.parquet")
    listing = open_source(tmp_path / "a.parquet").list()
    assert listing.class_names == ["0", "1", "2", "3", "4"] and listing.labels.tolist() == [0, 4, 2]
    assert listing.keys == ["a.parquet#0", "a.parquet#1", "a.parquet#2"]
    pq.write_table(pa.table({"image": [data], "label": [-1]}), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match="unlabelled"):
        open_source(tmp_path / "test.parquet").list()


def test_shards_split_across_processes_resume_after_interruption_and_refuse_other_settings(
        tmp_path, folder, vae_dir):
    cfg = PrepareConfig(str(folder), str(tmp_path / "out"), vae=str(vae_dir), image_size=SIZE, flip=False,
                        shard_size=3, batch_size=4, workers=1)
    assert encode_shards(cfg, rank=1, world=2, progress=False) == [1, 3]  # process 1 of 2, then "killed"
    with pytest.raises(ValueError, match="2 of 4 shards .* not encoded yet .*shard_00000.* rerun"):
        finalize(cfg.out)
    stamp = (tmp_path / "out" / "shard_00001" / "moments.npy").stat().st_mtime_ns
    assert encode_shards(cfg, progress=False) == [0, 2]  # the rerun does only what is missing
    assert encode_shards(cfg, progress=False) == []
    assert (tmp_path / "out" / "shard_00001" / "moments.npy").stat().st_mtime_ns == stamp
    index = finalize(cfg.out)
    assert index["num_items"] == 11 and not index["flip"] and not (tmp_path / "out" / "shard_00000" /
                                                                    "moments_flip.npy").exists()
    with pytest.raises(ValueError, match="different image_size .* use another --out"):
        encode_shards(dataclasses.replace(cfg, image_size=16), progress=False)
    (folder / "n0002" / "extra.JPEG").write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    try:
        with pytest.raises(ValueError, match="different source files"):
            encode_shards(cfg, progress=False)
    finally:
        (folder / "n0002" / "extra.JPEG").unlink()


def write_synthetic_latents(root: Path, means: np.ndarray, flip_means: np.ndarray, logvar: float) -> None:
    """A prepared folder (index.json + 2 shards) with chosen moments, in the format `prepare` writes."""
    n, c = means.shape[:2]
    images = np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3)  # (n, 2, 2, 3), rows distinct
    cuts = [(0, 3), (3, n)]
    for s, (lo, hi) in enumerate(cuts):
        shard = root / f"shard_{s:05d}"
        shard.mkdir(parents=True)
        for name, mean in (("moments", means), ("moments_flip", flip_means)):
            part = mean[lo:hi]
            np.save(shard / f"{name}.npy", np.concatenate([part, np.full_like(part, logvar)], 1))
        np.save(shard / "labels.npy", np.arange(lo, hi) % 3)
        np.save(shard / "images.npy", images[lo:hi])
    index = {"format": 1, "image_size": 16, "latent_shape": [c, 2, 2], "scaling_factor": 0.5, "flip": True,
             "keep_images": True, "class_names": ["a", "b", "c"], "num_classes": 3, "vae_path": "/nowhere",
             "vae_weights_sha256": "0" * 64, "source": "/nowhere", "num_items": n, "num_unreadable": 0,
             "shards": [{"name": f"shard_{s:05d}", "count": hi - lo} for s, (lo, hi) in enumerate(cuts)]}
    (root / "index.json").write_text(json.dumps(index))


def test_latent_source_draws_scaled_posterior_samples_across_shards(tmp_path):
    means = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 2, 2), np.float32)
    write_synthetic_latents(tmp_path, means, -means, logvar=np.log(4.0))  # σ = 2
    source = LatentSource(tmp_path, flip=False)
    assert len(source) == 5
    indices = torch.tensor([4, 1, 3]).repeat(4000)  # rows from both shards, out of order
    batch = source.batch(indices, sample_keys(0, 0, torch.arange(len(indices))))
    assert batch.x.shape == (12000, 2, 2, 2) and batch.cond.tolist()[:3] == [1, 1, 0] and batch.raw is None
    x = batch.x.reshape(4000, 3, -1)
    np.testing.assert_allclose(x.mean((0, 2)).numpy(), [2.0, 0.5, 1.5], atol=0.03)  # s·μ, s = 0.5
    np.testing.assert_allclose(x.std((0, 2)).numpy(), [1.0, 1.0, 1.0], atol=0.02)  # s·σ


def test_latent_source_flips_latents_and_repa_images_together(tmp_path):
    means = np.arange(1, 6, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 2, 2), np.float32)
    write_synthetic_latents(tmp_path, means, -means, logvar=-30.0)  # σ ≈ 3e-7: z = s·μ
    source = LatentSource(tmp_path, flip=True, with_images=True)
    indices = torch.arange(5).repeat(40)
    keys = sample_keys(0, 0, torch.arange(len(indices)))
    batch = source.batch(indices, keys)
    sign = torch.sign(batch.x[:, 0, 0, 0])  # +1: the stored moments, −1: those of the mirror image
    assert torch.allclose(batch.x[:, 0, 0, 0].abs(), 0.5 * (indices + 1).float(), atol=1e-5)
    assert 60 < (sign < 0).sum() < 140  # about half of 200
    stored = torch.from_numpy(np.arange(5 * 12, dtype=np.uint8).reshape(5, 2, 2, 3)).permute(0, 3, 1, 2)
    expected = stored[indices].float() / 127.5 - 1  # (B, 3, 2, 2) in [-1, 1]
    expected = torch.where((sign < 0)[:, None, None, None], expected.flip(-1), expected)
    torch.testing.assert_close(batch.raw, expected)
    again = source.batch(indices[7:9], keys[7:9])  # a sample's flip and ε follow its key, not its batch
    torch.testing.assert_close(again.x, batch.x[7:9], rtol=0, atol=0)


def test_latent_source_refuses_what_the_folder_does_not_hold(tmp_path):
    with pytest.raises(FileNotFoundError, match="layersync image prepare"):
        LatentSource(tmp_path)
    root = tmp_path / "noflip"
    write_synthetic_latents(root, np.zeros((5, 2, 2, 2), np.float32), np.zeros((5, 2, 2, 2), np.float32), 0.0)
    index = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps({**index, "flip": False, "keep_images": False}))
    with pytest.raises(ValueError, match="--flip=false"):
        LatentSource(root, flip=True)
    with pytest.raises(ValueError, match="--keep-images"):
        LatentSource(root, flip=False, with_images=True)
