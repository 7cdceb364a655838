"""Writing clips (MP4 with an explicit codec choice, PNG strips) and the frame-wise SD-VAE (tiny random
weights)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from layersync.core.weights import MissingWeightsError
from layersync.video import media
from layersync.video.media import from_uint8, read_mp4, strip_canvas, to_uint8, write_clips, write_mp4


def ramp_clip(t: int = 4, h: int = 6, w: int = 8) -> np.ndarray:
    """uint8 (T, H, W, 3): frame i is a flat colour (40·i, 255 − 40·i, 128)."""
    clip = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        clip[i] = (40 * i, 255 - 40 * i, 128)
    return clip


def test_uint8_round_trip_and_rounding():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).view(1, 3, 2, 1, 1)  # (N, 3, T, H, W)
    u8 = to_uint8(x)
    assert u8.shape == (1, 2, 1, 1, 3)
    assert u8.flatten().tolist() == [0, 128, 255, 64, 191, 255]  # channel-last: (c0,c1,c2) per frame
    torch.testing.assert_close(from_uint8(to_uint8(from_uint8(u8))), from_uint8(u8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 3, 1, 1, 1), float("nan")))


@pytest.mark.parametrize("codec", media.available_codecs())
def test_mp4_round_trip_keeps_frame_count_size_and_colours(tmp_path, codec):
    clip = ramp_clip()
    used = write_mp4(clip, tmp_path / "a.mp4", fps=8, codec=codec, upscale=2)
    assert used == codec
    back = read_mp4(tmp_path / "a.mp4")
    assert back.shape == (4, 12, 16, 3)
    np.testing.assert_allclose(back[:, 6, 8].astype(float), clip[:, 3, 4].astype(float), atol=6)


def test_auto_codec_prefers_libx264_and_says_when_it_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(media, "available_codecs", lambda: ["libx264", "mpeg4"])
    assert media.choose_codec("auto") == "libx264"
    monkeypatch.setattr(media, "available_codecs", lambda: ["mpeg4"])
    with caplog.at_level(logging.WARNING):
        assert media.choose_codec("auto") == "mpeg4"
    assert "no libx264 encoder; writing MP4s with mpeg4" in caplog.text
    with pytest.raises(ValueError, match="cannot encode libx264; available: mpeg4"):
        media.choose_codec("libx264")


def test_odd_frame_sizes_need_an_even_upscale(tmp_path):
    with pytest.raises(ValueError, match="even frame sizes, got 5×8"):
        write_mp4(ramp_clip(h=5), tmp_path / "odd.mp4")
    assert write_mp4(ramp_clip(h=5), tmp_path / "odd.mp4", upscale=2) in media.CODECS


def test_strip_places_frames_left_to_right_with_separators():
    clip = ramp_clip(t=3, h=2, w=2)
    canvas = strip_canvas(clip, upscale=3, pad=1, pad_value=9)
    assert canvas.shape == (2 * 3 + 2, 3 * (2 * 3 + 1) + 1, 3)
    for i in range(3):
        x0 = 1 + i * 7
        assert (canvas[1:7, x0 : x0 + 6] == clip[i, 0, 0]).all()
        assert (canvas[:, x0 - 1] == 9).all()  # separator before each frame


def test_write_clips_writes_an_mp4_and_strip_per_clip_and_all_strips(tmp_path):
    clips = np.stack([ramp_clip(), ramp_clip()[::-1]])
    codec, paths = write_clips(clips, tmp_path, fps=4, upscale=2)
    names = sorted(p.name for p in paths)
    assert names == ["clip_000.mp4", "clip_000.png", "clip_001.mp4", "clip_001.png", "strips.png"]
    assert codec in media.CODECS
    strips = np.asarray(Image.open(tmp_path / "strips.png"))
    assert strips.shape == (2 * (6 * 2 + 1) + 1, 4 * (8 * 2 + 1) + 1, 3)
    assert len(read_mp4(tmp_path / "clip_001.mp4")) == 4


# ------------------------------------------------------------------------------------------------- SD-VAE
@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    folder = tmp_path_factory.mktemp("weights") / "sd-vae-ft-ema"
    vae.save_pretrained(folder)
    return folder


def test_frame_vae_encodes_each_frame_on_its_own_with_the_scaling_factor(tiny_vae_dir):
    from layersync.video.latents import FrameVAE

    vae = FrameVAE.from_local(tiny_vae_dir, frames_per_batch=3)  # chunks that split clips: order must hold
    torch.manual_seed(1)
    clips = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    z = vae.encode(clips)
    assert z.shape == (2, 4, 4, 8, 8) == (2, *vae.latent_shape((3, 4, 16, 16)))
    with torch.no_grad():
        frame = vae.vae.encode(clips[1, :, 2][None]).latent_dist.mean[0] * 0.18215  # clip 1, frame 2
    torch.testing.assert_close(z[1, :, 2], frame)
    x = vae.decode(z)
    assert x.shape == clips.shape
    with torch.no_grad():
        expected = vae.vae.decode(z[0, :, 3][None] / 0.18215).sample[0]
    torch.testing.assert_close(x[0, :, 3], expected)


def test_frame_vae_records_and_checks_the_weights_sha256(tiny_vae_dir):
    from layersync.core.weights import sha256sum
    from layersync.video.latents import FrameVAE

    digest = sha256sum(tiny_vae_dir / "diffusion_pytorch_model.safetensors")
    vae = FrameVAE.from_local(tiny_vae_dir, expected_sha256=digest)
    assert vae.describe()["sha256"] == digest and vae.describe()["downsample"] == 2
    with pytest.raises(MissingWeightsError, match="expected 0000"):
        FrameVAE.from_local(tiny_vae_dir, expected_sha256="0000")


def test_missing_vae_names_what_to_fetch(tmp_path, monkeypatch, tiny_vae_dir):
    from layersync.video.latents import resolve_vae

    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="huggingface.co/stabilityai/sd-vae-ft-ema"):
        resolve_vae(None)
    with pytest.raises(MissingWeightsError, match="missing config.json, diffusion_pytorch_model.safetensors"):
        resolve_vae(tmp_path)
    monkeypatch.setenv("LAYERSYNC_WEIGHTS", str(tiny_vae_dir.parent))
    assert resolve_vae(None) == tiny_vae_dir
