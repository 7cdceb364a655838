"""Samplers driven by the EXACT velocity / noise field of Gaussian data recover that Gaussian.

Data x ~ N(μ, Σ) in 2-D and x_t = α x + σ ε give x_t ~ N(α μ, C), C = α²Σ + σ²I, with Cov(x, x_t) = αΣ and
Cov(ε, x_t) = σI. Gaussian conditioning then gives the closed-form posterior means
    E[x | x_t] = μ + αΣ C⁻¹ (x_t − α μ),     E[ε | x_t] = σ C⁻¹ (x_t − α μ),
and the exact velocity E[v | x_t] = α' E[x | x_t] + σ' E[ε | x_t] (affine in x_t). Linear: α = 1 − t,
σ = t, so v = σ C⁻¹(x_t − αμ) − μ − αΣC⁻¹(x_t − αμ); GVP: α = cos(πt/2), σ = sin(πt/2).
For deterministic samplers the noise is whitened (sample mean 0, covariance I exactly): an affine field
makes every ODE sampler an affine map of the noise, so the output moments carry only the sampler's
discretization error, with no Monte-Carlo noise.
"""

import math

import pytest
import torch

from layersync.core import samplers
from layersync.core.interpolants import DiscreteSchedule, Interpolant

F64 = torch.float64
MU = torch.tensor([1.0, -2.0], dtype=F64)
COV = torch.tensor([[1.0, 0.5], [0.5, 0.8]], dtype=F64)
N_SAMPLES = 20_000

PATHS = {  # t -> (α, σ, α', σ'), written out here, independent of the module under test
    "linear": lambda t: (1 - t, t, -1.0, 1.0),
    "gvp": lambda t: (math.cos(math.pi * t / 2), math.sin(math.pi * t / 2),
                      -math.pi / 2 * math.sin(math.pi * t / 2), math.pi / 2 * math.cos(math.pi * t / 2)),
}


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py: tiny tensors


