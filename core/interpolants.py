"""Interpolants x_t = α_t·x + σ_t·ε (t = 0 data, t = 1 noise): paths, targets, losses, conversions.

Four paths, all in OUR time direction (SiT's code runs the other way; never mix the two):
  linear     α = 1 − t,          σ = t                          (rectified flow / SiT "Linear")
  gvp        α = cos(πt/2),      σ = sin(πt/2)                  (SiT "GVP")
  vp         log α = −¼t²(β_max − β_min) − ½tβ_min, σ = √(1 − α²)  (SiT "VP", β_min = 0.1, β_max = 20)
  vp_cosine  α² = ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2), s = 0.008, σ = √(1 − ᾱ)
             (improved DDPM, Nichol & Dhariwal 2021 eq. 17: the schedule MDM uses)

Every prediction (velocity, noise, score, x0) is turned into every other in ONE place,
`convert_prediction`, through the pair (x̂, ε̂) it implies: x_t = α x̂ + σ ε̂, v = α' x̂ + σ' ε̂, s = −ε̂/σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

Path = Literal["linear", "gvp", "vp", "vp_cosine"]
Prediction = Literal["velocity", "noise", "score", "x0"]
TimeSampling = Literal["uniform", "logit_normal"]
DiscreteKind = Literal["linear_beta", "cosine"]

VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0  # SiT's VPCPlan defaults (Song et al. 2021 VP-SDE)
COSINE_S = 0.008  # improved-DDPM offset: keeps β small near t = 0
COSINE_MAX_BETA = 0.999  # improved DDPM clips β_i to avoid the singularity at t = 1
# Conversions divide by α (x̂ from ε̂, vanishes at t = 1) or σ (ε̂ from x̂ and the score, vanish at t = 0);
# `Interpolant.convert` clamps t into [CONVERT_T_EPS, 1 − CONVERT_T_EPS] so both stay finite.
CONVERT_T_EPS = 1e-5


class Coefficients(NamedTuple):
    """α_t, σ_t and their time derivatives (None where a discrete table has none)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor | None
    d_sigma: Tensor | None


def check_choice(name: str, value: str, literal) -> None:
    if value not in get_args(literal):
        raise ValueError(f"{name}={value!r}; choose one of {', '.join(get_args(literal))}")


def path_coefficients(path: Path, t: Tensor) -> Coefficients:
    """(α_t, σ_t, dα/dt, dσ/dt) of `path` at t, analytic, computed in float64 and returned in t's dtype."""
    check_choice("path", path, Path)
    tt = t.to(torch.float64)
    if path == "linear":
        alpha, sigma = 1 - tt, tt
        d_alpha, d_sigma = -torch.ones_like(tt), torch.ones_like(tt)
    elif path == "gvp":
        half_pi = math.pi / 2
        alpha, sigma = torch.cos(half_pi * tt), torch.sin(half_pi * tt)
        d_alpha, d_sigma = -half_pi * sigma, half_pi * alpha
    elif path == "vp":
        spread = VP_BETA_MAX - VP_BETA_MIN
        log_alpha = -0.25 * tt**2 * spread - 0.5 * tt * VP_BETA_MIN
        alpha = torch.exp(log_alpha)
        d_alpha = alpha * (-0.5 * tt * spread - 0.5 * VP_BETA_MIN)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha))  # 1 − α² without cancellation near t = 0
        d_sigma = -alpha * d_alpha / sigma  # from σ² = 1 − α²; +∞ at t = 0
    else:  # vp_cosine
        theta0 = COSINE_S / (1 + COSINE_S) * math.pi / 2
        d_theta = math.pi / (2 * (1 + COSINE_S))
        theta = theta0 + d_theta * tt
        alpha = torch.cos(theta) / math.cos(theta0)
        d_alpha = -d_theta * torch.sin(theta) / math.cos(theta0)
        # 1 − cos²θ/cos²θ0 = sin(θ − θ0)·sin(θ + θ0)/cos²θ0, free of cancellation near t = 0
        sigma = torch.sqrt(torch.sin(theta - theta0) * torch.sin(theta + theta0)) / math.cos(theta0)
        d_sigma = -alpha * d_alpha / sigma  # +∞ at t = 0
    return Coefficients(*(c.to(t.dtype) for c in (alpha, sigma, d_alpha, d_sigma)))


