"""Alignment regularizers: LayerSync, SRA, REPA, dispersive loss and their sum, against known answers."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.interpolants import Interpolant
from layersync.core.models import DiT, DiTConfig, ModelOutput
from layersync.core.regularizers import (
    REPA,
    SRA,
    AlignContext,
    Combined,
    DinoV2Encoder,
    Dispersive,
    LayerSync,
    dispersive_loss,
    layersync_loss,
    parse_pairs,
    resample_tokens,
    token_cosine,
)
from layersync.core.weights import MissingWeightsError


def seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-token cosine over the last axis, float64."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def tiny_dit(depth: int = 6) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(input_size=(8, 8), in_channels=4, patch_size=2, depth=depth, hidden_size=64,
                         num_heads=4, num_classes=10, cond_dropout=0.0))


def dit_batch(batch: int = 3):
    g = seeded(1)
    x_t = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.rand(batch, generator=g)
    cond = torch.randint(0, 10, (batch,), generator=g)
    return x_t, t, cond


def identity_head(reg: SRA, dim: int) -> None:
    """Make SRA's head exactly the identity: SiLU(a) − SiLU(−a) = a, so W2·SiLU(W1 x) = x."""
    eye = torch.eye(dim)
    with torch.no_grad():
        reg.head[0].weight.copy_(torch.cat([eye, -eye], 0))  # (2D, D)
        reg.head[0].bias.zero_()
        reg.head[2].weight.copy_(torch.cat([eye, -eye], 1))  # (D, 2D)
        reg.head[2].bias.zero_()


class RecordingTeacher(nn.Module):
    """Stands in for the EMA model: records what it is called with, returns fixed block features."""

    def __init__(self, block: int, features: torch.Tensor):
        super().__init__()
        self.block, self.features, self.calls = block, features, []

    def forward(self, x_t, t, cond, capture=(), **kwargs):
        self.calls.append(dict(x_t=x_t, t=t, cond=cond, capture=capture, kwargs=kwargs,
                               training=self.training))
        return ModelOutput(x_t, {self.block: self.features})


# ---------------------------------------------------------------- functional LayerSync loss

def test_layersync_loss_is_negative_mean_feature_cosine_in_float64_agreement():
    g = seeded()
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    expected = -np_cos(s.double().numpy(), t.double().numpy()).mean()
    assert layersync_loss(s, t).dtype == torch.float32
    assert layersync_loss(s, t).item() == pytest.approx(expected, abs=1e-6)


def test_layersync_loss_mask_keeps_only_true_tokens():
    g = seeded()
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[True, False, True, True, False], [False, False, True, False, False]])
    cos = np_cos(s.double().numpy(), t.double().numpy())  # (2, 5)
    expected = -cos[mask.numpy()].mean()  # 4 kept tokens, each weighing the same
    assert layersync_loss(s, t, mask).item() == pytest.approx(expected, abs=1e-6)
    assert layersync_loss(s, t, mask).item() != pytest.approx(layersync_loss(s, t).item(), abs=1e-3)