def posterior_means(x_t: torch.Tensor, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x | x_t], E[ε | x_t]) for Gaussian data, each (B, 2)."""
    c_inv = torch.linalg.inv(alpha**2 * COV + sigma**2 * torch.eye(2, dtype=F64))
    r = (x_t - alpha * MU) @ c_inv  # (B, 2): C⁻¹(x_t − αμ) per row (C symmetric)
    return MU + alpha * r @ COV, sigma * r


def _time_of(t: torch.Tensor) -> float:
    assert bool((t == t[0]).all()), "samplers give every sample the same t"
    return float(t[0])


def exact_velocity(path: str):
    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma, d_alpha, d_sigma = PATHS[path](_time_of(t))
        x0, eps = posterior_means(x, alpha, sigma)
        return d_alpha * x0 + d_sigma * eps
    return model_fn


def exact_discrete(schedule: DiscreteSchedule, prediction: str):
    """Exact noise, x0 or score prediction on the table: step i is called at t = (i + 1)/T, α² = ᾱ_i."""
    table = schedule.alphas_cumprod().tolist()

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = table[round(_time_of(t) * schedule.num_steps) - 1]
        sigma = math.sqrt(1 - alpha_bar)
        x0, eps = posterior_means(x, math.sqrt(alpha_bar), sigma)
        return {"noise": eps, "x0": x0, "score": -eps / sigma}[prediction]
    return model_fn


def whitened_noise(n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    z = z - z.mean(0)
    return z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / n)).T  # (n, 2), mean 0, cov I


NOISE = whitened_noise()


def moment_errors(x: torch.Tensor) -> tuple[float, float]:
    """Largest absolute error of the sample mean and covariance against (μ, Σ)."""
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / x.shape[0]
    return (mean - MU).abs().max().item(), (cov - COV).abs().max().item()


def total_error(x: torch.Tensor) -> float:
    return sum(moment_errors(x))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("run, tol", [
    pytest.param(lambda f: samplers.euler(f, NOISE, samplers.time_grid(64)), 0.05, id="euler64"),
    pytest.param(lambda f: samplers.heun(f, NOISE, samplers.time_grid(32)), 0.005, id="heun32"),
    pytest.param(lambda f: samplers.dopri5(f, NOISE), 0.005, id="dopri5"),
])
def test_ode_samplers_with_the_exact_velocity_recover_the_gaussian(path, run, tol):
    mean_err, cov_err = moment_errors(run(exact_velocity(path)).x)
    assert mean_err < tol and cov_err < tol, (mean_err, cov_err)


@pytest.mark.parametrize("path", PATHS)
def test_euler_error_falls_at_first_order_as_steps_grow(path):
    errors = [total_error(samplers.euler(exact_velocity(path), NOISE, samplers.time_grid(n)).x)
              for n in (8, 16, 32, 64)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 6, errors  # first order: ÷8 ideally


@pytest.mark.parametrize("path", PATHS)
def test_heun_error_falls_at_second_order_as_steps_grow(path):
    errors = [total_error(samplers.heun(exact_velocity(path), NOISE, samplers.time_grid(n)).x)
              for n in (8, 32)]
    assert errors[1] < errors[0] / 10, errors  # second order: ÷16 ideally


@pytest.mark.parametrize("correct_last", [False, True])
def test_heun_last_step_is_euler_unless_corrected_as_heun2(correct_last):
    """On v = a·x a Heun step multiplies x by 1 + ha + (ha)²/2 and an Euler step by 1 + ha (h = −1/n):
    our Heun ends with Euler onto t = 0; correct_last (torchdiffeq's heun2, SiT's FID sampler) does not."""
    a, n = 0.7, 5
    x0 = torch.tensor([[1.0, -2.0]], dtype=F64)
    result = samplers.heun(lambda x, t: a * x, x0, samplers.time_grid(n), correct_last=correct_last)
    ha = -a / n
    heun_step, euler_step = 1 + ha + ha**2 / 2, 1 + ha
    expected = x0 * heun_step ** (n - 1) * (heun_step if correct_last else euler_step)
    torch.testing.assert_close(result.x, expected, atol=1e-12, rtol=1e-12)
    assert result.nfe == (2 * n if correct_last else 2 * n - 1)


@pytest.mark.parametrize("path", PATHS)
def test_euler_maruyama_with_sit_sigma_diffusion_recovers_the_gaussian(path):
    result = samplers.euler_maruyama(exact_velocity(path), NOISE, Interpolant(path=path),
                                     generator=torch.Generator().manual_seed(1))
    mean_err, cov_err = moment_errors(result.x)
    assert mean_err < 0.04 and cov_err < 0.05, (mean_err, cov_err)  # Monte-Carlo std ≈ 0.01
    assert result.nfe == 250  # 249 EM steps + the final mean step, as SiT


def test_euler_maruyama_with_constant_diffusion_recovers_the_gaussian():
    result = samplers.euler_maruyama(exact_velocity("linear"), NOISE, Interpolant(), steps=100,
                                     diffusion="constant", diffusion_norm=0.1,
                                     generator=torch.Generator().manual_seed(2))
    mean_err, cov_err = moment_errors(result.x)
    assert mean_err < 0.04 and cov_err < 0.05, (mean_err, cov_err)


def test_euler_maruyama_without_diffusion_is_euler_on_its_grid_plus_the_last_step():
    noise = NOISE[:256]
    sde = samplers.euler_maruyama(exact_velocity("gvp"), noise, Interpolant(path="gvp"), steps=20,
                                  diffusion_norm=0.0, generator=torch.Generator().manual_seed(0))
    grid = torch.cat([torch.linspace(1.0, 0.04, 20, dtype=F64), torch.zeros(1, dtype=F64)])
    ode = samplers.euler(exact_velocity("gvp"), noise, grid)
    torch.testing.assert_close(sde.x, ode.x, rtol=1e-12, atol=1e-12)
    assert sde.nfe == ode.nfe == 20


def test_euler_maruyama_is_reproducible_from_its_generator():
    def run(seed: int) -> torch.Tensor:
        return samplers.euler_maruyama(exact_velocity("linear"), NOISE[:64], Interpolant(), steps=10,
                                       generator=torch.Generator().manual_seed(seed)).x
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


@pytest.mark.parametrize("kind", ["cosine", "linear_beta"])
def test_ddim_with_the_exact_noise_field_recovers_the_gaussian_and_improves_with_steps(kind):
    schedule = DiscreteSchedule(kind)
    model_fn = exact_discrete(schedule, "noise")
    runs = {n: samplers.ddim(model_fn, NOISE, schedule, steps=n) for n in (10, 25, 100)}
    errors = [total_error(r.x) for r in runs.values()]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    mean_err, cov_err = moment_errors(runs[100].x)
    assert mean_err < 0.02 and cov_err < 0.05, (mean_err, cov_err)
    assert [r.nfe for r in runs.values()] == [10, 25, 100]


@pytest.mark.parametrize("kind", ["cosine", "linear_beta"])
def test_ddpm_with_the_exact_noise_field_recovers_the_gaussian(kind):
    schedule = DiscreteSchedule(kind)
    result = samplers.ddpm(exact_discrete(schedule, "noise"), NOISE, schedule, steps=250,
                           generator=torch.Generator().manual_seed(5))
    mean_err, cov_err = moment_errors(result.x)
    assert mean_err < 0.04 and cov_err < 0.05, (mean_err, cov_err)
    assert result.nfe == 250


def test_ddpm_equals_ddim_with_eta_one_given_the_same_random_stream():
    # Ho et al.'s posterior mean (x̂0 and x_t) and DDIM's (x̂0 and ε̂) with η = 1 are the same step.
    schedule = DiscreteSchedule("cosine")
    model_fn, noise = exact_discrete(schedule, "noise"), NOISE[:512]
    a = samplers.ddpm(model_fn, noise, schedule, steps=40, generator=torch.Generator().manual_seed(7))
    b = samplers.ddim(model_fn, noise, schedule, steps=40, eta=1.0,
                      generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_discrete_samplers_give_the_same_result_from_noise_x0_and_score_predictions(sampler):
    schedule = DiscreteSchedule("linear_beta")
    run = getattr(samplers, sampler)
    out = {p: run(exact_discrete(schedule, p), NOISE[:512], schedule, steps=30, prediction=p,
                  generator=torch.Generator().manual_seed(0)).x for p in ("noise", "x0", "score")}
    torch.testing.assert_close(out["x0"], out["noise"], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out["score"], out["noise"], rtol=1e-8, atol=1e-8)


def test_discrete_samplers_refuse_velocity_models_and_impossible_step_counts():
    schedule = DiscreteSchedule("cosine", num_steps=100)
    with pytest.raises(ValueError, match="velocity"):
        samplers.ddim(exact_velocity("linear"), NOISE[:8], schedule, prediction="velocity")
    with pytest.raises(ValueError, match="steps"):
        samplers.ddpm(exact_discrete(schedule, "noise"), NOISE[:8], schedule, steps=101)


def test_respaced_steps_include_both_ends_of_the_table_like_guided_diffusion():
    seen = []
    schedule = DiscreteSchedule("cosine")
    samplers.ddim(lambda x, t: seen.append(_time_of(t)) or torch.zeros_like(x), NOISE[:4], schedule, steps=4)
    assert seen == pytest.approx([1.0, 667 / 1000, 334 / 1000, 1 / 1000])  # round(999·k/3) + 1, over T


def test_time_grid_runs_from_noise_to_data():
    grid = samplers.time_grid(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=F64))
    with pytest.raises(ValueError):
        samplers.time_grid(4, t_start=0.0, t_end=1.0)
    with pytest.raises(ValueError):
        samplers.euler(exact_velocity("linear"), NOISE[:4], torch.tensor([0.0, 1.0]))


def _counting(model_fn):
    calls = []

    def counted(x, t):
        calls.append(x.shape[0])
        return model_fn(x, t)
    return counted, calls


@pytest.mark.parametrize("steps", [1, 5, 12])
def test_nfe_counts_every_model_evaluation(steps):
    f, calls = _counting(exact_velocity("linear"))
    assert samplers.euler(f, NOISE[:16], samplers.time_grid(steps)).nfe == steps == len(calls)
    calls.clear()
    assert samplers.heun(f, NOISE[:16], samplers.time_grid(steps)).nfe == 2 * steps - 1 == len(calls)
    calls.clear()  # a grid that stops short of t = 0 gets a Heun correction on every step
    assert samplers.heun(f, NOISE[:16], samplers.time_grid(steps, t_end=0.1)).nfe == 2 * steps == len(calls)


def test_dopri5_nfe_counts_its_adaptive_evaluations():
    f, calls = _counting(exact_velocity("gvp"))
    loose = samplers.dopri5(f, NOISE[:256], atol=1e-3, rtol=1e-2)
    assert loose.nfe == len(calls) > 6
    calls.clear()
    tight = samplers.dopri5(f, NOISE[:256], atol=1e-9, rtol=1e-8)
    assert tight.nfe == len(calls) > loose.nfe  # tighter tolerances take more steps


class FakeModel:
    """pred = x·(1 + cond) + t on every channel; a dropped or zero condition gives x + t. Records batches."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x, t, cond, force_drop=None):
        self.batches.append(x.shape[0])
        if force_drop is not None:
            cond = torch.where(force_drop, torch.zeros_like(cond), cond)
        return x * (1 + cond.view(-1, 1, 1)) + t.view(-1, 1, 1)


X = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=F64)  # (B, C, L): 4 channels
COND = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
NULL = torch.zeros(3, dtype=F64)


def test_guidance_scale_one_is_the_conditional_prediction_from_one_forward():
    model, t = FakeModel(), torch.full((3,), 0.5, dtype=F64)
    out = samplers.guided(model, COND, NULL, 1.0)(X, t)
    torch.testing.assert_close(out, X * (1 + COND.view(-1, 1, 1)) + 0.5)
    assert model.batches == [3]


@pytest.mark.parametrize("null_cond", [NULL, None], ids=["null_tensor", "force_drop"])
def test_guidance_mixes_all_channels_in_one_batched_forward(null_cond):
    model, t = FakeModel(), torch.full((3,), 0.5, dtype=F64)
    out = samplers.guided(model, COND, null_cond, 4.0)(X, t)
    # p_u + s(p_c − p_u) = (x + t) + 4·x·cond, on all 4 channels (not DiT's first 3)
    torch.testing.assert_close(out, X + 0.5 + 4.0 * X * COND.view(-1, 1, 1))
    assert model.batches == [6]


def test_outside_the_guidance_interval_the_prediction_is_conditional_from_one_small_forward():
    model = FakeModel()
    model_fn = samplers.guided(model, COND, NULL, 4.0, interval=(0.2, 0.6))
    out = model_fn(X, torch.full((3,), 0.8, dtype=F64))
    torch.testing.assert_close(out, X * (1 + COND.view(-1, 1, 1)) + 0.8)
    assert model.batches == [3]
    t = torch.tensor([0.1, 0.4, 0.8], dtype=F64)  # only the middle sample is inside
    out = model_fn(X, t)
    cond_pred = X * (1 + COND.view(-1, 1, 1)) + t.view(-1, 1, 1)
    torch.testing.assert_close(out[[0, 2]], cond_pred[[0, 2]])
    torch.testing.assert_close(out[1], X[1] + 0.4 + 4.0 * X[1] * COND[1])
    assert model.batches == [3, 6]


