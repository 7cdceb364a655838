"""DiT backbone: published sizes, adaLN-Zero init, capture semantics, embedders, conditioning, masks."""

import math

import numpy as np
import pytest
import torch

from layersync.core.embed import sincos_positions, timestep_embedding
from layersync.core.models import PRESETS, Attention, DiT, DiTConfig, ModelOutput

TINY = dict(depth=4, hidden_size=64, num_heads=4)


def tiny(input_size=(8, 8), patch_size=2, in_channels=3, **overrides) -> DiTConfig:
    """A 4-block, width-64 model; class-conditional with 10 classes unless overridden."""
    fields = dict(TINY, input_size=input_size, patch_size=patch_size, in_channels=in_channels, num_classes=10)
    return DiTConfig(**{**fields, **overrides})


def build(config: DiTConfig, randomize: bool = True) -> DiT:
    """A model in eval mode; `randomize` moves the zero-initialised adaLN/output weights off zero."""
    torch.manual_seed(0)
    model = DiT(config).eval()
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0.0, 0.1)
    return model


def inputs(config: DiTConfig, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *config.input_size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, config.num_classes, (batch,), generator=g)
    return x, t, y


# ---- published sizes ------------------------------------------------------------------------------------

PUBLISHED_M = {"S/2": 33.0, "B/2": 130.3, "L/2": 458.1, "XL/2": 675.1}  # DiT Table 1 / SiT, 256² → 32×32×4


def count_on_meta(name: str) -> tuple[int, DiT]:
    with torch.device("meta"):
        model = DiT(DiTConfig.from_preset(name, input_size=(32, 32), in_channels=4, num_classes=1000))
    return sum(p.numel() for p in model.parameters()), model


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_parameter_count_is_within_half_a_percent_of_published_dit(name):
    # Ours: 4 output channels (velocity only, no learned sigma) and positions as a buffer, not a Parameter.
    params, _ = count_on_meta(name)
    assert abs(params / 1e6 - PUBLISHED_M[name]) / PUBLISHED_M[name] < 0.005


def test_xl2_with_dit_learn_sigma_head_and_pos_parameter_is_exactly_sit_xl2_count():
    # DiT/SiT count their frozen pos_embed Parameter and an 8-channel (learn_sigma) output: 675,129,632.
    params, model = count_on_meta("XL/2")
    d, patch_volume = model.hidden_size, 2 * 2
    extra_sigma_head = d * patch_volume * 4 + patch_volume * 4  # 4 more output channels per patch pixel
    assert params + model.pos_embed.numel() + extra_sigma_head == 675_129_632


def test_presets_follow_dit_table_1():
    assert len(PRESETS) == 12
    assert PRESETS["XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
    assert PRESETS["L/4"] == dict(depth=24, hidden_size=1024, num_heads=16, patch_size=4)
    assert PRESETS["B/8"] == dict(depth=12, hidden_size=768, num_heads=12, patch_size=8)
    assert PRESETS["S/2"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=2)
    config = DiTConfig.from_preset("S/4", input_size=(32, 32), in_channels=4, depth=2)
    assert (config.depth, config.patch_size, config.num_tokens) == (2, (4, 4), 64)


# ---- adaLN-Zero init and capture ------------------------------------------------------------------------


def test_output_is_exactly_zero_and_every_block_is_identity_at_init():
    config = tiny()
    model = build(config, randomize=False)
    x, t, y = inputs(config)
    out = model(x, t, y, capture=(1, 2, 3, 4))
    assert torch.equal(out.pred, torch.zeros_like(x))
    tokens = model.x_embedder(x) + model.pos_embed  # (B, N, D)
    for k in range(1, 5):
        assert torch.equal(out.hidden[k], tokens)


def test_captured_hidden_equals_hand_run_of_embed_then_blocks():
    config = tiny()
    model = build(config)
    x, t, y = inputs(config)
    out = model(x, t, y, capture=(3, 1, 4))
    assert isinstance(out, ModelOutput) and list(out.hidden) == [3, 1, 4]
    with torch.no_grad():
        h = model.x_embedder(x) + model.pos_embed  # (B, N, D)
        c = model.t_embedder(t) + model.y_embedder(y)  # (B, D)
        manual = {}
        for k, block in enumerate(model.blocks, start=1):
            shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=1)
            a = block.attn(block.norm1(h) * (1 + scale1[:, None]) + shift1[:, None])
            h = h + gate1[:, None] * a
            m = block.mlp(block.norm2(h) * (1 + scale2[:, None]) + shift2[:, None])
            h = h + gate2[:, None] * m
            manual[k] = h
    for k in (1, 3, 4):
        torch.testing.assert_close(out.hidden[k], manual[k], rtol=1e-6, atol=1e-6)
    assert out.hidden[1].shape == (2, 16, 64)
    assert not torch.allclose(out.hidden[1], out.hidden[4])  # the blocks did something