def test_layersync_loss_empty_mask_contributes_zero_and_wrong_mask_raises():
    s = torch.randn(2, 5, 7, requires_grad=True)
    loss = layersync_loss(s, torch.randn(2, 5, 7), torch.zeros(2, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="bool tensor of shape"):
        layersync_loss(s, torch.randn(2, 5, 7), torch.ones(2, 5))


def test_layersync_loss_stops_gradient_into_the_teacher():
    g = seeded()
    s = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    t = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    layersync_loss(s, t).backward()
    assert t.grad is None
    assert s.grad.abs().max() > 1e-3


def test_token_cosine_of_a_zero_token_is_zero_not_nan():
    s = torch.zeros(1, 2, 4)
    s[0, 1, 0] = 1.0  # cos with (1, 1, 1, 1) = 1 / 2
    cos = token_cosine(s, torch.ones(1, 2, 4))
    assert torch.equal(cos, torch.tensor([[0.0, 0.5]]))


# ---------------------------------------------------------------- LayerSync module

def random_hidden(blocks=(2, 4, 6, 8), shape=(3, 5, 7)) -> dict[int, torch.Tensor]:
    g = seeded(3)
    return {b: torch.randn(*shape, generator=g) for b in blocks}


def test_every_pair_counts_and_the_loss_is_lambda_times_the_mean_over_pairs():
    hidden = random_hidden()
    ctx = AlignContext(hidden=hidden)
    both = LayerSync([(2, 6), (4, 8)], weight=0.3)
    loss, logs = both(ctx)
    first, second = layersync_loss(hidden[2], hidden[6]), layersync_loss(hidden[4], hidden[8])
    assert loss.item() == pytest.approx(0.3 * (first + second).item() / 2, abs=1e-6)
    # Dropping a pair leaves exactly that pair's term.
    assert LayerSync([(2, 6)], weight=0.3)(ctx)[0].item() == pytest.approx(0.3 * first.item(), abs=1e-6)
    assert LayerSync([(4, 8)], weight=0.3)(ctx)[0].item() == pytest.approx(0.3 * second.item(), abs=1e-6)
    assert logs["layersync/cos_2_6"].item() == pytest.approx(-first.item(), abs=1e-6)
    assert logs["layersync/cos_4_8"].item() == pytest.approx(-second.item(), abs=1e-6)
    assert logs["layersync/loss"].item() == pytest.approx(loss.item())
    assert not logs["layersync/loss"].requires_grad and logs["layersync/loss"].ndim == 0
    assert both.blocks == (2, 4, 6, 8)


def test_token_mask_reaches_the_layersync_module():
    hidden = random_hidden()
    mask = torch.rand(3, 5, generator=seeded(4)) > 0.5
    loss, _ = LayerSync([(2, 6)], weight=1.0)(AlignContext(hidden=hidden, token_mask=mask))
    assert loss.item() == pytest.approx(layersync_loss(hidden[2], hidden[6], mask).item(), abs=1e-6)


def test_t_range_penalises_only_samples_in_range_but_logs_all():
    hidden = random_hidden()
    t = torch.tensor([0.1, 0.5, 0.9])
    loss, logs = LayerSync([(2, 6)], weight=1.0, t_range=(0.4, 1.0))(AlignContext(hidden=hidden, t=t))
    kept = torch.tensor([False, True, True])[:, None].expand(3, 5)
    assert loss.item() == pytest.approx(layersync_loss(hidden[2], hidden[6], kept).item(), abs=1e-6)
    assert logs["layersync/cos_2_6"].item() == pytest.approx(-layersync_loss(hidden[2], hidden[6]).item(),
                                                             abs=1e-6)


def test_weight_schedule_multiplies_lambda_by_its_value_at_the_step():
    hidden = random_hidden()
    reg = LayerSync([(2, 6)], weight=0.5, weight_schedule=lambda step: min(1.0, step / 100))
    base = layersync_loss(hidden[2], hidden[6]).item()
    assert reg(AlignContext(hidden=hidden, step=25))[0].item() == pytest.approx(0.5 * 0.25 * base, abs=1e-6)
    assert reg(AlignContext(hidden=hidden, step=500))[0].item() == pytest.approx(0.5 * base, abs=1e-6)


@pytest.mark.parametrize("pair", [(16, 8), (8, 8), (0, 4), (8, 29)])
def test_invalid_pairs_raise_naming_the_valid_range(pair):
    with pytest.raises(ValueError, match=r"1 ≤ student < teacher ≤ 28"):
        LayerSync([pair], depth=28)


def test_paper_selection_rules_warn_but_do_not_fail():
    with pytest.warns(UserWarning, match="last 20%"):
        LayerSync([(8, 24)], depth=28)  # 24 > 0.8 · 28
    with pytest.warns(UserWarning, match="student block 1"):
        LayerSync([(1, 12)], depth=28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerSync([(8, 16)], depth=28)  # the paper's XL/2 setting
        LayerSync([(8, 18)], depth=24)  # the paper's L/2 setting


def test_parse_pairs_reads_student_colon_teacher_lists():
    assert parse_pairs("8:16,4:12") == ((8, 16), (4, 12))
    assert LayerSync("8:16, 4:12").pairs == ((8, 16), (4, 12))
    for bad in ("8-16", "8:16:20", "a:b", ""):
        with pytest.raises(ValueError, match="expected e.g. '8:16,4:12'"):
            parse_pairs(bad)


def test_missing_captured_block_says_how_to_capture():
    with pytest.raises(KeyError, match=r"capture=regularizer.blocks"):
        LayerSync([(2, 10)])(AlignContext(hidden=random_hidden()))


# ---------------------------------------------------------------- LayerSync on the real DiT

def test_layersync_is_exactly_minus_one_with_zero_gradient_at_adaln_zero_init():
    model = tiny_dit()
    x_t, t, cond = dit_batch()
    out = model(x_t, t, cond, capture=(2, 4))
    assert torch.equal(out.hidden[2], out.hidden[4])  # adaLN-Zero: every block is the identity
    loss, logs = LayerSync([(2, 4)], weight=1.0, depth=6)(AlignContext(hidden=out.hidden))
    loss.backward()
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    assert logs["layersync/cos_2_4"].item() == pytest.approx(1.0, abs=1e-6)
    grads = [p.grad.abs().max().item() for p in model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-6


def perturbed_dit() -> DiT:
    model = tiny_dit()
    with torch.no_grad():  # move the adaLN gates off zero so every block acts
        for block in model.blocks:
            block.adaLN_modulation[-1].weight.normal_(0.0, 0.05)
            block.adaLN_modulation[-1].bias.normal_(0.0, 0.5)
    return model


def block_grad_norms(model: DiT) -> list[float]:
    return [sum(float(p.grad.abs().sum()) for p in block.parameters() if p.grad is not None)
            for block in model.blocks]


def test_layersync_gradient_reaches_no_block_above_the_student():
    model = perturbed_dit()
    x_t, t, cond = dit_batch()
    out = model(x_t, t, cond, capture=(2, 4))
    loss, _ = LayerSync([(2, 4)], weight=1.0, depth=6)(AlignContext(hidden=out.hidden))
    assert loss.item() > -0.99  # the blocks act now: the two streams differ
    loss.backward()
    norms = block_grad_norms(model)
    assert all(n > 0 for n in norms[:2])  # blocks 1, 2 (≤ student) learn
    assert all(n == 0 for n in norms[2:])  # blocks 3..6: nothing through the teacher, nothing above
    assert all(p.grad is None for p in model.final_layer.parameters())


def test_without_stopgrad_the_teacher_blocks_would_get_gradient():
    """The control for the test above: the same loss without detach does reach blocks 3 and 4."""
    model = perturbed_dit()
    x_t, t, cond = dit_batch()
    out = model(x_t, t, cond, capture=(2, 4))
    (-token_cosine(out.hidden[2], out.hidden[4]).mean()).backward()
    norms = block_grad_norms(model)
    assert norms[2] > 0 and norms[3] > 0 and norms[4] == norms[5] == 0


# ---------------------------------------------------------------- SRA

def sra_context(teacher: nn.Module, student: torch.Tensor, t: torch.Tensor, **kwargs) -> AlignContext:
    g = seeded(7)
    x, eps = torch.randn(t.shape[0], 4, 8, 8, generator=g), torch.randn(t.shape[0], 4, 8, 8, generator=g)
    return AlignContext(hidden={2: student}, x=x, noise=eps, t=t, x_t=Interpolant().x_t(x, eps, t),
                        cond=torch.tensor([1, 2]), interpolant=Interpolant(), ema_model=teacher, **kwargs)


def test_sra_cosine_is_over_the_feature_dim_per_token():
    g = seeded(5)
    student = torch.randn(2, 6, 8, generator=g)
    scale = torch.rand(2, 6, 1, generator=g) * 5 + 0.1
    target = student * scale  # parallel per token (feature cosine 1), not along the token axis
    token_axis = F.cosine_similarity(student, target, dim=1).mean()
    assert token_axis < 0.95  # the case tells the two axes apart
    reg = SRA(2, 4, hidden_size=8, weight=0.2)
    identity_head(reg, 8)
    loss, logs = reg(sra_context(RecordingTeacher(4, target), student, torch.tensor([0.5, 0.7])))
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert logs["sra/cos"].item() == pytest.approx(1.0, abs=1e-6)


def test_sra_teacher_sees_the_same_noise_at_a_lower_t_in_eval_mode():
    teacher = RecordingTeacher(4, torch.randn(2, 16, 8)).train()
    t = torch.tensor([0.05, 0.8])
    drop = torch.tensor([True, False])
    ctx = sra_context(teacher, torch.randn(2, 16, 8), t, model_kwargs={"force_drop": drop})
    reg = SRA(2, 4, hidden_size=8, time_gap=0.2)
    seeded(11)
    for _ in range(20):
        reg(ctx)
    t_teacher = torch.stack([call["t"] for call in teacher.calls])  # (20, 2)
    assert (t_teacher <= t).all() and (t - t_teacher <= 0.2 + 1e-7).all() and (t_teacher >= 0).all()
    assert (t_teacher[:, 0] == 0).any() and (t_teacher[:, 1] < 0.8).all()  # clamped at data; lower noise
    for call in teacher.calls:
        tt = call["t"].view(2, 1, 1, 1)
        assert torch.allclose(call["x_t"], (1 - tt) * ctx.x + tt * ctx.noise, atol=1e-6)  # the same ε
        assert call["capture"] == (4,) and torch.equal(call["cond"], ctx.cond)
        assert torch.equal(call["kwargs"]["force_drop"], torch.tensor([True, False]))
        assert call["training"] is False
    assert teacher.training  # mode restored


def test_sra_needs_an_ema_model_and_valid_blocks():
    reg = SRA(2, 4, hidden_size=8)
    ctx = sra_context(None, torch.randn(2, 16, 8), torch.tensor([0.5, 0.7]))
    with pytest.raises(ValueError, match="ema_model"):
        reg(ctx)
    with pytest.raises(ValueError, match=r"1 ≤ student ≤ teacher ≤ 12"):
        SRA(8, 3, hidden_size=8, depth=12)
    SRA(4, 4, hidden_size=8, depth=12)  # the same block is allowed (the teacher sees a lower t)


def test_sra_on_the_dit_trains_the_head_and_blocks_up_to_the_student_only():
    model = perturbed_dit()
    ema = copy.deepcopy(model)
    x_t, t, cond = dit_batch(2)
    g = seeded(9)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    reg = SRA(2, 4, hidden_size=64, depth=6)
    out = model(Interpolant().x_t(x, eps, t[:2]), t[:2], cond[:2], capture=reg.blocks)
    ctx = AlignContext(hidden=out.hidden, x=x, noise=eps, t=t[:2], cond=cond[:2], interpolant=Interpolant(),
                       ema_model=ema)
    loss, _ = reg(ctx)
    loss.backward()
    norms = block_grad_norms(model)
    assert norms[0] > 0 and norms[1] > 0 and all(n == 0 for n in norms[2:])
    assert all(p.grad is not None for p in reg.head.parameters())
    assert all(p.grad is None for p in ema.parameters())


def test_training_only_heads_are_dropped_for_sampling():
    reg = Combined([LayerSync([(2, 4)]), SRA(2, 4, hidden_size=8), REPA(2, 8, 6, projector_dim=16)])
    state = reg.state_dict()
    assert sorted({k.split(".")[1] + "." + k.split(".")[2] for k in state}) == ["1.head", "2.projector"]
    assert reg.sampling_state_dict_filter(state) == {}
    wrapped = {"model.w": 1, **{f"reg.{k}": v for k, v in state.items()}}
    assert reg.sampling_state_dict_filter(wrapped, prefix="reg.") == {"model.w": 1}


# ---------------------------------------------------------------- REPA

def test_resample_tokens_is_bilinear_on_the_row_major_square_grid():
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # (2, 2), token n = row·2 + col
    tokens = grid.reshape(1, 4, 1)
    w = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # 2 → 4, align_corners=False
    expected = w @ grid @ w.T  # (4, 4)
    assert torch.allclose(resample_tokens(tokens, 16).reshape(4, 4), expected, atol=1e-6)
    assert resample_tokens(tokens, 4) is tokens
    with pytest.raises(ValueError, match="two square grids"):
        resample_tokens(torch.randn(1, 6, 2), 4)


def test_repa_loss_is_lambda_times_negative_cosine_to_resampled_encoder_tokens():
    g = seeded(6)
    h, z = torch.randn(2, 16, 8, generator=g), torch.randn(2, 4, 6, generator=g)
    reg = REPA(block=3, hidden_size=8, encoder_dim=6, projector_dim=16, weight=0.5)
    loss, logs = reg(AlignContext(hidden={3: h}, raw=z))
    with torch.no_grad():
        proj = reg.projector(h).double().numpy()
    up = F.interpolate(z.transpose(1, 2).reshape(2, 6, 2, 2), size=(4, 4), mode="bilinear")
    target = up.reshape(2, 6, 16).transpose(1, 2).double().numpy()
    assert loss.item() == pytest.approx(-0.5 * np_cos(proj, target).mean(), abs=1e-6)
    assert logs["repa/cos"].item() == pytest.approx(np_cos(proj, target).mean(), abs=1e-6)


def test_repa_calls_its_encoder_on_raw_media_and_keeps_it_out_of_its_state():
    encoder = nn.Linear(3, 6)
    reg = REPA(block=1, hidden_size=8, encoder_dim=6, projector_dim=16, encoder=lambda raw: encoder(raw))
    reg_with_module = REPA(block=1, hidden_size=8, encoder_dim=6, projector_dim=16, encoder=encoder)
    assert all(k.startswith("projector.") for k in reg_with_module.state_dict())
    assert len(list(reg_with_module.parameters())) == 6
    raw = torch.randn(2, 4, 3)
    loss, _ = reg(AlignContext(hidden={1: torch.randn(2, 4, 8)}, raw=raw))
    loss.backward()
    assert encoder.weight.grad is None  # the encoder is frozen
    with pytest.raises(ValueError, match=r"\(B, N_enc, 5\) tokens from ctx.raw"):
        REPA(block=1, hidden_size=8, encoder_dim=5)(AlignContext(hidden={1: torch.randn(2, 4, 8)}, raw=raw))


def tiny_dinov2(tmp_path, registers: int = 0):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
              image_size=28)
    model = (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
             if registers else Dinov2Model(Dinov2Config(**kw)))
    model.save_pretrained(tmp_path)
    return model.eval()


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2_encoder_loads_locally_and_returns_patch_tokens_with_repa_preprocessing(tmp_path, registers):
    reference = tiny_dinov2(tmp_path, registers)
    encoder = DinoV2Encoder.from_local(tmp_path, resolution=28)
    images = torch.rand(2, 3, 32, 32, generator=seeded(8)) * 2 - 1  # [-1, 1]
    tokens = encoder(images)
    assert tokens.shape == (2, encoder.num_tokens, encoder.dim) == (2, 4, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((images + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    x = F.interpolate(x, size=(28, 28), mode="bicubic")
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state[:, 1 + registers:]
    assert torch.allclose(tokens, expected, atol=1e-5)


def test_dinov2_from_local_names_the_missing_files(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match=r"config\.json and one of model\.safetensors"):
        DinoV2Encoder.from_local(tmp_path)
    assert issubclass(MissingWeightsError, FileNotFoundError)
    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match=r"dinov2-base .* \$LAYERSYNC_WEIGHTS unset"):
        DinoV2Encoder.from_local()


def test_dinov2_from_local_finds_dinov2_base_under_layersync_weights_and_checks_sha256(tmp_path, monkeypatch):
    tiny_dinov2(tmp_path / "dinov2-base")
    monkeypatch.setenv("LAYERSYNC_WEIGHTS", str(tmp_path))
    assert DinoV2Encoder.from_local(resolution=28).num_tokens == 4
    with pytest.raises(MissingWeightsError, match="expected 00"):
        DinoV2Encoder.from_local(resolution=28, sha256="00" * 32)


# ---------------------------------------------------------------- dispersive loss

def test_dispersive_equals_a_direct_numpy_computation():
    h = torch.randn(5, 3, 4, generator=seeded(10))
    loss, logs = Dispersive(block=2, weight=0.5, temperature=0.5)(AlignContext(hidden={2: h}))
    z = h.double().numpy().reshape(5, -1)
    d = ((z[:, None] - z[None]) ** 2).sum(-1) / z.shape[1]  # (B, B), zero diagonal included
    assert loss.item() == pytest.approx(0.5 * np.log(np.exp(-d / 0.5).mean()), abs=1e-6)
    assert logs["dispersive/loss"].item() == pytest.approx(loss.item())


def test_dispersive_at_unit_temperature_equals_the_authors_pdist_code():
    z = torch.randn(6, 10, generator=seeded(12))
    diff = F.pdist(z).pow(2) / z.shape[1]
    official = torch.log(torch.exp(-torch.cat([diff, diff, torch.zeros(6)])).mean())
    assert dispersive_loss(z, temperature=1.0).item() == pytest.approx(official.item(), abs=1e-6)


def test_dispersive_ignores_masked_tokens_and_needs_two_samples():
    g = seeded(13)
    h, mask = torch.randn(4, 3, 5, generator=g), torch.tensor([[True, True, False]] * 4)
    changed = h.clone()
    changed[:, 2] = torch.randn(4, 5, generator=g) * 10
    reg = Dispersive(block=1)
    same = [reg(AlignContext(hidden={1: v}, token_mask=mask))[0].item() for v in (h, changed)]
    assert same[0] == pytest.approx(same[1], abs=1e-7)
    assert reg(AlignContext(hidden={1: changed}))[0].item() != pytest.approx(same[0], abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        reg(AlignContext(hidden={1: h[:1]}))


def test_identical_samples_give_dispersive_loss_zero_and_finite_gradient():
    h = torch.ones(3, 2, 4, requires_grad=True)
    loss, _ = Dispersive(block=1)(AlignContext(hidden={1: h}))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(h.grad).all()


# ---------------------------------------------------------------- Combined and precision

def test_combined_sums_losses_merges_logs_and_unions_blocks():
    hidden = random_hidden()
    parts = [LayerSync([(2, 6)]), Dispersive(block=4)]
    combined = Combined(parts)
    loss, logs = combined(AlignContext(hidden=hidden))
    separate = [reg(AlignContext(hidden=hidden)) for reg in parts]
    assert loss.item() == pytest.approx(sum(l.item() for l, _ in separate), abs=1e-6)
    assert set(logs) == {"layersync/cos_2_6", "layersync/loss", "dispersive/loss"}
    assert combined.blocks == (2, 4, 6)
    with pytest.raises(ValueError, match="log the same names"):
        Combined([LayerSync([(2, 6)]), LayerSync([(2, 6)])])(AlignContext(hidden=hidden))
    with pytest.raises(ValueError, match="at least one"):
        Combined([])


def test_all_losses_are_float32_under_bf16_autocast():
    g = seeded(14)
    hidden = {b: torch.randn(2, 16, 8, generator=g).bfloat16() for b in (1, 2, 4)}
    sra = SRA(2, 4, hidden_size=8)
    regs = [LayerSync([(1, 2)]), sra, REPA(2, 8, 6, projector_dim=16), Dispersive(4),
            Combined([LayerSync([(2, 4)]), Dispersive(1)])]
    ctx = sra_context(RecordingTeacher(4, hidden[4]), hidden[2], torch.tensor([0.3, 0.6]))
    ctx = dataclasses.replace(ctx, hidden=hidden, raw=torch.randn(2, 16, 6).bfloat16())
    for reg in regs:
        seeded(15)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, logs = reg(ctx)
        seeded(15)
        full = {k: v.float() for k, v in hidden.items()}
        reference, _ = reg(dataclasses.replace(ctx, hidden=full, raw=ctx.raw.float()))
        assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in logs.values())
        assert torch.isfinite(loss) and math.isclose(loss.item(), reference.item(), abs_tol=2e-2)


def test_sra_released_variant_is_one_minus_the_token_axis_cosine_weighted_half():
    """vvvvvjdy/SRA loss.py: 1 − F.cosine_similarity(a, b) on (B, N, D), default dim=1 (tokens), × 0.5."""
    g = seeded(5)
    student, target = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    reg = SRA(2, 4, hidden_size=8, weight=0.5, variant="released")
    identity_head(reg, 8)
    loss, logs = reg(sra_context(RecordingTeacher(4, target), student, torch.tensor([0.5, 0.7])))
    dot = (student * target).sum(1)  # (B, D): over the 6 tokens
    cos = dot / (student.norm(dim=1) * target.norm(dim=1))
    assert loss.item() == pytest.approx(0.5 * (1 - cos).mean().item(), abs=1e-6)
    assert logs["sra/cos"].item() == pytest.approx(cos.mean().item(), abs=1e-6)
    # Parallel per token but not along tokens: the features variant gives −λ, the released one does not.
    scaled = student * (torch.rand(2, 6, 1, generator=g) * 5 + 0.1)
    released, _ = reg(sra_context(RecordingTeacher(4, scaled), student, torch.tensor([0.5, 0.7])))
    assert released.item() > 0.01
    with pytest.raises(ValueError, match="'features' or 'released'"):
        SRA(2, 4, hidden_size=8, variant="tokens")


def test_sra_released_variant_ignores_padded_tokens():
    g = seeded(6)
    student, target = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    reg = SRA(2, 4, hidden_size=8, weight=0.5, variant="released")
    identity_head(reg, 8)
    t = torch.tensor([0.5, 0.7])
    masked, _ = reg(sra_context(RecordingTeacher(4, target), student, t, token_mask=mask))
    short = SRA(2, 4, hidden_size=8, weight=0.5, variant="released")
    identity_head(short, 8)
    kept, _ = short(sra_context(RecordingTeacher(4, target[:, :4]), student[:, :4], torch.tensor([0.5, 0.7])))
    assert masked.item() == pytest.approx(kept.item(), abs=1e-6)
