"""FVD: the I3D port (TF SAME padding, detector flags, 400 logits) and the StyleGAN-V protocol."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.weights import MissingWeightsError
from layersync.metrics.frechet import GaussianStats, frechet_distance
from layersync.metrics.fvd import STYLEGAN_V, clip_features, fvd, fvd_from_clips, to_detector_input
from layersync.metrics.i3d import I3D, MaxPool3dSame, Unit3D, load_i3d, prepare, same_padding


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
    assert record["protocol"] == STYLEGAN_V.to_dict() and (record["num_gen"], record["num_ref"]) == (80, 80)
    assert STYLEGAN_V.num_frames == 16 and STYLEGAN_V.feature_dim == 400


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
