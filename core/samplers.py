"""Samplers: plain functions integrating from t = 1 (noise) to t = 0 (data), k-diffusion style.

The continuous samplers (euler, heun, dopri5, euler_maruyama) take `model_fn(x, t) -> velocity` in our
convention (t a (B,) tensor); wrap any other prediction with `interpolant.velocity` first, e.g. through
`guided(..., to_velocity=interpolant.velocity)`. The discrete ones (ddim, ddpm) walk a DDPM ᾱ table and
take `model_fn(x, t)` in noise, x0 or score prediction, called at the continuous t = (i + 1)/T of step i.
Every sampler returns SampleResult(x, nfe), nfe counted by wrapping model_fn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor
from torchdiffeq import odeint

from layersync.core.interpolants import (Coefficients, DiscreteSchedule, Interpolant, Prediction,
                                         check_choice, convert_prediction)

ModelFn = Callable[[Tensor, Tensor], Tensor]
Diffusion = Literal["sigma", "constant"]


@dataclass(frozen=True)
class SampleResult:
    """Final samples and the number of model evaluations actually made."""

    x: Tensor
    nfe: int


class _Counted:
    """A model_fn that counts its calls."""

    def __init__(self, model_fn: ModelFn):
        self.model_fn, self.calls = model_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model_fn(x, t)


def _t_batch(t: float | Tensor, x: Tensor) -> Tensor:
    """t for every sample, (B,); at least float32 so that bf16 samples keep distinct grid times."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.as_tensor(t, dtype=dtype, device=x.device).expand(x.shape[0]).clone()  # (B,)


def _check_direction(t_start: float, t_end: float) -> None:
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1 (sampling runs noise → data), "
                         f"got {t_start} → {t_end}")


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """steps + 1 evenly spaced times from t_start down to t_end, (steps + 1,) float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check_direction(t_start, t_end)
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def _grid_times(grid: Tensor) -> list[float]:
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("grid must be a 1-D, strictly decreasing tensor of >= 2 times: use time_grid")
    return grid.tolist()


@torch.no_grad()
def euler(model_fn: ModelFn, noise: Tensor, grid: Tensor) -> SampleResult:
    """Euler's method on dx/dt = v(x, t) along `grid`: one evaluation per step."""
    f, x = _Counted(model_fn), noise
    times = _grid_times(grid)
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t_cur) * f(x, _t_batch(t_cur, x))
    return SampleResult(x, f.calls)


