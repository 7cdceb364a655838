"""Video data: the embedded balls clips (determinism, physics, labels) and the CLEVRER pipeline on tiny
generated MP4s (tree layout, splits, clip sampling, resize/crop, a truncated and a too-short file skipped and
listed, precomputed pixels and SD-VAE latents)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch

from layersync.video import balls
from layersync.video.balls import NUM_COLOURS, BallsConfig, generate
from layersync.video.clevrer import (ClipSpec, CorruptVideoError, clip_starts, decode_video, list_videos,
                                     load_clips, resize_crop, video_path)

TINY = BallsConfig(train_clips=64, test_clips=32)


# ------------------------------------------------------------------------------------------ embedded balls
def test_balls_are_deterministic_and_in_range():
    a, b = generate(TINY, 24, seed=3), generate(TINY, 24, seed=3)
    assert torch.equal(a.clips, b.clips) and torch.equal(a.count, b.count)
    assert a.clips.shape == (24, 3, 8, 16, 16) and a.clips.dtype == torch.float32
    assert a.clips.min() >= -1 and a.clips.max() <= 1
    assert not torch.equal(generate(TINY, 24, seed=4).clips, a.clips)


def test_train_and_test_splits_differ_and_have_the_configured_sizes():
    train, test = balls.balls_clips("train", TINY), balls.balls_clips("test", TINY)
    assert len(train.clips) == 64 and len(test.clips) == 32
    assert not torch.equal(train.clips[:32], test.clips)
    with pytest.raises(ValueError, match="split must be one of"):
        balls.balls_clips("validation", TINY)


def test_labels_count_distinct_colours():
    data = generate(TINY, 200, seed=0)
    assert torch.equal(data.colours.sum(1).long(), data.count)  # one distinct colour per ball
    assert set(data.count.tolist()) == {1, 2, 3}
    assert data.colours.shape == (200, NUM_COLOURS)
    assert 0.2 < data.collided.mean() < 0.8  # collisions are common but not universal


def test_single_ball_clip_has_its_colour_and_a_grey_floor():
    data = generate(replace(TINY, max_balls=1), 4, seed=0)
    colour = list(balls.COLOURS.values())[int(data.colours[0].argmax())]
    frame = (data.clips[0, :, 0] + 1) / 2  # (3, H, W) in [0, 1]
    floor = frame[:, 0, 0]  # a corner: the radius is 2.5 px and the ball centre at least 2.5 px in
    assert torch.allclose(floor, floor.mean().expand(3), atol=0.02)  # grey: R = G = B
    pixels = frame.flatten(1)  # (3, H·W)
    vivid = pixels[:, (pixels.max(0).values - pixels.min(0).values).argmax()]  # the most saturated pixel
    assert torch.corrcoef(torch.stack([vivid, torch.tensor(colour)]))[0, 1] > 0.9  # has the ball's hue


def _state(positions, velocities):
    pos = np.asarray(positions, dtype=np.float64)[None]  # (1, K, 2)
    vel = np.asarray(velocities, dtype=np.float64)[None]
    return pos, vel, np.ones(pos.shape[:2], dtype=bool)


def test_head_on_collision_exchanges_velocities_and_conserves_energy():
    cfg = replace(TINY, max_balls=2)
    pos, vel, active = _state([[6.0, 8.0], [10.9, 8.0]], [[1.0, 0.0], [-0.5, 0.0]])
    energy = (vel**2).sum()
    hit = balls._step(pos, vel, active, cfg, dt=0.25)
    assert hit.tolist() == [True]
    np.testing.assert_allclose(vel[0], [[-0.5, 0.0], [1.0, 0.0]])  # equal masses swap normal components
    assert (vel**2).sum() == pytest.approx(energy)
    assert np.linalg.norm(pos[0, 1] - pos[0, 0]) >= 2 * cfg.radius_px - 1e-9  # pushed apart


def test_wall_reflects_position_and_velocity():
    cfg = replace(TINY, max_balls=1)
    pos, vel, active = _state([[13.0, 4.0]], [[1.0, -0.5]])  # centres stay ≤ 16 − 2.5 = 13.5
    assert balls._step(pos, vel, active, cfg, dt=1.0).tolist() == [False]
    np.testing.assert_allclose(pos[0, 0], [2 * 13.5 - 14.0, 3.5])  # 14.0 mirrored at the wall
    np.testing.assert_allclose(vel[0, 0], [-1.0, -0.5])


def test_balls_never_leave_the_floor():
    cfg = replace(TINY, num_frames=40)
    rng = np.random.default_rng(0)
    count, colour, pos, vel = balls._initial_state(rng, 50, cfg)
    active = np.arange(3)[None] < count[:, None]
    for _ in range(40 * cfg.substeps):
        balls._step(pos, vel, active, cfg, 1 / cfg.substeps)
        inside = (pos >= cfg.radius_px - 1e-6) & (pos <= cfg.size - cfg.radius_px + 1e-6)
        assert inside[active].all()


# ---------------------------------------------------------------------------------------------- CLEVRER
def _write_video(path, num_frames: int, width: int = 48, height: int = 32) -> None:
    """Frame i is a flat grey of value 8·i, except a red left and a blue right 8-pixel border."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25), options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = np.full((height, width, 3), 8 * i, np.uint8)
            frame[:, :8] = (200, 0, 0)
            frame[:, -8:] = (0, 0, 200)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def clevrer_root(tmp_path_factory):
    """Train videos 0–3 (2 is truncated, 3 has 5 frames), validation video 10000, all 20 frames of 48×32."""
    root = tmp_path_factory.mktemp("clevrer")
    for vid in (0, 1, 2, 10_000):
        _write_video(video_path(root, vid), 20)
    _write_video(video_path(root, 3), 5)
    cut = video_path(root, 2)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (root / "video_00000-01000" / "notes.txt").write_text("not a video")
    return root