def test_prediction_is_bit_identical_with_and_without_capture():
    config = tiny()
    model = build(config)
    x, t, y = inputs(config)
    plain = model(x, t, y)
    captured = model(x, t, y, capture=(2, 4))
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, captured.pred)
    assert plain.abs().max() > 0


@pytest.mark.parametrize("block", [0, 5, -1])
def test_capture_outside_1_to_depth_raises_naming_the_range(block):
    config = tiny()
    model = build(config, randomize=False)
    x, t, y = inputs(config)
    with pytest.raises(ValueError, match=r"1\.\.4"):
        model(x, t, y, capture=(2, block))


# ---- embedders: token counts, layout, positions, time ---------------------------------------------------


@pytest.mark.parametrize(
    "input_size, patch_size, num_tokens",
    [((16,), 2, 8), ((8, 12), 2, 24), ((4, 8, 8), (1, 2, 4), 32), ((4, 4, 4), 2, 8)],
)
def test_1d_2d_3d_inputs_give_right_tokens_and_prediction_shaped_like_input(
    input_size, patch_size, num_tokens
):
    config = tiny(input_size=input_size, patch_size=patch_size)
    model = build(config)
    x, t, y = inputs(config)
    out = model(x, t, y, capture=(2,))
    assert model.num_tokens == num_tokens == config.num_tokens
    assert out.hidden[2].shape == (2, num_tokens, 64)
    assert out.pred.shape == x.shape
    assert torch.isfinite(out.pred).all() and out.pred.abs().max() > 0


@pytest.mark.parametrize("input_size, patch_size", [((12,), 3), ((4, 6), 2), ((2, 4, 6), (1, 2, 3))])
def test_token_n_is_the_patch_at_grid_position_n_in_and_out(input_size, patch_size):
    config = tiny(input_size=input_size, patch_size=patch_size)
    model = build(config)
    grid, patch = config.grid, config.patch_size
    n = config.num_tokens - 2  # a token that is not first or last
    index = np.unravel_index(n, grid)  # row-major: last axis fastest
    region = (slice(None), slice(None)) + tuple(slice(i * p, (i + 1) * p) for i, p in zip(index, patch))
    x = torch.zeros(1, config.in_channels, *input_size)
    x[region] = 1.0
    tokens = model.x_embedder(x)[0]  # (N, D)
    moved = (tokens - model.x_embedder(torch.zeros_like(x))[0]).abs().sum(dim=1)
    assert moved.nonzero().flatten().tolist() == [n]
    # unpatchify: token n's (*patch, C) vector lands back on the same patch, channel-last within a token
    flat = torch.zeros(1, config.num_tokens, math.prod(patch) * config.in_channels)
    flat[0, n] = torch.arange(flat.shape[-1], dtype=torch.float32) + 1
    image = model.unpatchify(flat)
    assert torch.equal((image != 0), (x != 0))
    expected = torch.arange(flat.shape[-1], dtype=torch.float32).reshape(*patch, -1) + 1  # (*P, C)
    assert torch.equal(image[region][0], expected.permute(-1, *range(len(patch))))