@torch.no_grad()
def heun(model_fn: ModelFn, noise: Tensor, grid: Tensor, correct_last: bool = False) -> SampleResult:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); a step that ends at t = 0 is plain Euler.

    nfe = 2·steps − 1 when the grid ends at t = 0, else 2·steps. `correct_last=True` corrects that last step
    too, evaluating the model at t = 0, as torchdiffeq's fixed-grid `heun2` does (SiT's `--sampling-method
    heun2`, behind its reported SiT-XL/2 FID: willisma/SiT issue #18): nfe = 2·steps.
    """
    f, x = _Counted(model_fn), noise
    times = _grid_times(grid)
    for t_cur, t_next in zip(times[:-1], times[1:]):
        h = t_next - t_cur
        d_cur = f(x, _t_batch(t_cur, x))
        x_next = x + h * d_cur
        if t_next > 0 or correct_last:  # trapezoid correction with the slope at the Euler guess
            x_next = x + 0.5 * h * (d_cur + f(x_next, _t_batch(t_next, x)))
        x = x_next
    return SampleResult(x, f.calls)


@torch.no_grad()
def dopri5(model_fn: ModelFn, noise: Tensor, t_start: float = 1.0, t_end: float = 0.0,
           atol: float = 1e-6, rtol: float = 1e-3) -> SampleResult:
    """Adaptive Dormand–Prince 5(4) via torchdiffeq.odeint (SiT's default ODE sampler and tolerances).

    nfe counts every evaluation the solver makes, initial step-size selection and rejected steps included.
    """
    _check_direction(t_start, t_end)
    f = _Counted(model_fn)

    def rhs(t: Tensor, x: Tensor) -> Tensor:  # torchdiffeq calls f(t, y) with a 0-d t
        return f(x, _t_batch(t, x))

    times = torch.tensor([t_start, t_end], dtype=noise.dtype, device=noise.device)
    x = odeint(rhs, noise, times, method="dopri5", atol=atol, rtol=rtol)[-1]
    return SampleResult(x, f.calls)


def _diffusion_coefficient(interpolant: Interpolant, t: float, diffusion: Diffusion, norm: float) -> float:
    """SiT's w(t): "sigma" → norm·σ_t (SiT's default form), "constant" → norm."""
    if diffusion == "constant":
        return norm
    return norm * float(interpolant.coefficients(torch.tensor(t, dtype=torch.float64)).sigma)


@torch.no_grad()
def euler_maruyama(model_fn: ModelFn, noise: Tensor, interpolant: Interpolant, steps: int = 250,
                   last_step: float = 0.04, diffusion: Diffusion = "sigma", diffusion_norm: float = 1.0,
                   t_start: float = 1.0, generator: torch.Generator | None = None) -> SampleResult:
    """Euler–Maruyama on the reverse-time SDE, then SiT's noise-free "Mean" step to t = 0.

    For any w(t) ≥ 0 this SDE, run from t = 1 down to 0, has the interpolant's marginals (SiT, Ma et al.
    2024: the probability-flow ODE plus Langevin dynamics at rate w, which leaves p_t unchanged):
        dx = [v(x, t) − w(t)·s(x, t)] dt + √(2·w(t)) dW̄,    s = ∇ log p_t from v via the interpolant,
    i.e. drift v − ½g²s with g² = 2w, w being SiT's diffusion coefficient (its "sigma" form: w = σ_t).
    As in SiT, `steps` times evenly spaced from t_start to `last_step` give steps − 1 EM steps; then
    x ← x − last_step·[v − w·s] at t = last_step lands on t = 0 with no noise. nfe = steps
    (steps − 1 when last_step = 0, which ends with a noisy EM step onto t = 0).
    """
    check_choice("diffusion", diffusion, Diffusion)
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (grid points, as in SiT), got {steps}")
    if not 0.0 <= last_step < t_start <= 1.0:
        raise ValueError(f"need 0 <= last_step < t_start <= 1, got last_step={last_step}, t_start={t_start}")
    if diffusion_norm < 0:
        raise ValueError(f"diffusion_norm must be >= 0, got {diffusion_norm}")
    f, x = _Counted(model_fn), noise

    def drift(x: Tensor, t: float) -> tuple[Tensor, float]:
        t_b = _t_batch(t, x)
        v = f(x, t_b)
        score = interpolant.convert(v, x, t_b, to="score", frm="velocity")
        w = _diffusion_coefficient(interpolant, t, diffusion, diffusion_norm)
        return v - w * score, w

    times = torch.linspace(t_start, last_step, steps, dtype=torch.float64).tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        h = t_cur - t_next  # > 0: we step backwards in t
        d, w = drift(x, t_cur)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x - h * d + math.sqrt(2 * w * h) * z
    if last_step > 0:
        d, _ = drift(x, last_step)
        x = x - last_step * d
    return SampleResult(x, f.calls)


def _respaced_indices(schedule: DiscreteSchedule, steps: int) -> list[int]:
    """`steps` table indices from T − 1 down to 0, evenly spaced, rounded (guided-diffusion's respacing)."""
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"steps must be in [1, {schedule.num_steps}] for this table, got {steps}")
    top = schedule.num_steps - 1
    return torch.linspace(top, 0, steps, dtype=torch.float64).round().long().tolist()


StepFn = Callable[[Tensor, Tensor, Tensor, float, float], tuple[Tensor, float]]


def _discrete_sample(model_fn: ModelFn, noise: Tensor, schedule: DiscreteSchedule, steps: int,
                     prediction: Prediction, step: StepFn, generator: torch.Generator | None) -> SampleResult:
    """Walk the respaced table; `step` maps (x_i, x̂0, ε̂, ᾱ_i, ᾱ_prev) to the mean and std of x_prev."""
    if prediction == "velocity":
        raise ValueError("ddim/ddpm take a noise, x0 or score model_fn: a velocity needs a continuous path, "
                         "so sample velocity models with euler/heun/dopri5/euler_maruyama")
    f, x = _Counted(model_fn), noise
    table = schedule.alphas_cumprod().tolist()
    indices = _respaced_indices(schedule, steps)
    for k, i in enumerate(indices):
        alpha_bar = table[i]
        alpha_bar_prev = table[indices[k + 1]] if k + 1 < len(indices) else 1.0  # ᾱ = 1: x̂0 itself
        c = Coefficients(*(torch.tensor(v, dtype=x.dtype, device=x.device)
                           for v in (math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar))), None, None)
        pred = f(x, _t_batch((i + 1) / schedule.num_steps, x))
        x0 = convert_prediction(pred, x, c, prediction, "x0")
        eps = convert_prediction(pred, x, c, prediction, "noise")
        mean, std = step(x, x0, eps, alpha_bar, alpha_bar_prev)
        x = mean
        if k + 1 < len(indices):  # the last step is the noise-free x̂0
            x = mean + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return SampleResult(x, f.calls)


