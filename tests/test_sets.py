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


@pytest.mark.filterwarnings("ignore:LayerSync student block 1")
def test_training_on_padded_sets_ignores_what_the_padding_holds(tmp_path):
    """Trainer + DiT + LayerSync + flow loss: garbage in the padding changes no loss and no weight."""
    from dataclasses import dataclass, field

    from layersync.core import Interpolant, LayerSync, TensorSource, TrainConfig, Trainer

    @dataclass(frozen=True)
    class Run:
        train: TrainConfig = field(default_factory=lambda: TrainConfig(total_steps=2, global_batch_size=4,
                                                                       lr=1e-2, ema_decay=0.9))

    g = torch.Generator().manual_seed(3)
    x, labels = torch.randn(8, 3, 12, generator=g), torch.arange(8) % 4
    mask = torch.arange(12)[None] < torch.randint(4, 13, (8, 1), generator=g)  # (8, 12): 4–12 real points
    runs = []
    for padding in (0.0, 50.0):
        model = build()
        padded = torch.where(mask[:, None], x, padding)
        source = TensorSource(padded, labels, token_mask=mask, loss_mask=mask[:, None].float())
        trainer = Trainer(Run().train, model, Interpolant(), source, tmp_path / str(padding),
                          full_config=Run(), regularizer=LayerSync("1:2", weight=0.5, depth=3))
        logs = [trainer.train_step() for _ in range(2)]
        runs.append((logs, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    for before, after in zip(runs[0][0], runs[1][0]):
        for key in ("flow_loss", "layersync/loss"):
            torch.testing.assert_close(before[key], after[key], rtol=0, atol=1e-5)
    assert runs[0][0][0]["layersync/loss"] > -0.5  # the pair is not trivially aligned: the test can fail
    for name, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][name], rtol=0, atol=1e-5, msg=name)
