"""Sets as token sequences: a DiT without positions is permutation-equivariant, padded elements change
nothing, and guidance carries the token mask through its batched forward (examples/point_clouds.py needs all
three)."""

from __future__ import annotations

import pytest
import torch

from layersync.core import DiT, DiTConfig, guided

SET = dict(input_size=(12,), in_channels=3, patch_size=1, depth=3, hidden_size=32, num_heads=4, num_classes=4,
           positions="none")


def build(**overrides) -> DiT:
    """A model in eval mode with its zero-initialised adaLN/output weights moved off zero."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(**{**SET, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return model


def points(batch: int = 2, n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, generator=g), torch.rand(batch, generator=g), torch.tensor([1, 3])


def test_without_positions_permuting_the_elements_permutes_prediction_and_features():
    model = build()
    x, t, y = points()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    out, out_perm = model(x, t, y, capture=(2,)), model(x[:, :, perm], t, y, capture=(2,))
    torch.testing.assert_close(out_perm.pred, out.pred[:, :, perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_perm.hidden[2], out.hidden[2][:, perm], rtol=0, atol=1e-5)
    with_positions = build(positions="sincos")  # the same weights, positions added: order now matters
    assert with_positions.pos_embed is not None and model.pos_embed is None
    assert not torch.allclose(with_positions(x[:, :, perm], t, y), with_positions(x, t, y)[:, :, perm],
                              atol=1e-3)


def test_a_padded_set_predicts_what_the_unpadded_set_predicts():
    """Five real points padded to 12 with garbage: the five-point model's prediction at the real points."""
    x, t, y = points()
    padded = x.clone()
    padded[0, :, 5:] = 100.0  # garbage far from the data
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 5:] = False
    full = build()(padded, t, y, token_mask=mask)
    alone = build(input_size=(5,))(x[:1, :, :5], t[:1], y[:1])  # same weights: nothing depends on N
    torch.testing.assert_close(full[0, :, :5], alone[0], rtol=0, atol=1e-5)
    assert not torch.allclose(build()(padded, t, y)[0, :, :5], alone[0], atol=1e-3)  # unmasked, it leaks


def test_guidance_passes_the_token_mask_to_both_halves_of_its_batched_forward():
    model = build()
    x, t, y = points()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    out = guided(model, y, None, 3.0, token_mask=mask)(x, t)
    cond = model(x, t, y, token_mask=mask)
    null = model(x, t, y, token_mask=mask, force_drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(out, null + 3.0 * (cond - null), rtol=0, atol=1e-5)
    torch.testing.assert_close(guided(model, y, None, 1.0, token_mask=mask)(x, t), cond, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [dict(input_size=(4, 4)), dict(patch_size=2)], ids=["2-D", "patch 2"])
def test_a_set_model_needs_one_token_per_element(bad):
    with pytest.raises(ValueError, match="positions='none' makes one token per set element"):
        DiTConfig(**{**SET, **bad})
    with pytest.raises(ValueError, match="positions must be"):
        DiTConfig(**{**SET, "positions": "learned"})