@torch.no_grad()
def ddim(model_fn: ModelFn, noise: Tensor, schedule: DiscreteSchedule, steps: int = 50, eta: float = 0.0,
         prediction: Prediction = "noise", generator: torch.Generator | None = None) -> SampleResult:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on a respaced table; eta = 0 is deterministic, 1 is DDPM.

        x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − s²)·ε̂ + s·z,   s = η·√((1 − ᾱ_prev)/(1 − ᾱ)·(1 − ᾱ/ᾱ_prev))
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: DDIM, 1: DDPM's variance), got {eta}")

    def step(x: Tensor, x0: Tensor, eps: Tensor, ab: float, ab_prev: float) -> tuple[Tensor, float]:
        std = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        direction = max(1 - ab_prev - std**2, 0.0)  # ≥ 0 for eta ≤ 1; max() only absorbs rounding
        return math.sqrt(ab_prev) * x0 + math.sqrt(direction) * eps, std

    return _discrete_sample(model_fn, noise, schedule, steps, prediction, step, generator)


@torch.no_grad()
def ddpm(model_fn: ModelFn, noise: Tensor, schedule: DiscreteSchedule, steps: int | None = None,
         prediction: Prediction = "noise", generator: torch.Generator | None = None) -> SampleResult:
    """Ancestral DDPM (Ho et al. 2020, eq. 6–7) with the posterior ("fixed small") variance β̃.

    With respacing (steps < T), β_i = 1 − ᾱ_i/ᾱ_prev between kept steps, as guided-diffusion does:
        x_prev ~ N(√ᾱ_prev·β/(1 − ᾱ)·x̂0 + √(1 − β)·(1 − ᾱ_prev)/(1 − ᾱ)·x,  β·(1 − ᾱ_prev)/(1 − ᾱ))
    """
    def step(x: Tensor, x0: Tensor, eps: Tensor, ab: float, ab_prev: float) -> tuple[Tensor, float]:
        beta = 1 - ab / ab_prev
        coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab)
        coef_x = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        return coef_x0 * x0 + coef_x * x, math.sqrt(beta * (1 - ab_prev) / (1 - ab))

    steps = schedule.num_steps if steps is None else steps
    return _discrete_sample(model_fn, noise, schedule, steps, prediction, step, generator)


def guided(model: Callable[..., Tensor], cond: Tensor | None, null_cond: Tensor | None, scale: float,
           interval: tuple[float, float] | None = None,
           to_velocity: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
           channels: int | None = None,
           token_mask: Tensor | None = None) -> ModelFn:
    """Classifier-free guidance on ALL channels as a model_fn: p = p_u + scale·(p_c − p_u) (Ho & Salimans).

    `model(x, t, cond)` is the backbone. Conditional and null predictions come from ONE batched forward
    (2B); `null_cond=None` drops the condition through the backbone's `force_drop` (its learned null
    embedding). Guidance applies only where t ∈ [lo, hi] of `interval` (Kynkäänniemi et al. 2024);
    elsewhere the conditional prediction is used, from a single B forward when no sample is inside.
    scale = 1 is no guidance: one conditional forward (cond may then be None, for unconditional models).
    `to_velocity(pred, x, t)` converts last; guidance is affine in pred, so it commutes with it.
    `channels=k` guides only channels [0, k) and keeps the conditional prediction elsewhere: SiT's and
    LayerSync's `forward_with_cfg` guide 3 of the 4 latent channels ("for exact reproducibility", after DiT);
    use k = 3 to compare with them exactly. None guides every channel.
    `token_mask` (B, N) bool, True = real token, goes to every forward (doubled with the batch), for sets of
    different sizes padded to one N; the predictions at padded tokens are meaningless.
    """
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be >= 1 (or None for all), got {channels}")
    if interval is not None and not 0.0 <= interval[0] < interval[1] <= 1.0:
        raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval}")
    if scale != 1.0 and cond is None:
        raise ValueError(f"guidance scale {scale} needs a condition: pass cond, or scale=1.0 for no guidance")

    single = {} if token_mask is None else {"token_mask": token_mask}
    double = {} if token_mask is None else {"token_mask": torch.cat([token_mask, token_mask])}  # (2B, N)

    def both(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])  # (2B, ...), (2B,)
        if null_cond is None:
            drop = torch.arange(2 * x.shape[0], device=x.device) >= x.shape[0]  # (2B,) True = null half
            out = model(x2, t2, torch.cat([cond, cond]), force_drop=drop, **double)
        else:
            out = model(x2, t2, torch.cat([cond, null_cond]), **double)
        pred_cond, pred_null = out.chunk(2)
        return pred_cond, pred_null

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        if cond is not None and cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond has batch {cond.shape[0]} but x has {x.shape[0]}: "
                             "give one condition per sample")
        inside = torch.ones_like(t, dtype=torch.bool) if interval is None else (
            (t >= interval[0]) & (t <= interval[1]))  # (B,)
        if scale == 1.0 or not bool(inside.any()):
            pred = model(x, t, cond, **single)
        else:
            pred_cond, pred_null = both(x, t)
            mix = pred_null + scale * (pred_cond - pred_null)
            if channels is not None:
                mix = torch.cat([mix[:, :channels], pred_cond[:, channels:]], dim=1)
            pred = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), mix, pred_cond)
        return pred if to_velocity is None else to_velocity(pred, x, t)

    return model_fn