def test_guidance_commutes_with_the_conversion_to_velocity():
    interp, t = Interpolant(prediction="noise"), torch.full((3,), 0.3, dtype=F64)
    out = samplers.guided(FakeModel(), COND, NULL, 2.5, to_velocity=interp.velocity)(X, t)
    v_cond = interp.velocity(FakeModel()(X, t, COND), X, t)
    v_null = interp.velocity(FakeModel()(X, t, NULL), X, t)
    torch.testing.assert_close(out, v_null + 2.5 * (v_cond - v_null))


def test_guided_model_fn_drives_a_sampler_with_one_forward_per_step():
    model = FakeModel()
    result = samplers.euler(samplers.guided(model, COND, NULL, 1.5), X, samplers.time_grid(7))
    assert result.nfe == 7 and model.batches == [6] * 7


def test_guidance_needs_a_condition_and_a_valid_interval():
    with pytest.raises(ValueError, match="condition"):
        samplers.guided(FakeModel(), None, None, 2.0)
    with pytest.raises(ValueError, match="interval"):
        samplers.guided(FakeModel(), COND, NULL, 2.0, interval=(0.7, 0.3))
    unconditional = samplers.guided(lambda x, t, cond: x * 2, None, None, 1.0)
    torch.testing.assert_close(unconditional(X, torch.zeros(3, dtype=F64)), 2 * X)


def test_guidance_on_the_first_channels_only_is_sits_forward_with_cfg():
    """SiT models.py forward_with_cfg: eps, rest = out[:, :3], out[:, 3:]; eps guided, rest conditional."""
    g = torch.Generator().manual_seed(0)
    w_cond, w_null = torch.randn(4, generator=g), torch.randn(4, generator=g)

    def model(x, t, cond, force_drop=None):  # a different field per channel for the two branches
        w = torch.where(force_drop.view(-1, 1), w_null, w_cond) if force_drop is not None else w_cond.expand(
            x.shape[0], 4)
        return x * w.view(-1, 4, 1, 1) + t.view(-1, 1, 1, 1)

    x, t, y = torch.randn(2, 4, 3, 3, generator=g), torch.full((2,), 0.4), torch.tensor([1, 2])
    out = samplers.guided(model, y, None, 1.5, channels=3)(x, t)
    cond, null = model(x, t, y), model(x, t, y, force_drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(out[:, :3], null[:, :3] + 1.5 * (cond[:, :3] - null[:, :3]))
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    every = samplers.guided(model, y, None, 1.5)(x, t)  # the default: all four channels
    torch.testing.assert_close(every, null + 1.5 * (cond - null))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        samplers.guided(model, y, None, 1.5, channels=0)
