"""Interpolants: time direction, endpoints, v = dx_t/dt by autograd, conversions, t sampling, DDPM tables."""

import math

import numpy as np
import pytest
import torch

from layersync.core.interpolants import (CONVERT_T_EPS, DiscreteSchedule, Interpolant, path_coefficients)

PATHS = ("linear", "gvp", "vp", "vp_cosine")
PREDICTIONS = ("velocity", "noise", "score", "x0")
VP_ALPHA_AT_1 = math.exp(-0.25 * (20.0 - 0.1) - 0.5 * 0.1)  # SiT's VP never reaches pure noise


def _interpolant(path: str, prediction: str = "velocity") -> Interpolant:
    return Interpolant(path=path, prediction=prediction, t_min=1e-5)


def _data(seed: int = 0, batch: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, batch, dtype=torch.float64)
    return x, eps, t


@pytest.mark.parametrize("path", PATHS)
def test_endpoints_t0_is_data_and_t1_is_noise(path):
    x, eps, _ = _data()
    interp = _interpolant(path)
    zeros, ones = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(interp.x_t(x, eps, zeros), x, rtol=0, atol=1e-12)
    alpha_1 = VP_ALPHA_AT_1 if path == "vp" else 0.0
    expected_1 = alpha_1 * x + math.sqrt(1 - alpha_1**2) * eps
    torch.testing.assert_close(interp.x_t(x, eps, ones), expected_1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_signal_to_noise_falls_monotonically_from_data_to_noise(path):
    t = torch.linspace(1e-3, 1 - 1e-3, 500, dtype=torch.float64)
    c = path_coefficients(path, t)
    snr = (c.alpha / c.sigma) ** 2
    assert bool((snr[1:] < snr[:-1]).all())
    assert c.alpha[0] > 0.99 and c.sigma[-1] > 0.99  # data at t = 0, noise at t = 1


@pytest.mark.parametrize("path", PATHS)
def test_velocity_target_equals_autograd_time_derivative_of_x_t(path):
    x, eps, t = _data()
    interp = _interpolant(path)
    # Each sample depends on its own t only, so a JVP with tangent 1 gives d x_t[b] / d t[b].
    _, dxdt = torch.autograd.functional.jvp(lambda tt: interp.x_t(x, eps, tt), t, torch.ones_like(t))
    torch.testing.assert_close(interp.velocity_target(x, eps, t), dxdt, rtol=1e-10, atol=1e-10)


def test_linear_velocity_target_is_noise_minus_data():
    x, eps, t = _data()
    torch.testing.assert_close(_interpolant("linear").velocity_target(x, eps, t), eps - x)


@pytest.mark.parametrize("path", PATHS)
def test_vp_paths_are_variance_preserving_and_match_their_formulas(path):
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    c = path_coefficients(path, t)
    if path == "vp":
        expected = torch.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    elif path == "vp_cosine":
        f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        expected = torch.sqrt(f / f[0])
    elif path == "gvp":
        expected = torch.cos(math.pi * t / 2)
    else:
        expected = 1 - t
    torch.testing.assert_close(c.alpha, expected, rtol=1e-12, atol=1e-12)
    if path != "linear":
        torch.testing.assert_close(c.alpha**2 + c.sigma**2, torch.ones_like(t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("frm", PREDICTIONS)
@pytest.mark.parametrize("to", PREDICTIONS)
def test_every_conversion_recovers_the_true_quantity(path, frm, to):
    x, eps, t = _data(seed=1)
    interp = _interpolant(path)
    x_t = interp.x_t(x, eps, t)
    sigma = interp.coefficients(t, like=x).sigma
    truth = {"velocity": interp.velocity_target(x, eps, t), "noise": eps, "x0": x, "score": -eps / sigma}
    out = interp.convert(truth[frm], x_t, t, to=to, frm=frm)
    torch.testing.assert_close(out, truth[to], rtol=1e-9, atol=1e-9)
    back = interp.convert(out, x_t, t, to=frm, frm=to)  # and the pair round-trips
    torch.testing.assert_close(back, truth[frm], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_targets_match_each_prediction_and_convert_defaults_to_it(path):
    x, eps, t = _data(seed=2)
    sigma = _interpolant(path).coefficients(t, like=x).sigma
    expected = {"noise": eps, "x0": x, "score": -eps / sigma,
                "velocity": _interpolant(path).velocity_target(x, eps, t)}
    for prediction in PREDICTIONS:
        interp = _interpolant(path, prediction)
        target = interp.target(x, eps, t)
        torch.testing.assert_close(target, expected[prediction])
        velocity = interp.velocity(target, interp.x_t(x, eps, t), t)
        torch.testing.assert_close(velocity, expected["velocity"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_conversions_stay_finite_at_both_endpoints(path):
    x, eps, _ = _data(seed=3, batch=2)
    interp = _interpolant(path)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x_t = interp.x_t(x, eps, t.clamp(CONVERT_T_EPS, 1 - CONVERT_T_EPS))
    for frm in PREDICTIONS:
        for to in PREDICTIONS:
            assert torch.isfinite(interp.convert(eps, x_t, t, to=to, frm=frm)).all(), (frm, to)


def test_linear_score_from_velocity_at_pure_noise_is_minus_x():
    # At t = 1, x_t = ε and σ = 1, so the score −ε/σ is −x_t: the SDE sampler's first step relies on it.
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = x_t - torch.ones_like(x_t)  # ε − x̂ with x̂ = 1
    score = _interpolant("linear").convert(v, x_t, torch.ones(4, dtype=torch.float64), to="score")
    torch.testing.assert_close(score, -x_t, rtol=1e-4, atol=1e-4)


def test_loss_is_per_sample_float32_mean_square_even_for_bfloat16():
    interp = Interpolant(prediction="noise")
    x = torch.zeros(3, 2, 5, dtype=torch.bfloat16)
    eps = torch.ones(3, 2, 5, dtype=torch.bfloat16)
    offsets = torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1)
    pred = (eps.float() + offsets).to(torch.bfloat16)
    loss = interp.loss(pred, x, eps, torch.full((3,), 0.5))
    assert loss.dtype == torch.float32 and loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.25, 4.0]))


def test_velocity_loss_is_zero_at_the_target_and_mean_over_non_batch_dims():
    interp = Interpolant()
    x, eps, t = (v.float() for v in _data(seed=4))
    target = eps - x
    loss = interp.loss(target + 3.0, x, eps, t)
    torch.testing.assert_close(loss, torch.full((6,), 9.0))


def test_logit_normal_times_have_the_requested_logit_mean_and_std():
    interp = Interpolant(time_sampling="logit_normal", logit_mean=0.5, logit_std=1.2)
    t = interp.sample_t(200_000, "cpu", generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t)).double()
    assert abs(logit.mean().item() - 0.5) < 0.01
    assert abs(logit.std().item() - 1.2) < 0.01
    assert t.dtype == torch.float32


def test_uniform_times_fill_the_requested_range_and_are_reproducible():
    interp = Interpolant(t_min=0.2, t_max=0.6)
    t = interp.sample_t(100_000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.min().item() >= 0.2 and t.max().item() <= 0.6
    assert abs(t.mean().item() - 0.4) < 0.002
    again = interp.sample_t(100_000, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


@pytest.mark.parametrize("kwargs", [
    {"path": "vp"}, {"path": "vp_cosine"}, {"prediction": "score"},  # infinite target at t = 0
    {"path": "cosine"}, {"prediction": "eps"}, {"time_sampling": "beta"},
    {"t_min": 0.5, "t_max": 0.5}, {"logit_std": 0.0},
])
def test_invalid_interpolants_are_refused_at_construction(kwargs):
    with pytest.raises(ValueError):
        Interpolant(**kwargs)


def test_vp_velocity_is_accepted_with_a_positive_t_min():
    assert Interpolant(path="vp", t_min=1e-5).t_min == 1e-5
    assert Interpolant(path="vp", prediction="noise").t_min == 0.0


def test_linear_beta_table_is_ho_et_al_cumprod():
    table = DiscreteSchedule("linear_beta").alphas_cumprod()
    reference = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    np.testing.assert_allclose(table.numpy(), reference, rtol=1e-12)
    assert table.shape == (1000,)


def test_cosine_table_equals_the_continuous_vp_cosine_path_where_beta_is_not_clipped():
    schedule = DiscreteSchedule("cosine")
    betas, table = schedule.betas(), schedule.alphas_cumprod()
    t = schedule.t_of_index(torch.arange(1000))
    continuous = path_coefficients("vp_cosine", t).alpha ** 2
    unclipped = torch.cumprod(betas < 0.999, 0).bool()
    assert unclipped.sum() > 990 and betas.max() == 0.999
    torch.testing.assert_close(table[unclipped], continuous[unclipped], rtol=1e-9, atol=1e-12)


def test_linear_beta_table_approaches_the_continuous_vp_path():
    # VP(β_min = 0.1, β_max = 20) is the T → ∞ limit of β_i = 1e-4 … 0.02; log(1 − β) ≈ −β − β²/2 leaves
    # a gap of Σβ²/2 ≈ 0.067 at t = 1.
    schedule = DiscreteSchedule("linear_beta")
    t = schedule.t_of_index(torch.arange(1000))
    gap = schedule.alphas_cumprod().log() - 2 * path_coefficients("vp", t).alpha.log()
    assert gap.abs().max() < 0.1
    assert gap.abs()[:500].max() < 0.01
    assert schedule.path == "vp" and DiscreteSchedule("cosine").path == "vp_cosine"


def test_step_index_and_continuous_time_map_into_each_other():
    schedule = DiscreteSchedule("cosine", num_steps=250)
    index = torch.arange(250)
    t = schedule.t_of_index(index)
    assert t[0].item() == pytest.approx(1 / 250) and t[-1].item() == 1.0
    assert torch.equal(schedule.index_of_t(t), index)
    assert torch.equal(schedule.index_of_t(t.float()), index)
    with pytest.raises(ValueError):
        schedule.index_of_t(torch.tensor([0.0]))


def test_fewer_table_steps_rescale_the_linear_betas():
    betas = DiscreteSchedule("linear_beta", num_steps=250).betas()
    assert betas[0].item() == pytest.approx(4e-4) and betas[-1].item() == pytest.approx(0.08)


@pytest.mark.parametrize("kwargs", [{"kind": "quadratic"}, {"num_steps": 1}])
def test_invalid_discrete_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        DiscreteSchedule(**kwargs)


def test_loss_mask_averages_over_real_elements_only():
    interp = Interpolant()
    x, eps = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    t = torch.tensor([0.2, 0.5, 0.9])
    pred = torch.randn(3, 2, 5)
    mask = torch.ones(3, 1, 5)
    mask[1, :, 3:] = 0  # sample 1 has two padded frames
    got = interp.loss(pred, x, eps, t, mask=mask)
    err = (pred - (eps - x)).square()
    torch.testing.assert_close(got[0], err[0].mean())
    torch.testing.assert_close(got[1], err[1, :, :3].mean())
    torch.testing.assert_close(interp.loss(pred, x, eps, t, mask=torch.ones(3, 1, 5)), interp.loss(pred, x, eps, t))