def dit_1d_sincos(embed_dim, pos):
    """facebookresearch/DiT `get_1d_sincos_pos_embed_from_grid`, verbatim in numpy."""
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def dit_2d_sincos(embed_dim, grid_size):
    """facebookresearch/DiT `get_2d_sincos_pos_embed` (square grids), verbatim in numpy."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = dit_1d_sincos(embed_dim // 2, grid[0])
    emb_w = dit_1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def test_2d_positions_equal_dit_reference_and_are_a_non_persistent_buffer():
    model = build(tiny(input_size=(10, 10)), randomize=False)
    np.testing.assert_allclose(model.pos_embed[0].numpy(), dit_2d_sincos(64, 5), rtol=0, atol=1e-6)
    assert "pos_embed" not in model.state_dict()
    assert all(p is not model.pos_embed for p in model.parameters())


def test_non_square_2d_positions_put_column_in_first_half_and_row_in_second():
    pos = sincos_positions(32, (3, 5)).numpy()  # (15, 32)
    rows, cols = np.divmod(np.arange(15), 5)
    np.testing.assert_allclose(pos[:, :16], dit_1d_sincos(16, cols), atol=1e-6)
    np.testing.assert_allclose(pos[:, 16:], dit_1d_sincos(16, rows), atol=1e-6)


def test_1d_and_3d_positions_follow_the_documented_channel_split():
    np.testing.assert_allclose(sincos_positions(64, (7,)).numpy(), dit_1d_sincos(64, np.arange(7)), atol=1e-6)
    pos = sincos_positions(64, (2, 3, 4)).numpy()  # d_s = 2·⌊64/6⌋ = 20, d_t = 24
    frames, rest = np.divmod(np.arange(24), 12)
    rows, cols = np.divmod(rest, 4)
    reference = np.concatenate(
        [dit_1d_sincos(24, frames), dit_1d_sincos(20, rows), dit_1d_sincos(20, cols)], axis=1
    )
    np.testing.assert_allclose(pos, reference, atol=1e-6)


def test_timestep_embedding_is_dit_cos_sin_of_1000_t():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 4)  # freqs 10000^(-i/2): 1, 0.01
    expected = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]]
    )
    torch.testing.assert_close(emb, expected)
    model = build(tiny(), randomize=False)
    t = torch.tensor([0.25, 0.9])
    torch.testing.assert_close(model.t_embedder(t), model.t_embedder.mlp(timestep_embedding(1000 * t, 256)))


# ---- conditioning ---------------------------------------------------------------------------------------


def test_force_drop_gives_the_null_class_prediction():
    config = tiny()
    model = build(config)
    x, t, y = inputs(config)
    dropped = model(x, t, y, force_drop=torch.tensor([True, False]))
    null = model(x, t, torch.full_like(y, config.num_classes))
    kept = model(x, t, y)
    assert torch.equal(dropped[0], null[0]) and torch.equal(dropped[1], kept[1])
    assert not torch.allclose(null[0], kept[0])


def test_force_drop_on_text_uses_the_learned_null_vector_whatever_the_text():
    config = tiny(cond_kind="text", text_dim=12)
    model = build(config)
    x, t, _ = inputs(config)
    text_a, text_b = torch.randn(2, 12), torch.randn(2, 12)
    drop = torch.tensor([True, False])
    pred_a, pred_b = model(x, t, text_a, force_drop=drop), model(x, t, text_b, force_drop=drop)
    assert torch.equal(pred_a[0], pred_b[0]) and not torch.allclose(pred_a[1], pred_b[1])
    assert torch.equal(model.y_embedder(text_a, drop)[0], model.y_embedder.null)


def test_training_drops_labels_at_cond_dropout_rate_and_eval_never_does():
    embedder = build(tiny(cond_dropout=0.3), randomize=False).y_embedder
    labels = torch.zeros(20_000, dtype=torch.long)
    null = embedder.embedding_table.weight[10]
    torch.manual_seed(0)
    dropped_share = (embedder.train()(labels) == null).all(dim=1).float().mean().item()
    assert abs(dropped_share - 0.3) < 0.015
    assert not (embedder.eval()(labels) == null).all(dim=1).any()


def test_unconditional_model_takes_no_cond_and_conditional_model_requires_one():
    config = tiny(cond_kind="none")
    model = build(config)
    x, t, y = inputs(config)
    assert model(x, t).shape == x.shape
    assert model(x, torch.tensor(0.5)).shape == x.shape  # a scalar t is broadcast over the batch
    with pytest.raises(ValueError, match="cond_kind='none'"):
        model(x, t, y)
    with pytest.raises(ValueError, match="needs cond"):
        build(tiny())(x, t)


# ---- attention, masks, checkpointing --------------------------------------------------------------------


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_equals_explicit_softmax_with_key_mask(qk_norm):
    torch.manual_seed(0)
    attn = Attention(hidden_size=16, num_heads=2, qk_norm=qk_norm).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)  # (B, H, N, Dh) each
    if qk_norm:
        q, k = (torch.nn.functional.layer_norm(z, (8,), eps=1e-6) for z in (q, k))
    logits = q @ k.transpose(-1, -2) / math.sqrt(8)  # (B, H, N, N)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, mask), expected)


def test_padded_tokens_are_not_attended_to_under_token_mask():
    config = tiny(input_size=(16,), patch_size=2)  # 8 tokens of 2 samples each
    model = build(config)
    x, t, y = inputs(config)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # sample 1 is 10 samples long, padded to 16
    x_other_padding = x.clone()
    x_other_padding[1, :, 10:] = torch.randn(config.in_channels, 6)
    out = model(x, t, y, token_mask=mask, capture=(4,))
    out_other = model(x_other_padding, t, y, token_mask=mask, capture=(4,))
    torch.testing.assert_close(out.hidden[4][1, :5], out_other.hidden[4][1, :5], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pred[1, :, :10], out_other.pred[1, :, :10], rtol=0, atol=1e-6)
    unmasked, unmasked_other = model(x, t, y), model(x_other_padding, t, y)
    assert not torch.allclose(unmasked[1, :, :10], unmasked_other[1, :, :10], atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients_while_saving_fewer_activations():
    grads, saved = [], []
    for checkpointing in (False, True):
        config = tiny(grad_checkpointing=checkpointing)
        model = build(config).train()
        x, t, y = inputs(config)
        count = [0]

        def pack(tensor, count=count):
            count[0] += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = model(x, t, y, capture=(2,), force_drop=torch.tensor([False, True]))
        (out.pred.square().mean() + out.hidden[2].mean()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
        saved.append(count[0])
    assert saved[1] < saved[0] / 2
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-7, msg=name)
    assert grads[0]["blocks.0.attn.qkv.weight"].abs().max() > 0


# ---- config validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(input_size=(9, 8)), "not divisible by patch_size"),
        (dict(hidden_size=66), "not divisible by num_heads"),
        (dict(input_size=(8, 8), patch_size=(2, 2, 2)), "one patch size per axis"),
        (dict(input_size=(2, 2, 2, 2)), "1, 2 or 3 spatial sizes"),
        (dict(cond_kind="text"), "needs text_dim"),
        (dict(cond_kind="image"), "cond_kind must be"),
        (dict(cond_dropout=1.0), r"cond_dropout must be in \[0, 1\)"),
        (dict(hidden_size=42, num_heads=6), "divisible by 4"),
    ],
)
def test_invalid_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_unknown_preset_and_wrong_input_shape_raise():
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.from_preset("M/2", input_size=(32, 32), in_channels=4)
    config = tiny()
    model = build(config, randomize=False)
    _, t, y = inputs(config)
    with pytest.raises(ValueError, match=r"x_t must be \(B, 3, 8, 8\)"):
        model(torch.zeros(2, 3, 8, 10), t, y)
