"""FVD: the I3D port (TF SAME padding, detector flags, 400 logits), the StyleGAN-V and prepared-clips
protocols, and the detector weights named by hash."""

import hashlib

import numpy as np
import scipy.linalg
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.weights import MissingWeightsError
from layersync.metrics.frechet import GaussianStats, frechet_distance
from layersync.metrics.fvd import (PREPARED_CLIPS, STYLEGAN_V, ReferenceStats, clip_features, fvd,
                                   fvd_from_clips, stylegan_v_protocol, to_detector_input)
from layersync.metrics.i3d import I3D, MaxPool3dSame, Unit3D, load_i3d, prepare, same_padding
from layersync.metrics.weight_ids import UNKNOWN, KnownWeights, identify


def signal_preserving(model: nn.Module) -> nn.Module:
    """He-normal convolutions so a random 40-layer net does not shrink every input to its biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture(scope="module")
def tiny_i3d():
    torch.manual_seed(0)
    return signal_preserving(I3D(width_divisor=8))


def test_same_padding_matches_tensorflow():
    assert same_padding(224, 7, 2) == (2, 3)  # out 112: 111·2 + 7 − 224 = 5, extra at the end
    assert same_padding(16, 7, 2) == (2, 3)
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 1, 1) == (0, 0)
    assert same_padding(4, 2, 2) == (0, 0)


def test_unit3d_with_odd_kernel_and_stride_1_equals_symmetric_zero_padding():
    torch.manual_seed(0)
    unit = Unit3D(2, 3, (3, 3, 3)).eval()
    x = torch.randn(1, 2, 5, 6, 7)
    expected = F.relu(unit.bn(F.conv3d(x, unit.conv3d.weight, padding=1)))
    torch.testing.assert_close(unit(x), expected)


def test_max_pool_padding_never_wins():
    x = -1.0 - torch.rand(1, 1, 4, 5, 5)  # all values in (−2, −1]
    out = MaxPool3dSame((3, 3, 3), (2, 2, 2))(x)
    assert out.shape == (1, 1, 2, 3, 3) and (out < -1 + 1e-6).all()  # zero padding would give 0


def test_full_i3d_has_pytorch_i3d_names_and_12_7m_parameters():
    model = I3D()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Mixed_4f.b1b.conv3d.weight"] == (320, 160, 3, 3, 3)
    assert shapes["Mixed_5c.b3b.bn.running_var"] == (128,)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert sum(p.numel() for p in model.parameters()) == 12_697_264


def test_detector_flags_scale_to_unit_range_and_resize_each_frame_bilinearly():
    clips = torch.randint(0, 256, (2, 3, 4, 48, 64), generator=torch.Generator().manual_seed(0)).float()
    black_then_white = torch.zeros(1, 3, 2, 1, 1)
    black_then_white[:, :, 1] = 255
    scaled = prepare(black_then_white, rescale=True, resize=False)
    assert (scaled[:, :, 0] == -1).all() and (scaled[:, :, 1] == 1).all()
    torch.testing.assert_close(prepare(clips, rescale=False, resize=False), clips, rtol=0, atol=0)
    # Trilinear with the frame count kept = bilinear per frame, align_corners=False.
    frames = clips.permute(0, 2, 1, 3, 4).reshape(8, 3, 48, 64)
    frames = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    by_hand = frames.reshape(2, 4, 3, 224, 224).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(prepare(clips, rescale=False, resize=True), by_hand, rtol=1e-5, atol=1e-4)


def test_i3d_returns_400_logits_or_their_softmax_deterministically(tiny_i3d):
    clips = torch.randint(0, 256, (2, 3, 9, 48, 64), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        logits = tiny_i3d(clips, rescale=True, resize=True, return_features=True)
        probs = tiny_i3d(clips, rescale=True, resize=True, return_features=False)
    assert logits.shape == (2, 400)
    torch.testing.assert_close(probs, logits.softmax(-1), rtol=0, atol=0)  # same forward, bit for bit
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_i3d_refuses_frames_it_cannot_pool_to_one_logit(tiny_i3d):
    with pytest.raises(ValueError, match="224×224"):
        tiny_i3d(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match="at least 9"):
        tiny_i3d(torch.zeros(1, 3, 8, 224, 224))


def test_state_dict_detector_round_trip_and_missing_file_error(tmp_path):
    with pytest.raises(MissingWeightsError, match="i3d_torchscript.pt.*dropbox"):
        load_i3d(tmp_path)
    torch.manual_seed(1)
    model = I3D()
    torch.save(model.state_dict(), tmp_path / "i3d_torchscript.pt")
    loaded = load_i3d(tmp_path)
    assert isinstance(loaded, I3D) and not loaded.training
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_torchscript_detectors_are_used_as_they_are(tmp_path):
    class Scripted(nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = False) -> torch.Tensor:  # fmt: skip
            return x.mean(dim=(2, 3, 4)) * (2.0 if rescale else 1.0)

    torch.jit.script(Scripted()).save(str(tmp_path / "i3d_torchscript.pt"))
    detector = load_i3d(tmp_path)
    assert isinstance(detector, torch.jit.ScriptModule)
    torch.testing.assert_close(detector(torch.ones(2, 3, 4, 5, 5), rescale=True), torch.full((2, 3), 2.0))


class ChannelMeans(nn.Module):
    """A stand-in detector that records its call: per-channel mean of frames 0, 15, and all 16."""

    def forward(self, x, rescale=False, resize=False, return_features=False):
        assert rescale and resize and return_features and x.shape[1:3] == (3, 16)
        return torch.cat([x[:, :, 0].mean((2, 3)), x[:, :, 15].mean((2, 3)), x.mean((2, 3, 4))], 1)


def test_clip_features_pass_the_first_16_frames_as_float_0_255_channels_first():
    clips = np.zeros((2, 20, 8, 8, 3), dtype=np.uint8)
    clips[:, 0, ..., 0] = 255  # red first frame
    clips[:, 15, ..., 2] = 100  # blue 16th frame
    clips[:, 16:] = 77  # frames past the 16th are not used
    feats = clip_features([clips[:1], clips[1:]], ChannelMeans())
    np.testing.assert_allclose(feats[0, :6], [255, 0, 0, 0, 0, 100])
    np.testing.assert_allclose(feats[1, 6:], [255 / 16, 0, 100 / 16])
    assert to_detector_input(clips, 16).dtype == torch.float32
    with pytest.raises(ValueError, match="needs 16"):
        to_detector_input(clips[:, :15], 16)


def test_fvd_from_clips_against_clips_and_against_their_statistics():
    rng = np.random.default_rng(0)
    gen = [rng.integers(0, 256, (8, 16, 8, 8, 3)) for _ in range(10)]  # 80 clips
    ref = [rng.integers(0, 128, (8, 16, 8, 8, 3)) for _ in range(10)]
    detector = ChannelMeans()
    result = fvd_from_clips(gen, ref, detector=detector)
    gen_feats, ref_feats = clip_features(gen, detector), clip_features(ref, detector)
    assert result.fvd == frechet_distance(gen_feats, ref_feats) == fvd(gen_feats, ref_feats)
    assert result.fvd > 1000  # the reference is half as bright
    stats = GaussianStats(ref_feats.mean(0), np.cov(ref_feats, rowvar=False))
    assert fvd_from_clips(gen, stats, detector=detector).fvd == pytest.approx(result.fvd, rel=1e-9)
    record = result.to_dict()
    assert record["protocol"] == PREPARED_CLIPS.to_dict()
    assert (record["num_gen"], record["num_ref"]) == (80, 80)
    assert record["detector"]["sha256"] is None and record["detector"]["name"].startswith(UNKNOWN)


def stylegan_v_fvd_by_hand(gen: np.ndarray, ref: np.ndarray) -> float:
    """StyleGAN-V's formula: FeatureStats mean/cov (Σxxᵀ/n − μμᵀ) and scipy's sqrtm of Σ_gen Σ_real."""
    def mean_cov(x):
        mu = x.mean(0)
        return mu, x.T @ x / len(x) - np.outer(mu, mu)

    (mu_g, s_g), (mu_r, s_r) = mean_cov(gen), mean_cov(ref)
    root = scipy.linalg.sqrtm(s_g @ s_r)
    return float(np.real(np.square(mu_g - mu_r).sum() + np.trace(s_g + s_r - 2 * root)))


def test_stylegan_v_protocol_scores_its_clip_count_with_ddof_0_statistics():
    assert (STYLEGAN_V.name, STYLEGAN_V.num_gen, STYLEGAN_V.num_real) == ("stylegan-v", 2048, 2048)
    assert STYLEGAN_V.ddof == 0
    assert STYLEGAN_V.num_frames == 16 and STYLEGAN_V.feature_dim == 400 and PREPARED_CLIPS.ddof == 1
    assert stylegan_v_protocol(2048) is STYLEGAN_V
    protocol = stylegan_v_protocol(30)
    assert protocol.name == "stylegan-v@30" and protocol.ddof == 0
    rng = np.random.default_rng(3)
    gen = [rng.integers(0, 256, (8, 16, 4, 4, 3)) for _ in range(5)]  # 40 clips, the protocol takes 30
    ref = [rng.integers(0, 200, (10, 16, 4, 4, 3)) for _ in range(3)]
    detector = ChannelMeans()
    result = fvd_from_clips(gen, ref, detector=detector, protocol=protocol)
    gen_feats = clip_features(gen, detector)[:30]
    expected = stylegan_v_fvd_by_hand(gen_feats, clip_features(ref, detector))
    assert result.num_gen == 30 and result.fvd == pytest.approx(expected, rel=1e-9)
    ddof1 = fvd_from_clips(gen, ref, detector=detector, protocol=PREPARED_CLIPS).fvd
    assert abs(ddof1 - result.fvd) > 1e-3 * result.fvd  # the normalisation is not a no-op
    with pytest.raises(ValueError, match="scores 30 generated clips, got 24"):
        fvd_from_clips(gen[:3], ref, detector=detector, protocol=protocol)


class ScriptedDetector(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:  # fmt: skip
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], 1) / 255.0


def test_results_record_the_detector_files_sha256_and_name_it_from_the_known_table(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(ScriptedDetector()).save(str(path))
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    gen = [rng.integers(0, 256, (8, 16, 4, 4, 3)) for _ in range(2)]
    result = fvd_from_clips(gen, [c // 2 for c in gen], weights=tmp_path)
    assert result.detector == {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                               "git_blob": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                               "name": UNKNOWN}  # fmt: skip
    blob = result.detector["git_blob"]
    assert identify(path, (KnownWeights("a git-tracked copy", git_blob=blob),)).name == "a git-tracked copy"
    by_sha = (KnownWeights("other", sha256="0" * 64), KnownWeights("mine", sha256=result.detector["sha256"]))
    assert identify(path, by_sha).name == "mine"


def test_reference_statistics_keep_their_protocol_and_refuse_other_detector_weights(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(20, 3))
    stats = ReferenceStats(GaussianStats(feats.mean(0), np.cov(feats, rowvar=False, bias=True)),
                           stylegan_v_protocol(20), 20, {"sha256": "ab" * 32, "name": "some weights"},
                           {"split": "validation", "seed": 0})
    stats.save(tmp_path / "ref.npz")
    back = ReferenceStats.load(tmp_path / "ref.npz")
    assert back.protocol == stylegan_v_protocol(20) and back.num_clips == 20 and back.sampling["seed"] == 0
    np.testing.assert_array_equal(back.gaussian.sigma, stats.gaussian.sigma)
    back.check_detector({"sha256": "ab" * 32, "name": "some weights"}, "ref.npz")
    with pytest.raises(ValueError, match="computed with detector some weights"):
        back.check_detector({"sha256": "cd" * 32, "name": UNKNOWN}, "ref.npz")
    GaussianStats(feats.mean(0), np.cov(feats, rowvar=False)).save(tmp_path / "plain.npz")
    assert ReferenceStats.load(tmp_path / "plain.npz").protocol == PREPARED_CLIPS  # no record: ours, ddof 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_i3d_on_gpu_matches_cpu_at_224():
    torch.manual_seed(0)
    model = signal_preserving(I3D())
    clips = torch.randint(0, 256, (2, 3, 16, 112, 112), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        cpu = model(clips, rescale=True, resize=True)
        gpu = model.cuda()(clips.cuda(), rescale=True, resize=True).cpu()
    assert cpu.shape == (2, 400)
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)