def _noise_of(pred: Tensor, x_t: Tensor, c: Coefficients, frm: Prediction) -> Tensor:
    """ε̂ implied by a prediction of kind `frm` at x_t."""
    if frm == "noise":
        return pred
    if frm == "score":
        return -c.sigma * pred  # s = −ε̂/σ
    if frm == "x0":
        return (x_t - c.alpha * pred) / c.sigma
    _require_derivatives(c)
    # Solve [x_t; v] = [[α, σ], [α', σ']]·[x̂; ε̂] for ε̂ (Cramer's rule, det = ασ' − σα').
    return (c.alpha * pred - c.d_alpha * x_t) / (c.alpha * c.d_sigma - c.sigma * c.d_alpha)


def _x0_of(pred: Tensor, x_t: Tensor, c: Coefficients, frm: Prediction) -> Tensor:
    """x̂ implied by a prediction of kind `frm` at x_t."""
    if frm == "x0":
        return pred
    if frm in ("noise", "score"):
        return (x_t - c.sigma * _noise_of(pred, x_t, c, frm)) / c.alpha
    _require_derivatives(c)
    return (c.d_sigma * x_t - c.sigma * pred) / (c.alpha * c.d_sigma - c.sigma * c.d_alpha)


def _require_derivatives(c: Coefficients) -> None:
    if c.d_alpha is None or c.d_sigma is None:
        raise ValueError("velocity needs dα/dt and dσ/dt of a continuous path; a discrete ᾱ table has none: "
                         "sample velocity models with euler/heun/dopri5/euler_maruyama instead")


def convert_prediction(pred: Tensor, x_t: Tensor, c: Coefficients, frm: Prediction,
                       to: Prediction) -> Tensor:
    """Turn a `frm` prediction into a `to` prediction at x_t, given the coefficients at t."""
    check_choice("frm", frm, Prediction)
    check_choice("to", to, Prediction)
    if frm == to:
        return pred
    if to == "x0":
        return _x0_of(pred, x_t, c, frm)
    eps = _noise_of(pred, x_t, c, frm)
    if to == "noise":
        return eps
    if to == "score":
        return -eps / c.sigma
    _require_derivatives(c)
    return c.d_alpha * _x0_of(pred, x_t, c, frm) + c.d_sigma * eps  # v = α' x̂ + σ' ε̂