def test_release_layout_and_splits(clevrer_root):
    assert video_path("/d", 10_042).as_posix() == "/d/video_10000-11000/video_10042.mp4"
    assert [p.name for p in list_videos(clevrer_root, "train")] == [f"video_0000{i}.mp4" for i in range(4)]
    first_two = list_videos(clevrer_root, "train", limit=2)
    assert [p.name for p in first_two] == ["video_00000.mp4", "video_00001.mp4"]
    assert [p.name for p in list_videos(clevrer_root, "validation")] == ["video_10000.mp4"]
    with pytest.raises(FileNotFoundError, match="no CLEVRER test videos"):
        list_videos(clevrer_root, "test")


def test_clip_starts_are_non_overlapping_windows():
    spec = ClipSpec(num_frames=16, frame_stride=4, clips_per_video=0)
    assert spec.span == 61
    assert clip_starts(128, spec) == [0, 64]
    assert clip_starts(60, spec) == []
    assert clip_starts(128, replace(spec, clips_per_video=1)) == [0]
    assert clip_starts(20, ClipSpec(num_frames=3, frame_stride=2, clips_per_video=0)) == [0, 6, 12]


def test_resize_then_centre_crop():
    frames = np.full((2, 32, 48, 3), 100, np.uint8)
    frames[:, :, :4] = 255  # 480×320-like: 48×32 → 24×16, the centre crop keeps columns 4..19 of 24
    out = resize_crop(frames, 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert (out == 100).all()  # the border (→ columns 0..1) and its antialiasing blur (column 2) are cut
    portrait = np.full((1, 48, 32, 3), 7, np.uint8)
    portrait[:, -4:] = 0  # bottom rows are cropped away
    assert (resize_crop(portrait, 16) == 7).all()


def test_decode_reads_every_frame_and_rejects_a_truncated_file(clevrer_root):
    frames = decode_video(video_path(clevrer_root, 0))
    assert frames.shape == (20, 32, 48, 3)
    np.testing.assert_allclose(frames[:, 16, 24, 0], 8 * np.arange(20), atol=2)  # lossless up to YUV rounding
    with pytest.raises(CorruptVideoError):
        decode_video(video_path(clevrer_root, 2))


def test_load_clips_samples_with_stride_and_skips_bad_files_with_a_warning(clevrer_root, caplog):
    spec = ClipSpec(num_frames=3, frame_stride=3, size=16, clips_per_video=0)  # span 7, hop 9 → starts 0, 9
    with caplog.at_level(logging.WARNING):
        clips = load_clips(clevrer_root, "train", spec, progress=False)
    assert clips.clips.shape == (4, 3, 16, 16, 3)  # videos 0 and 1, two clips each
    assert clips.sources == [(0, 0), (0, 9), (1, 0), (1, 9)]
    np.testing.assert_allclose(clips.clips[1, :, 8, 8, 1], 8 * np.array([9, 12, 15]), atol=3)
    assert [s.path.rsplit("/", 1)[1] for s in clips.skipped] == ["video_00002.mp4", "video_00003.mp4"]
    assert "too short: 5 frames, a clip needs 7" in clips.skipped[1].reason
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 2 of 4 videos" in warning
    assert "video_00002.mp4" in warning and "video_00003.mp4" in warning


def test_prepare_pixels_writes_clips_and_manifest_and_reads_back_in_order(clevrer_root, tmp_path):
    from layersync.video.prepared import PreparedClips, describe, is_prepared, prepare

    spec = ClipSpec(num_frames=4, frame_stride=2, size=16, clips_per_video=1)
    manifest = prepare(clevrer_root, "train", tmp_path / "px", spec, progress=False)
    assert manifest["n_clips"] == 2 and manifest["clip_shape"] == [4, 16, 16, 3]
    skipped = [s["path"].rsplit("/", 1)[1] for s in manifest["skipped"]]
    assert skipped == ["video_00002.mp4", "video_00003.mp4"]
    assert json.loads((tmp_path / "px" / "manifest.json").read_text())["sources"] == [[0, 0], [1, 0]]
    assert is_prepared(tmp_path / "px", describe(clevrer_root, "train", spec, "pixels", 0, None))
    bigger = describe(clevrer_root, "train", replace(spec, size=32), "pixels", 0, None)
    assert not is_prepared(tmp_path / "px", bigger)
    source = PreparedClips(tmp_path / "px")
    assert len(source) == 2 and source.sample_shape == (3, 4, 16, 16)
    batch = source.batch(torch.tensor([1, 0, 1])).x
    assert batch.shape == (3, 3, 4, 16, 16) and torch.equal(batch[0], batch[2])
    expected = load_clips(clevrer_root, "train", spec, progress=False).clips[1]  # (T, S, S, 3) uint8
    torch.testing.assert_close(batch[0], torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 127.5 - 1)


def test_prepare_keeps_a_folder_with_the_same_settings_and_refuses_other_settings(clevrer_root, tmp_path):
    from layersync.core.errors import UserValueError
    from layersync.video.prepared import prepare

    spec = ClipSpec(num_frames=4, frame_stride=2, size=16, clips_per_video=1)
    first = prepare(clevrer_root, "train", tmp_path / "px", spec, progress=False)
    before = (tmp_path / "px" / "clips.npy").stat().st_mtime_ns
    assert prepare(clevrer_root, "train", tmp_path / "px", spec, progress=False) == first  # resumed: kept
    assert (tmp_path / "px" / "clips.npy").stat().st_mtime_ns == before
    with pytest.raises(UserValueError, match=r"px was prepared with different settings \(spec\.size: 16 "
                                             r"then, "
                                             r"8 now\); use another --out or the original settings"):
        prepare(clevrer_root, "train", tmp_path / "px", replace(spec, size=8), progress=False)
    assert (tmp_path / "px" / "clips.npy").stat().st_mtime_ns == before  # the 16² clips are still there
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(UserValueError, match="holds holiday.jpg and is not a prepared clip folder"):
        prepare(clevrer_root, "train", tmp_path / "photos", spec, progress=False)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    folder = tmp_path_factory.mktemp("vae") / "sd-vae-ft-ema"
    vae.save_pretrained(folder)
    return folder


def test_prepare_sd_vae_latents_equal_encoding_the_pixels(clevrer_root, tiny_vae_dir, tmp_path):
    from layersync.video.latents import FrameVAE
    from layersync.video.prepared import EncodedSource, PreparedClips, prepare

    vae = FrameVAE.from_local(tiny_vae_dir)
    spec = ClipSpec(num_frames=4, frame_stride=2, size=16, clips_per_video=1)
    manifest = prepare(clevrer_root, "train", tmp_path / "z", spec, "sd_vae", vae, limit=2, progress=False)
    assert manifest["clip_shape"] == [4, 4, 8, 8] and manifest["vae"]["sha256"] == vae.sha256
    latents = PreparedClips(tmp_path / "z")
    prepare(clevrer_root, "train", tmp_path / "px", spec, limit=2, progress=False)
    on_the_fly = EncodedSource(PreparedClips(tmp_path / "px"), vae)
    assert on_the_fly.sample_shape == latents.sample_shape == (4, 4, 8, 8)
    idx = torch.tensor([0, 1])
    torch.testing.assert_close(latents.batch(idx).x, on_the_fly.batch(idx).x)


def test_stylegan_v_windows_are_consecutive_frames_at_the_model_rate_from_a_uniform_start():
    from layersync.video.evaluate import stylegan_v_windows

    def video(frames: int) -> np.ndarray:  # frame i is a flat grey of value i
        grey = np.arange(frames, dtype=np.uint8)[:, None, None, None]
        return np.broadcast_to(grey, (frames, 8, 8, 3)).copy()

    lengths = [33, 20, 64] + [40] * 300  # at stride 2: 17, 10 (too short), 32 and 20 frames
    spec = ClipSpec(num_frames=16, frame_stride=2, size=8)
    windows = list(stylegan_v_windows((video(n) for n in lengths), spec, 250, np.random.default_rng(0)))
    assert len(windows) == 250 and windows[0].shape == (16, 8, 8, 3)
    firsts = np.array([w[0, 0, 0, 0] for w in windows])
    for w in windows:  # 16 consecutive frames of the video taken every 2nd frame
        np.testing.assert_array_equal(w[:, 0, 0, 0], w[0, 0, 0, 0] + 2 * np.arange(16))
    assert firsts[0] in (0, 2) and firsts[1] <= 2 * 16  # the 10-frame video was passed over
    assert set(firsts[2:]) == {0, 2, 4, 6, 8}  # 20 − 16 + 1 starts, every one drawn


def test_stylegan_v_reference_statistics_from_videos(clevrer_root, tmp_path, caplog):
    from layersync.video.evaluate import stylegan_v_reference_stats

    def brightness(x, rescale=True, resize=True, return_features=True):  # (B, 1): mean grey of the window
        return x.float().mean((1, 2, 3, 4))[:, None]

    spec = ClipSpec(frame_stride=1, size=8)  # 48×32 → 12×8 → centre 8×8: only the grey of frame i (8·i)
    with caplog.at_level(logging.WARNING):
        stats = stylegan_v_reference_stats(clevrer_root, "train", tmp_path / "ref.npz", spec, num_videos=5,
                                           seed=3, detector=brightness)
    assert "video_00002.mp4: unreadable" in caplog.text  # cut in half; video 3 (5 frames) is too short
    starts = np.random.default_rng(3).integers(0, 20 - 16 + 1, size=2)  # videos 0 and 1, in ID order
    window_means = 8 * (starts + 7.5)
    assert stats.num_clips == 2 and stats.protocol.name == "stylegan-v@5" and stats.protocol.ddof == 0
    np.testing.assert_allclose(stats.gaussian.mu, [window_means.mean()], atol=1.0)  # x264 yuv rounding
    np.testing.assert_allclose(stats.gaussian.sigma, [[window_means.var()]], rtol=0.1)  # ddof 0 (1: twice)
    assert stats.sampling == {"source": str(clevrer_root), "split": "train", "frame_stride": 1, "size": 8,
                              "seed": 3, "unreadable_videos": 1}  # fmt: skip
