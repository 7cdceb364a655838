"""MDM in the core backbone convention: shapes, capture, masks, condition dropout, LayerSync, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layersync.core.interpolants import Interpolant
from layersync.core.regularizers import AlignContext, LayerSync
from layersync.motion.generate import MotionSampleSpec, check_sampler, generate
from layersync.motion.mdm import MDM, MDMConfig, interleaved_sincos

TINY = MDMConfig(text_dim=6, max_frames=16, depth=4, hidden_size=16, num_heads=2, ff_size=32, dropout=0.0)


def tiny(**overrides) -> MDM:
    torch.manual_seed(0)
    return MDM(MDMConfig(**{**TINY.__dict__, **overrides}))


def inputs(b: int = 3, frames: int = 16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 263, frames, generator=g), torch.rand(b, generator=g),
            torch.randn(b, 6, generator=g))


def test_paper_config_is_mdm_on_humanml3d():
    model = MDM(MDMConfig())
    shape = (model.depth, model.config.hidden_size, model.config.num_heads, model.config.ff_size)
    assert shape == (8, 512, 4, 1024)
    assert model.config.cond_dropout == 0.1 and model.config.dropout == 0.1 and model.config.text_dim == 512
    assert model.blocks[0].linear1.out_features == 1024
    # MDM's trainable modules without CLIP: input Linear 263→512, 8 × nn.TransformerEncoderLayer(512, 4, 1024)
    # (in/out projections, two Linears, two LayerNorms), the time MLP, the text Linear 512→512, output Linear.
    layer = 3 * 512 * 512 + 3 * 512 + 512 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 512 + 512 + 4 * 512
    expected = 263 * 512 + 512 + 8 * layer + 2 * (512 * 512 + 512) + 512 * 512 + 512 + 512 * 263 + 263
    assert sum(p.numel() for p in model.parameters()) == expected == 17_880_327


def test_prediction_has_the_input_shape_and_capture_returns_motion_tokens_only():
    model = tiny().eval()  # in training the text is dropped at random
    x, t, c = inputs()
    pred = model(x, t, c)
    assert pred.shape == (3, 263, 16)
    out = model(x, t, c, capture=(1, 3))
    assert sorted(out.hidden) == [1, 3] and out.hidden[3].shape == (3, 16, 16)  # (B, L, D): no condition
    torch.testing.assert_close(out.pred, pred)
    with pytest.raises(ValueError, match="numbered 1..4"):
        model(x, t, c, capture=(0,))
    with pytest.raises(ValueError, match=r"\(B, 6\) float"):
        model(x, t, None)


def test_paper_defaults_start_the_layers_identical_and_attend_to_padding():
    assert MDMConfig().identical_init and MDMConfig().attend_padding  # MDM's code (no --mask_frames)
    same, independent = tiny(), tiny(identical_init=False)
    for k in range(1, 4):
        for (name, a), b in zip(same.blocks[0].state_dict().items(), same.blocks[k].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
        assert (independent.blocks[k].qkv.weight - independent.blocks[0].qkv.weight).abs().max() > 1e-3
    model = tiny().eval()
    x, t, c = inputs()
    mask = torch.arange(16)[None] < torch.tensor([16, 10, 5])[:, None]
    noisy = x.clone()
    noisy[~mask[:, None].expand_as(x)] = 100.0
    changed = (model(noisy, t, c, token_mask=mask) - model(x, t, c, token_mask=mask))[1, :, :10].abs().max()
    assert changed > 1e-3  # padding is attended to: garbage there reaches the real frames, as in MDM


def test_padded_frames_do_not_change_the_real_frames_with_mask_frames():
    model = tiny(attend_padding=False).eval()
    x, t, c = inputs()
    mask = torch.arange(16)[None] < torch.tensor([16, 10, 5])[:, None]  # (B, L)
    ref = model(x, t, c, token_mask=mask, capture=(2,))
    noisy = x.clone()
    noisy[~mask[:, None].expand_as(x)] = 100.0  # garbage in the padding
    out = model(noisy, t, c, token_mask=mask, capture=(2,))
    for b, n in enumerate((16, 10, 5)):
        torch.testing.assert_close(out.pred[b, :, :n], ref.pred[b, :, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.hidden[2][b, :n], ref.hidden[2][b, :n], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="token_mask"):
        model(x, t, c, token_mask=mask.float())


def test_dropped_condition_is_the_zero_text_vector():
    model = tiny().eval()
    x, t, c = inputs()
    dropped = model(x, t, c, force_drop=torch.tensor([True, False, True]))
    torch.testing.assert_close(dropped[[0, 2]], model(x[[0, 2]], t[[0, 2]], torch.zeros(2, 6)))
    torch.testing.assert_close(dropped[1], model(x[1:2], t[1:2], c[1:2])[0])
    train = tiny(cond_dropout=0.5).train()
    torch.manual_seed(3)
    a = train(x.repeat(20, 1, 1), t.repeat(20), c.repeat(20, 1))
    keep = torch.zeros(60, dtype=torch.bool)
    zero = train(x.repeat(20, 1, 1), t.repeat(20), torch.zeros(60, 6), force_drop=keep)
    kept = train(x.repeat(20, 1, 1), t.repeat(20), c.repeat(20, 1), force_drop=keep)
    was_dropped = (a - zero).abs().amax((1, 2)) < 1e-5
    assert 15 < int(was_dropped.sum()) < 45 and torch.allclose(a[~was_dropped], kept[~was_dropped], atol=1e-5)


def test_timestep_embedding_reads_mdms_positional_table_at_the_ddpm_step():
    d, steps = 16, torch.tensor([0, 1, 17, 999])
    table = torch.zeros(1000, d)  # MDM's PositionalEncoding: pe[:, 0::2] = sin, pe[:, 1::2] = cos
    pos = torch.arange(1000, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    torch.testing.assert_close(interleaved_sincos(steps.float(), d), table[steps], atol=2e-4, rtol=0)
    model = tiny().eval()
    c = torch.randn(4, 6)
    t = (steps.double() + 1) / 1000  # DDPM step i sits at t = (i + 1)/1000
    expected = model.time_embed(interleaved_sincos(steps.float(), 16)) + model.embed_text(c)
    torch.testing.assert_close(model.condition(t.float(), c, None), expected, atol=1e-5, rtol=0)


def test_layersync_on_mdm_ignores_padded_frames_and_trains_the_student_side():
    model = tiny()
    x, t, c = inputs()
    mask = torch.arange(16)[None] < torch.tensor([16, 8, 12])[:, None]
    reg = LayerSync([(2, 3)], weight=1.0, depth=4)
    out = model(x, t, c, capture=reg.blocks, token_mask=mask)
    loss, logs = reg(AlignContext(hidden=out.hidden, token_mask=mask))
    cos = torch.nn.functional.cosine_similarity(out.hidden[2], out.hidden[3], dim=-1)  # (B, L)
    torch.testing.assert_close(loss, -cos[mask].mean())
    loss.backward()
    assert model.blocks[1].linear1.weight.grad.abs().sum() > 0  # the student's block learns
    teacher_only = model.blocks[2].parameters()  # block 3 is reached only through the detached teacher
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in teacher_only)


def test_core_dit_serves_as_the_alternative_backbone():
    from layersync.motion.run import MotionRecipe, build_backbone

    from layersync.core.config import apply_overrides

    cfg = apply_overrides(MotionRecipe(), {"backbone": "dit", "max_frames": 16, "model.depth": 4,
                                           "model.hidden_size": 32, "model.num_heads": 2})
    model = build_backbone(cfg, text_dim=6)
    x, t, c = inputs()
    mask = torch.arange(16)[None] < torch.tensor([16, 8, 12])[:, None]
    out = model(x, t, c, capture=(2,), token_mask=mask)
    assert out.pred.shape == (3, 263, 16) and out.hidden[2].shape == (3, 16, 32)


@pytest.mark.parametrize("sampler, steps", [("ddpm", 6), ("ddim", 4), ("heun", 3)])
def test_generation_is_reproducible_and_cut_to_each_length(sampler, steps):
    model = tiny()
    interp = Interpolant(path="vp_cosine", prediction="x0")
    spec = MotionSampleSpec(sampler=sampler, steps=steps, cfg_scale=2.5)
    text, lengths = torch.randn(3, 6), torch.tensor([16, 9, 4])
    a = generate(model, interp, spec, text, lengths, max_frames=16, seed=5, batch_size=2)
    b = generate(model, interp, spec, text, lengths, max_frames=16, seed=5, batch_size=2)
    assert [m.shape for m in a] == [(16, 263), (9, 263), (4, 263)]
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=1e-5)
        assert np.isfinite(u).all()
    c = generate(model, interp, spec, text, lengths, max_frames=16, seed=6, batch_size=2)
    assert not np.allclose(a[0], c[0])
    full = generate(model, interp, spec, text, lengths, 16, seed=5, batch_size=2, keep_padding=True)
    assert [m.shape for m in full] == [(16, 263)] * 3  # MDM's evaluation keeps the frames past the length
    for u, v, n in zip(a, full, (16, 9, 4)):
        np.testing.assert_allclose(v[:n], u, atol=1e-5)


def test_sampler_must_fit_the_path():
    with pytest.raises(ValueError, match="needs path.path=vp_cosine"):
        check_sampler(MotionSampleSpec("ddpm", 50), Interpolant(path="linear", prediction="x0"))
    with pytest.raises(ValueError, match="must be in \\[1, 1000\\]"):
        check_sampler(MotionSampleSpec("ddim", 2000), Interpolant(path="vp_cosine", prediction="x0"))
    check_sampler(MotionSampleSpec("heun", 20), Interpolant(path="linear"))
    with pytest.raises(ValueError, match="lengths must be in"):
        generate(tiny(), Interpolant(path="vp_cosine", prediction="x0"), MotionSampleSpec("ddim", 2),
                 torch.randn(1, 6), torch.tensor([17]), max_frames=16, seed=0)