@dataclass(frozen=True)
class Interpolant:
    """x_t = α_t·x + σ_t·ε on one path, the training target of one prediction type, and how t is drawn."""

    path: Path = "linear"
    prediction: Prediction = "velocity"
    time_sampling: TimeSampling = "uniform"
    logit_mean: float = 0.0  # logit-normal t (SD3, Esser et al. 2024 §3.1): t = sigmoid(N(mean, std²))
    logit_std: float = 1.0
    t_min: float = 0.0  # training t is drawn in [t_min, t_max]
    t_max: float = 1.0

    def __post_init__(self) -> None:
        check_choice("path", self.path, Path)
        check_choice("prediction", self.prediction, Prediction)
        check_choice("time_sampling", self.time_sampling, TimeSampling)
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        # σ_0 = 0: the score target −ε/σ is infinite at t = 0, and so is the VP paths' velocity (σ' → ∞).
        infinite_at_0 = self.prediction == "score" or (
            self.prediction == "velocity" and self.path in ("vp", "vp_cosine"))
        if infinite_at_0 and self.t_min <= 0.0:
            raise ValueError(f"Interpolant(path={self.path!r}, prediction={self.prediction!r}) has an "
                             "infinite target at t = 0 (σ_0 = 0): set t_min > 0, e.g. 1e-5 (SiT's train_eps)")

    def coefficients(self, t: Tensor, like: Tensor | None = None) -> Coefficients:
        """(α, σ, dα/dt, dσ/dt) at t (B,); with `like` (B, ...) they are shaped (B, 1, …) in its dtype."""
        c = path_coefficients(self.path, t)
        if like is None:
            return c
        shape = (-1,) + (1,) * (like.ndim - 1) if t.ndim == 1 else t.shape
        return Coefficients(*(v.reshape(shape).to(like.dtype) for v in c))

    def x_t(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The interpolant α_t·x + σ_t·ε."""
        c = self.coefficients(t, like=x)
        return c.alpha * x + c.sigma * eps

    def velocity_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """v = d x_t/dt = α'_t·x + σ'_t·ε (linear path: ε − x)."""
        c = self.coefficients(t, like=x)
        return c.d_alpha * x + c.d_sigma * eps

    def target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to output for the configured prediction."""
        if self.prediction == "velocity":
            return self.velocity_target(x, eps, t)
        if self.prediction == "noise":
            return eps
        if self.prediction == "x0":
            return x
        return -eps / self.coefficients(t, like=x).sigma  # score of p(x_t | x) (Vincent 2011)

    def sample_t(self, n: int, device: torch.device | str,
                 generator: torch.Generator | None = None) -> Tensor:
        """n training times in [t_min, t_max], float32, drawn on `device` (the generator must live there)."""
        if self.time_sampling == "uniform":
            u = torch.rand(n, device=device, generator=generator)
        else:
            normal = torch.randn(n, device=device, generator=generator)
            u = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        return self.t_min + (self.t_max - self.t_min) * u  # (n,)

    def t_from_uniform(self, u: Tensor) -> Tensor:
        """Training times from uniform draws u ∈ [0, 1), float32: `sample_t`'s law by its inverse CDF
        (logit-normal: sigmoid(mean + std · Φ⁻¹(u))). For per-sample draws hashed from keys (core/sample_rng.py)."""
        u = u.double()
        if self.time_sampling == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.special.ndtri(u))
        return (self.t_min + (self.t_max - self.t_min) * u).float()  # (n,)

    def loss(self, pred: Tensor, x: Tensor, eps: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-sample MSE to the target, (B,) float32, mean over every non-batch dim (even under bf16).

        `mask` (broadcastable to x, 1 = counts) restricts the mean to real elements, e.g. unpadded frames.
        """
        target = self.target(x.float(), eps.float(), t.float())
        err = (pred.float() - target).square()
        if mask is None:
            return err.flatten(1).mean(dim=1)  # (B,)
        mask = mask.to(err.dtype).expand_as(err)
        return (err * mask).flatten(1).sum(dim=1) / mask.flatten(1).sum(dim=1).clamp_min(1.0)  # (B,)

    def convert(self, pred: Tensor, x_t: Tensor, t: Tensor, to: Prediction,
                frm: Prediction | None = None) -> Tensor:
        """Turn a prediction (default: this interpolant's kind) into `to`; t is clamped by CONVERT_T_EPS."""
        t = t.clamp(CONVERT_T_EPS, 1 - CONVERT_T_EPS)
        return convert_prediction(pred, x_t, self.coefficients(t, like=x_t), frm or self.prediction, to)

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's prediction as a velocity (what the samplers integrate)."""
        return self.convert(pred, x_t, t, to="velocity")


@dataclass(frozen=True)
class DiscreteSchedule:
    """A T-step DDPM table ᾱ_i (i = 0 … T−1, least to most noisy); step i sits at continuous t = (i + 1)/T."""

    kind: DiscreteKind = "cosine"
    num_steps: int = 1000

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, DiscreteKind)
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")

    @property
    def path(self) -> Path:
        """The continuous path this table discretizes (cosine: exactly; linear β: in the T → ∞ limit)."""
        return "vp" if self.kind == "linear_beta" else "vp_cosine"

    def betas(self) -> Tensor:
        """β_i, (T,) float64."""
        steps = self.num_steps
        if self.kind == "linear_beta":
            # Ho et al. 2020: β from 1e-4 to 0.02 over 1000 steps, rescaled for other T (guided-diffusion).
            scale = 1000 / steps
            return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=COSINE_MAX_BETA)  # Nichol & Dhariwal 2021 eq. 17 and §3.2

    def alphas_cumprod(self) -> Tensor:
        """ᾱ_i = Π_{j ≤ i} (1 − β_j), (T,) float64."""
        return torch.cumprod(1 - self.betas(), dim=0)

    def t_of_index(self, index: Tensor) -> Tensor:
        """Continuous time of step index i: t = (i + 1)/T (float64)."""
        return (index.to(torch.float64) + 1) / self.num_steps

    def index_of_t(self, t: Tensor) -> Tensor:
        """Nearest step index of continuous t ∈ (0, 1] (long)."""
        if (t <= 0).any() or (t > 1).any():
            raise ValueError("index_of_t needs t in (0, 1]: step i covers t = (i + 1)/T")
        return (t.to(torch.float64) * self.num_steps).round().long().clamp(1, self.num_steps) - 1
