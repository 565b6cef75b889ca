"""Checks for Chapter 1's exercises (chapters/01-ddpm/exercises.py): DDPM and DDIM by hand, then built along.

Each `check_<name>(fn)` calls a learner's function on several inputs and compares the result with
minidiff's own implementation in `minidiff.process` and with closed-form properties of the maths.
It returns quietly when everything agrees and raises AssertionError otherwise, saying what was
expected, what came back, and giving a hint: the formula lives in the hint, not in the learner's docstring.
A function that still raises NotImplementedError fails with `NotImplementedYet`, a kind of AssertionError.
`run_checks(module)` runs them all. The helpers that call the learner's function and compare tensors are
minidiff.exercises.checking's.

Exercises 7-9 are build-along (`checking.build_along`): after quick unit comparisons, the check puts the learner's
code into a short real run on the digits (minidiff.exercises.buildalong_digits) and holds the result to floors
measured on the reference solutions: the learner's ResidualBlock in every residual slot of the toy U-Net, trained by
minidiff; the toy U-Net trained by the learner's training_step; digits drawn by the learner's ddim_sample, which
calls the learner's ddim_step. Each failure names its stage (build, outputs with minidiff's weights copied in,
training, held-out error, recognizability of the samples).

| exercise                  | paper                                  | minidiff reference                       |
|---------------------------|----------------------------------------|------------------------------------------|
| `q_sample`                | DDPM (arXiv:2006.11239) eq. 4          | `GaussianDiffusion.q_sample`             |
| `posterior_mean_variance` | DDPM eq. 6-7                           | `NoiseSchedule.posterior_*`, `ddpm_step` |
| `v_target`                | Salimans & Ho (arXiv:2202.00512) sec. 4 | `GaussianDiffusion.target` ('v')        |
| `x0_eps_from_v`           | the inverse of the above               | `GaussianDiffusion.predict_x0_eps`       |
| `cosine_betas`            | Improved DDPM (arXiv:2102.09672) eq. 17 | `cosine_betas`, `cosine_alpha_bar`      |
| `ddim_step`               | DDIM (arXiv:2010.02502) eq. 12 and 16  | `ddim_step`, `ddpm_step`                 |
| `ResidualBlock`           | DDPM appendix B                        | `minidiff.blocks.resnet.ResBlock`        |
| `training_step`           | DDPM Algorithm 1, eq. 14               | `GaussianDiffusion.loss`                 |
| `ddim_sample`             | DDIM eq. 12 on a sub-sequence (sec. 4.2) | `minidiff.process.sample` ('ddim')     |

Timesteps follow minidiff's convention: t = 0..T-1, so `alpha_bar[t]` is the paper's alpha-bar_{t+1}.
"""
from __future__ import annotations

import copy
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks.resnet import ResBlock
from minidiff.data.digits import digits_tensors
from minidiff.exercises import buildalong_digits as run
from minidiff.exercises.checking import (Check, NotImplementedYet, build_along, call, command_line, expect_close,
                                         expect_float, expect_floor, expect_pair, preview, replace_modules, report,
                                         snapshot, unmoved_weights)
from minidiff.process import (GaussianDiffusion, NoiseSchedule, cosine_betas, ddim_step, ddpm_step, linear_betas,
                              sample, timesteps)
from minidiff.process.schedules import cosine_alpha_bar


# ---------------------------------------------------------------------------------------------------------
# Helpers: timesteps and alpha-bars as the exercises take them.
# ---------------------------------------------------------------------------------------------------------

def _batch(t: list[int]) -> torch.Tensor:
    return torch.tensor(t, dtype=torch.long)


def _alpha_bar_pair(t: int, t_prev: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-bar of the linear schedule at t and at t_prev as float64 0-d tensors (after the last step,
    t_prev = -1, alpha-bar is 1). Float64, because beta_t = 1 - alpha_bar_t / alpha_bar_prev loses digits in
    float32 for small t; NoiseSchedule keeps only float32 copies, so the product is taken again here."""
    alpha_bar = torch.cumprod(1 - linear_betas(1000), dim=0)                        # (T,) float64
    alpha_bar_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    return alpha_bar[t], alpha_bar_prev


# ---------------------------------------------------------------------------------------------------------
# Exercise 1: the closed-form forward process q(x_t | x0), DDPM eq. 4.
# ---------------------------------------------------------------------------------------------------------

def check_q_sample(fn: Callable) -> None:
    """fn(x0, t, eps, alpha_bar) -> x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps, per sample."""
    schedule = NoiseSchedule.make("linear", 1000)
    diffusion = GaussianDiffusion(schedule)
    alpha_bar = schedule.alpha_bar
    g = torch.Generator().manual_seed(1)
    cases = [((4, 1, 16, 16), [0, 10, 500, 999]),     # a batch of digits, one timestep each
             ((6, 2), [999, 0, 1, 250, 750, 998])]    # a batch of 2D points
    for shape, t_list in cases:
        x0, eps, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g), _batch(t_list)
        where = f"x_t for x0 of shape {shape}, t = {t_list}"
        zeros = torch.zeros(shape)

        expect_close(call(fn, x0, t, zeros, alpha_bar), diffusion.q_sample(x0, t, zeros),
                     f"{where}, eps = 0 (the signal part)",
                     "with eps = 0, x_t is x0 scaled by sqrt(alpha_bar[t]): the square root of alpha-bar, "
                     "gathered per sample and reshaped to (B, 1, ...) so it broadcasts over x0.",
                     mistakes={"scale x0 by alpha_bar[t] instead of its square root":
                               NoiseSchedule.at(alpha_bar, t, x0) * x0,
                               "use alpha_bar[t - 1] (the paper's numbering) instead of alpha_bar[t]":
                               NoiseSchedule.at(alpha_bar.sqrt(), t - 1, x0) * x0})
        expect_close(call(fn, zeros, t, eps, alpha_bar), diffusion.q_sample(zeros, t, eps),
                     f"{where}, x0 = 0 (the noise part)",
                     "with x0 = 0, x_t is eps scaled by sqrt(1 - alpha_bar[t]).",
                     mistakes={"scale eps by 1 - alpha_bar[t] instead of its square root":
                               (1 - NoiseSchedule.at(alpha_bar, t, eps)) * eps})
        expect_close(call(fn, x0, t, eps, alpha_bar), diffusion.q_sample(x0, t, eps), where,
                     "x_t = sqrt(alpha_bar[t]) * x0 + sqrt(1 - alpha_bar[t]) * eps, each sample with its own t.")

    # Variance preservation: the two coefficients satisfy signal^2 + noise^2 = 1 at every t.
    t = _batch([0, 100, 999])
    ones, zeros = torch.ones(3, 1), torch.zeros(3, 1)
    signal, noise = call(fn, ones, t, zeros, alpha_bar), call(fn, zeros, t, ones, alpha_bar)
    expect_close(signal**2 + noise**2, torch.ones(3, 1), "signal coefficient^2 + noise coefficient^2",
                 "the forward process preserves variance: sqrt(alpha_bar)^2 + sqrt(1 - alpha_bar)^2 = 1.")


# ---------------------------------------------------------------------------------------------------------
# Exercise 2: the posterior q(x_{t-1} | x_t, x0), DDPM eq. 6-7.
# ---------------------------------------------------------------------------------------------------------

def check_posterior_mean_variance(fn: Callable) -> None:
    """fn(x0, x_t, alpha_bar_t, alpha_bar_prev) -> (mean, variance) of q(x_{t-1} | x_t, x0)."""
    schedule = NoiseSchedule.make("linear", 1000)
    diffusion = GaussianDiffusion(schedule)
    g = torch.Generator().manual_seed(2)
    shape = (3, 1, 8, 8)
    x0, x_t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    hint_mean = ("mean = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) * x0 "
                 "+ sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) * x_t, with alpha_t = "
                 "alpha_bar_t / alpha_bar_prev and beta_t = 1 - alpha_t.")
    hint_variance = "variance = beta-tilde_t = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t), eq. 7."

    # Neighbouring steps: compare with the tables NoiseSchedule precomputes.
    for t in (0, 1, 500, 999):
        alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(t, t - 1)
        where = f"posterior at t = {t}"
        mean, variance = expect_pair(call(fn, x0, x_t, alpha_bar_t, alpha_bar_prev), where)
        expected_mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x_t
        beta_t = schedule.betas[t]
        expect_close(mean, expected_mean, f"{where}: mean", hint_mean,
                     mistakes={"swap the coefficients of x0 and x_t":
                               schedule.posterior_mean_coef_xt[t] * x0 + schedule.posterior_mean_coef_x0[t] * x_t})
        expected_variance = schedule.posterior_variance[t]
        if torch.is_tensor(variance) and variance.numel() > 1:
            expected_variance = expected_variance.expand_as(variance)
        expect_close(variance, expected_variance, f"{where}: variance", hint_variance, atol=1e-7,
                     mistakes={"return beta_t, the forward step's variance (the posterior's is smaller)":
                               beta_t.expand_as(expected_variance)})

    # A strided pair (t = 999 -> 899), as on a respaced schedule: compare with DDPM's sampling step,
    # fed the eps that makes its estimate of x0 exactly our x0.
    t, t_prev = 999, 899
    alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(t, t_prev)
    eps = (x_t - alpha_bar_t.sqrt() * x0) / (1 - alpha_bar_t).sqrt()
    expected_mean = ddpm_step(diffusion, eps, x_t, t, t_prev, noise=None)
    expected_sigma = ddpm_step(diffusion, eps, x_t, t, t_prev, noise=torch.ones(shape), variance="beta_tilde") \
        - expected_mean
    where = f"posterior between t = {t} and t_prev = {t_prev} (a respaced schedule)"
    mean, variance = expect_pair(call(fn, x0, x_t, alpha_bar_t, alpha_bar_prev), where)
    expect_close(mean, expected_mean, f"{where}: mean",
                 hint_mean + " Compute alpha_t and beta_t from the two alpha-bars, not from a table of betas.")
    variance = variance.reshape(-1)[0] if torch.is_tensor(variance) and variance.numel() > 1 else variance
    expect_close(variance, expected_sigma.reshape(-1)[0] ** 2, f"{where}: variance", hint_variance, atol=1e-6)

    # Closed-form properties, for a mid-range step.
    t = 300
    alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(t, t - 1)
    beta_t = 1 - alpha_bar_t / alpha_bar_prev
    # (a) With no noise in x_t, the posterior mean is x0 scaled for step t-1.
    mean, _ = expect_pair(call(fn, x0, alpha_bar_t.sqrt() * x0, alpha_bar_t, alpha_bar_prev), "posterior")
    expect_close(mean, alpha_bar_prev.sqrt() * x0, "posterior mean when x_t = sqrt(alpha_bar_t) x0 exactly",
                 "the two coefficients must combine to sqrt(alpha_bar_prev): check sqrt(alpha_t), not alpha_t.")
    # (b) Composing q(x_t | x0) with the posterior gives back q(x_{t-1} | x0):
    #     coef_xt^2 (1 - alpha_bar_t) + beta-tilde_t = 1 - alpha_bar_prev.
    one, zero = torch.ones(1), torch.zeros(1)
    coef_xt, variance = expect_pair(call(fn, zero, one, alpha_bar_t, alpha_bar_prev), "posterior")
    expect_close(coef_xt**2 * (1 - alpha_bar_t) + variance, (1 - alpha_bar_prev).reshape(1),
                 "coefficient of x_t squared * (1 - alpha_bar_t) + variance",
                 "noising to step t and then sampling the posterior must give x_{t-1} with variance "
                 "1 - alpha_bar_prev; recheck both the x_t coefficient and beta-tilde.")
    if not bool((variance >= 0).all() and (variance <= beta_t + 1e-7).all()):
        raise AssertionError(f"posterior variance at t = {t}: expected a value in [0, beta_t = {beta_t.item():.6g}], "
                             f"got {preview(torch.as_tensor(variance))}.\n  Hint: {hint_variance}")


# ---------------------------------------------------------------------------------------------------------
# Exercises 3 and 4: the v target and back (Salimans & Ho 2022, section 4).
# ---------------------------------------------------------------------------------------------------------

def _v_setup(seed: int):
    """(diffusion, x0, eps, t, alpha_bar_t broadcastable against x0) on both schedules."""
    g = torch.Generator().manual_seed(seed)
    for name in ("linear", "cosine"):
        diffusion = GaussianDiffusion(NoiseSchedule.make(name, 1000), prediction="v")
        x0, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
        t = _batch([0, 250, 600, 999])
        yield name, diffusion, x0, eps, t, NoiseSchedule.at(diffusion.schedule.alpha_bar, t, x0)


def check_v_target(fn: Callable) -> None:
    """fn(x0, eps, alpha_bar_t) -> v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0."""
    for name, diffusion, x0, eps, t, alpha_bar_t in _v_setup(seed=3):
        where = f"v on the {name} schedule, t = {t.tolist()}"
        v = call(fn, x0, eps, alpha_bar_t)
        a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
        expect_close(v, diffusion.target(x0, t, eps), where,
                     "v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0: the velocity of x_t along the "
                     "circle x_t = cos(phi) x0 + sin(phi) eps.",
                     mistakes={"flip the sign of v": s * x0 - a * eps,
                               "swap the roles of x0 and eps": a * x0 - s * eps})
        # (x_t, v) is a rotation of (x0, eps), so it keeps their squared length, element by element.
        x_t = diffusion.q_sample(x0, t, eps)
        expect_close(x_t**2 + v**2, x0**2 + eps**2, f"{where}: x_t^2 + v^2",
                     "x_t and v are (x0, eps) rotated by the same angle, so x_t^2 + v^2 = x0^2 + eps^2.")


def check_x0_eps_from_v(fn: Callable) -> None:
    """fn(v, x_t, alpha_bar_t) -> (x0_hat, eps_hat): undo the rotation that made (x_t, v) from (x0, eps)."""
    hint = ("x_t and v are (x0, eps) rotated by phi, where cos(phi) = sqrt(alpha_bar_t) and "
            "sin(phi) = sqrt(1 - alpha_bar_t); rotate back (the inverse of a rotation is its transpose).")
    for name, diffusion, x0, eps, t, alpha_bar_t in _v_setup(seed=4):
        where = f"x0 and eps from v on the {name} schedule, t = {t.tolist()}"
        # Round trip: a perfect v recovers the x0 and eps that made x_t.
        x_t, v = diffusion.q_sample(x0, t, eps), diffusion.target(x0, t, eps)
        x0_hat, eps_hat = expect_pair(call(fn, v, x_t, alpha_bar_t), where)
        expect_close(x0_hat, x0, f"{where}: x0_hat from a perfect v", hint)
        expect_close(eps_hat, eps, f"{where}: eps_hat from a perfect v", hint)
        # Any v (a network's imperfect guess): compare with minidiff's conversion.
        v_guess = v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
        expected_x0, expected_eps = diffusion.predict_x0_eps(v_guess, x_t, t)
        x0_hat, eps_hat = expect_pair(call(fn, v_guess, x_t, alpha_bar_t), where)
        expect_close(x0_hat, expected_x0, f"{where}: x0_hat from an imperfect v", hint)
        expect_close(eps_hat, expected_eps, f"{where}: eps_hat from an imperfect v", hint)


# ---------------------------------------------------------------------------------------------------------
# Exercise 5: the cosine schedule, Improved DDPM eq. 17, with beta capped at 0.999.
# ---------------------------------------------------------------------------------------------------------

def check_cosine_betas(fn: Callable) -> None:
    """fn(num_steps, s=0.008, max_beta=0.999) -> betas of shape (num_steps,)."""
    hint = ("alpha_bar(t) = f(t/T) / f(0) with f(u) = cos^2((u + s) / (1 + s) * pi / 2) for t = 0..T (T + 1 "
            "values); beta_i = 1 - alpha_bar(i+1) / alpha_bar(i) for i = 0..T-1; then cap at max_beta.")
    for num_steps, kwargs in ((1000, {}), (50, {}), (20, {"s": 0.02}), (1000, {"max_beta": 0.5})):
        where = f"cosine_betas({num_steps}{''.join(f', {k}={v}' for k, v in kwargs.items())})"
        betas = call(fn, num_steps, **kwargs)
        if torch.is_tensor(betas) and betas.dtype != torch.float64:
            raise AssertionError(f"{where}: expected a float64 tensor, got {betas.dtype}.\n  Hint: compute the "
                                 f"schedule in float64 (torch.float64) and cast later: in float32, "
                                 f"1 - alpha_bar(i+1) / alpha_bar(i) keeps only about 3 significant digits "
                                 f"for the first steps.")
        s = kwargs.get("s", 0.008)
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        uncapped = 1 - cosine_alpha_bar(u[1:], s) / cosine_alpha_bar(u[:-1], s)
        expect_close(betas, cosine_betas(num_steps, **kwargs), where, hint, rtol=1e-6, atol=1e-9,
                     mistakes={"forget the cap at max_beta (the last beta is then 1: all signal gone in one step)":
                               uncapped})

    # Closed form: away from the cap, alpha_bar = cumprod(1 - beta) equals f(t/T) / f(0).
    betas = call(fn, 1000)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    u = torch.arange(1, 1001, dtype=torch.float64) / 1000
    closed_form = cosine_alpha_bar(u) / cosine_alpha_bar(torch.zeros(1, dtype=torch.float64))
    expect_close(alpha_bar[:-1], closed_form[:-1], "cumprod(1 - betas) against f(t/T) / f(0)", hint, rtol=1e-6)
    # Golden values measured with diffusers' squaredcos_cap_v2 schedule (float32).
    expect_close(betas[0].reshape(1), torch.tensor([4.12842e-05], dtype=torch.float64), "beta at t = 0",
                 hint, rtol=1e-4, atol=0)
    expect_close(alpha_bar[499].reshape(1), torch.tensor([0.493843], dtype=torch.float64), "alpha_bar at t = 499",
                 hint, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Exercise 6: one DDIM step, DDIM eq. 12 with sigma from eq. 16.
# ---------------------------------------------------------------------------------------------------------

def check_ddim_step(fn: Callable) -> None:
    """fn(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None) -> x_prev."""
    schedule = NoiseSchedule.make("linear", 1000)
    diffusion = GaussianDiffusion(schedule)
    g = torch.Generator().manual_seed(6)
    shape = (3, 1, 8, 8)
    hint = ("x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t); "
            "x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma noise.")
    hint_sigma = ("sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) "
                  "* sqrt(1 - alpha_bar_t / alpha_bar_prev) (eq. 16); the noise is added only when eta > 0.")
    # Pairs from a 10-step respaced schedule, the last one ending at alpha-bar = 1, and one neighbouring pair.
    for t, t_prev in ((999, 899), (499, 399), (99, -1), (500, 499)):
        alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(t, t_prev)
        x0, eps, noise = (torch.randn(shape, generator=g) for _ in range(3))
        t_batch = torch.full((shape[0],), t)
        x_t = diffusion.q_sample(x0, t_batch, eps)
        eps_hat = eps + 0.3 * torch.randn(shape, generator=g)  # an imperfect network
        where = f"DDIM step t = {t} -> t_prev = {t_prev}"

        # (a) With the true eps, deterministic DDIM lands exactly on q(x_{t_prev} | x0) with the same eps.
        on_path = x0 if t_prev < 0 else diffusion.q_sample(x0, torch.full((shape[0],), t_prev), eps)
        expect_close(call(fn, x_t, eps, alpha_bar_t, alpha_bar_prev, 0.0, None), on_path,
                     f"{where}, eta = 0, eps_hat = the true eps", hint, rtol=1e-4, atol=1e-4,
                     mistakes={"flip the sign inside x0_hat: (x_t + sqrt(1 - alpha_bar_t) eps_hat)":
                               alpha_bar_prev.sqrt() * (x_t + (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()
                               + (1 - alpha_bar_prev).sqrt() * eps})

        # (b) eta = 0 against minidiff's sampler; the noise must not matter.
        expected = ddim_step(diffusion, eps_hat, x_t, t, t_prev, None, eta=0.0)
        expect_close(call(fn, x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None), expected,
                     f"{where}, eta = 0", hint, atol=1e-4)
        expect_close(call(fn, x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, noise), expected,
                     f"{where}, eta = 0 with a noise tensor passed in",
                     "eta = 0 makes sigma = 0: DDIM is deterministic and the noise must not change x_prev.",
                     atol=1e-4)

        # (c) eta = 1 is DDPM's ancestral step with the posterior variance beta-tilde (DDIM, after eq. 12).
        got = call(fn, x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 1.0, noise)
        expect_close(got, ddim_step(diffusion, eps_hat, x_t, t, t_prev, noise, eta=1.0),
                     f"{where}, eta = 1", hint_sigma, atol=1e-4,
                     mistakes={"ignore eta (always deterministic)": expected})
        expect_close(got, ddpm_step(diffusion, eps_hat, x_t, t, t_prev, noise, variance="beta_tilde"),
                     f"{where}, eta = 1 against DDPM's ancestral step with variance beta-tilde", hint_sigma,
                     atol=1e-4)

        # (d) Something in between.
        expect_close(call(fn, x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.5, noise),
                     ddim_step(diffusion, eps_hat, x_t, t, t_prev, noise, eta=0.5),
                     f"{where}, eta = 0.5", hint_sigma, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Build-along exercises 7-9: the learner's block, training step and sampler in a real run on the digits.
# ---------------------------------------------------------------------------------------------------------

# Floors, measured on minidiff.exercises.buildalong_digits' run (300 steps; 256 samples, DDIM 20 steps with x0_hat
# clipped): minidiff's training with seeds 0-2 and the reference solutions of exercises 7 and 8 ("reference"),
# untrained networks (seeds 0-2), and the broken block and step of tests/exercise_cases_ch01.py (seeds 0-2):
#
#   held-out denoising error  reference 0.108-0.115 | residual branch detached 0.195-0.217 | reseeded step 0.55-0.60
#                             | untrained 1.06-1.09
#   recognizability           reference 0.30-0.36   | detached 0.26 | reseeded 0.13 | untrained 0.11-0.15
#   coverage                  reference 0.835-0.89  | detached 0.21 | reseeded 0.43 | untrained 0.32-0.35
#
# Recognizability alone is a weak judge this early: unclipped, the samples of an untrained network score up to 0.25
# and those of the broken ones up to 0.52. The held-out error is the precise measure; the sample floors sit between
# the untrained and the reference numbers, the recognizability floor nearer the untrained side (256 samples leave
# it a standard error of about 0.03).
LOSS_FALL = 0.5                 # the mean loss of the last 50 steps must be below this share of the first 20's
HELDOUT_CEILING = 0.15          # the trained U-Net's denoising error (eps MSE) on the held-out test digits
RECOGNIZABILITY_FLOOR = 0.2     # share of samples the digit classifier labels confidently (real digits: 0.95)
COVERAGE_FLOOR = 0.6            # entropy of the samples' label histogram / log(10) (real digits: about 1)
SAMPLER_SLACK = 0.05            # exercise 9: recognizability at most this far below minidiff's sampler's, same noise

HINT_BLOCK = ("the block computes h = conv1(SiLU(norm1(x))); h = h + time_emb_proj(SiLU(temb))[:, :, None, None] "
              "(the (B, C_out) projection broadcast over H and W); h = conv2(SiLU(norm2(h))); and returns x + h, or "
              "conv_shortcut(x) + h when C_in != C_out (DDPM appendix B).")
HINT_STEP = ("t = torch.randint(0, T, (B,)); eps = torch.randn_like(x0); x_t = q_sample(x0, t, eps, alpha_bar) = "
             "sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps; loss = ((model(x_t, t) - eps) ** 2).mean(); "
             "optimizer.zero_grad(); loss.backward(); optimizer.step(); return loss.item().")
HINT_SAMPLE = ("for i, t in enumerate(timesteps): alpha_bar_prev = alpha_bar[timesteps[i + 1]] if there is a next "
               "timestep, else 1.0; eps_hat = model(x, torch.full((B,), t)); x = ddim_step(x, eps_hat, alpha_bar[t], "
               "alpha_bar_prev); all under torch.no_grad(). ddim_step with eta = 0: x0_hat = (x_t - sqrt(1 - "
               "alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - "
               "alpha_bar_prev) eps_hat.")

_trained: dict[str, tuple[nn.Module, str]] = {}   # the U-Net exercise 9 samples from, trained once per process


def say(message: str) -> None:
    """Progress of a build-along run, printed as it happens (a run takes seconds to a minute)."""
    print(message, flush=True)


def _dependency_note(fn: Callable, name: str, check: Check, exercise: str) -> str:
    """A line for a failure message when the learner's `fn` calls their own `name` (found in its module) and that
    does not pass its own check: the bug may be there."""
    dependency = getattr(fn, "__globals__", {}).get(name)
    code = getattr(fn, "__code__", None)
    if not callable(dependency) or code is None or name not in code.co_names:
        return ""
    try:
        check(dependency)
    except AssertionError as e:
        return (f"Your {fn.__name__} calls your {name}, which does not pass {exercise} yet: fix that first "
                f"({str(e).splitlines()[0]})\n")
    return ""


def _expect_floor(value: float, floor: float, what: str, hint: str, diagnosis: str = "",
                  higher_is_better: bool = True) -> None:
    """checking.expect_floor, with what the run showed (`diagnosis`, whole lines) between the numbers and the hint."""
    try:
        expect_floor(value, floor, what, hint, higher_is_better)
    except AssertionError as e:
        first, _, rest = str(e).partition("\n")
        raise AssertionError(f"{first}\n{diagnosis}{rest}") from None


def _quality_checks(model: nn.Module, losses: list[float], what: str, hint: str, diagnosis: str = "") -> dict:
    """The floors every trained U-Net must clear: the loss fell, the held-out denoising error is low, the samples
    are recognizable. Returns the samples' digit_metrics."""
    first, last = sum(losses[:20]) / 20, sum(losses[-50:]) / 50
    if last > LOSS_FALL * first:
        raise AssertionError(f"training {what}: the loss did not fall: {first:.4f} over the first 20 steps, "
                             f"{last:.4f} over the last 50 (a working implementation ends below {LOSS_FALL:g} "
                             f"times the start).\n{diagnosis}  Hint: {hint}")
    error = run.heldout_error(model)
    say(f"    denoising error on held-out digits: {error:.4f} (must be at most {HELDOUT_CEILING:g})")
    _expect_floor(error, HELDOUT_CEILING, f"training {what}: the denoising error on held-out digits", hint,
                  diagnosis, higher_is_better=False)
    samples = run.reference_samples(model, run.initial_noise())
    metrics = run.judge(samples)
    say(f"    {len(samples)} samples: recognizability {metrics['recognizability']:.3f} (real digits "
        f"{metrics['real_recognizability']:.3f}, floor {RECOGNIZABILITY_FLOOR:g}), coverage {metrics['coverage']:.3f} "
        f"(floor {COVERAGE_FLOOR:g})")
    drawn = f"sampling {what}: {len(samples)} digits drawn with DDIM ({run.SAMPLE_STEPS} steps, x0 clipped)"
    _expect_floor(metrics["recognizability"], RECOGNIZABILITY_FLOOR, f"{drawn}: recognizability", hint, diagnosis)
    _expect_floor(metrics["coverage"], COVERAGE_FLOOR, f"{drawn}: coverage of the ten digits", hint, diagnosis)
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Exercise 7: the residual block, inside the toy U-Net.
# ---------------------------------------------------------------------------------------------------------

def _reference_block(in_channels: int, out_channels: int, seed: int) -> ResBlock:
    """minidiff's block with seeded weights, its GroupNorm scales and shifts moved away from 1 and 0 so that a
    missing or misplaced normalisation shows."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        block = ResBlock(in_channels, out_channels, 64, groups=8, eps=1e-6)
        with torch.no_grad():
            for norm in (block.norm1, block.norm2):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return block.eval()


def _block_mistakes(b: ResBlock, x: torch.Tensor, temb: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the block gives for some likely mistakes, computed with the reference block's layers."""
    with torch.no_grad():
        time = b.time_emb_proj(F.silu(temb))[:, :, None, None]                     # (B, C_out, 1, 1)
        h1 = b.conv1(F.silu(b.norm1(x)))                                           # (B, C_out, H, W)
        skip = x if b.conv_shortcut is None else b.conv_shortcut(x)
        branch = lambda h: b.conv2(F.silu(b.norm2(h)))                              # noqa: E731
        return {"leave out the timestep embedding": skip + branch(h1),
                "project temb without the SiLU before time_emb_proj":
                    skip + branch(h1 + b.time_emb_proj(temb)[:, :, None, None]),
                "add the timestep embedding after norm2 instead of before it":
                    skip + b.conv2(F.silu(b.norm2(h1) + time)),
                "leave out the skip connection (return only the residual branch)": branch(h1 + time)}


def _frozen_report(model: nn.Module, kind: type, before: dict[str, torch.Tensor]) -> str:
    """Which parameters of the learner's blocks training left unchanged, e.g. "conv1.weight, conv1.bias (all 11 of 11 blocks)"."""
    unmoved = unmoved_weights(model, kind, before)                  # {block: its parameters that did not move}
    if not unmoved:
        return ""
    blocks = sum(1 for m in model.modules() if isinstance(m, kind))
    frozen: dict[str, int] = {}
    for names in unmoved.values():
        for name in names:
            frozen[name] = frozen.get(name, 0) + 1
    listed = "; ".join(f"{', '.join(n for n, c in frozen.items() if c == count)} "
                       f"({'all ' if count == blocks else ''}{count} of {blocks} blocks)"
                       for count in sorted(set(frozen.values()), reverse=True))
    return (f"  Training did not change these parameters of your blocks: {listed}. No gradient reaches them: "
            f"look for .detach(), torch.no_grad() or .data in forward.\n")


@build_along
def check_ResidualBlock(cls: Callable) -> None:
    """cls(in_channels, out_channels, temb_dim, groups=8, eps=1e-6): forward(x, temb) -> (B, C_out, H, W);
    then every ResBlock of UNet(UNetConfig.toy()) replaced by it and trained on the digits."""
    g = torch.Generator().manual_seed(7)
    # Stages 1 and 2, for a block that changes the channels (1x1 shortcut) and one that keeps them (identity).
    for seed, (in_channels, out_channels) in enumerate(((16, 32), (32, 32))):
        where = f"ResidualBlock({in_channels}, {out_channels}, temb_dim=64, groups=8)"
        block = call(cls, in_channels, out_channels, 64, 8, 1e-6,
                     hint="build every layer in __init__ (after super().__init__()).")
        if not isinstance(block, nn.Module):
            raise AssertionError(f"build: {where} is a {type(block).__name__}, not an nn.Module.\n"
                                 f"  Hint: subclass torch.nn.Module and call super().__init__() first.")
        if any(isinstance(m, ResBlock) for m in block.modules()):
            raise AssertionError(f"build: {where} uses minidiff's ResBlock.\n  Hint: build the block from torch.nn "
                                 f"layers (GroupNorm, Conv2d, Linear); the check compares it with ResBlock.")
        reference = _reference_block(in_channels, out_channels, seed)
        expected = {name: tuple(v.shape) for name, v in reference.state_dict().items()}
        got = {name: tuple(v.shape) for name, v in block.state_dict().items()}
        if got != expected:
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            reshaped = [f"{n} {got[n]} (expected {expected[n]})"
                        for n in expected if n in got and got[n] != expected[n]]
            details = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                  f"unexpected {', '.join(extra)}" if extra else "",
                                                  f"wrong shape: {', '.join(reshaped)}" if reshaped else "") if part)
            raise AssertionError(f"build: {where} has the wrong parameters: {details}.\n"
                                 f"  Hint: name the layers norm1, conv1, time_emb_proj, norm2, conv2 and "
                                 f"conv_shortcut, with the sizes in the docstring; conv_shortcut is a 1x1 Conv2d "
                                 f"only when in_channels != out_channels, and None (no parameters) otherwise.")
        block.load_state_dict(reference.state_dict())
        block.eval()
        x, temb = torch.randn(2, in_channels, 8, 8, generator=g), torch.randn(2, 64, generator=g)
        with torch.no_grad():
            out = call(block.forward, x, temb, hint="the shapes of every step are in the docstring.")
            expected_out = reference(x, temb)
        expect_close(out, expected_out, f"outputs with minidiff's weights copied in: {where} on x (2, "
                     f"{in_channels}, 8, 8), temb (2, 64)", HINT_BLOCK, rtol=1e-4, atol=1e-4,
                     mistakes=_block_mistakes(reference, x, temb))

    # Stages 3-5: the learner's block in every residual slot of the toy U-Net, trained by minidiff.
    def make(old: ResBlock) -> nn.Module:
        return call(cls, old.conv1.in_channels, old.conv1.out_channels, old.time_emb_proj.in_features,
                    old.norm1.num_groups, old.norm1.eps)

    with torch.random.fork_rng():
        model = run.toy_unet(run.SEED)
        count = replace_modules(model, ResBlock, make)
        before = snapshot(model)
        say(f"  training the toy U-Net with your ResidualBlock in its {count} residual blocks: "
            f"{run.TRAIN_STEPS} steps at batch {run.BATCH_SIZE} ...")
        step = run.reference_step(run.digits_diffusion(), torch.Generator().manual_seed(run.SEED))
        try:
            losses = run.train_toy_unet(model, step, say=say)
        except run.TrainingFailed as e:
            raise AssertionError(f"training the toy U-Net with your ResidualBlock: {e}.\n  Hint: {HINT_BLOCK}") from e
        _quality_checks(model, losses, "the toy U-Net with your ResidualBlock", HINT_BLOCK,
                        diagnosis=_frozen_report(model, cls, before))


# ---------------------------------------------------------------------------------------------------------
# Exercise 8: the training step, training the toy U-Net.
# ---------------------------------------------------------------------------------------------------------

class _SpyNet(nn.Module):
    """A tiny stand-in for the U-Net that remembers every (x_t, t) it is called with:
    (B, 1, H, W), (B,) -> (B, 1, H, W)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x_t.detach().clone(), t.detach().clone() if torch.is_tensor(t) else t))
        scale = 1 + torch.as_tensor(t, dtype=x_t.dtype).reshape(-1, 1, 1, 1) / 1000
        return self.conv(x_t) * scale


class _TimestepLog(nn.Module):
    """Wraps the U-Net during a learner's training run and remembers the timesteps of every call (for diagnoses)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(torch.as_tensor(t).detach().reshape(-1).clone())
        return self.model(x_t, t)


def _timestep_diagnosis(log: list[torch.Tensor], T: int) -> str:
    if len(log) < 2:
        return ""
    notes = []
    if all(torch.equal(t, log[0]) for t in log[1:]):
        notes.append("every step drew the same timesteps (and, most likely, the same noise): do not seed the "
                     "random generator inside training_step, the check seeds it once")
    seen = torch.cat(log)
    if seen.min() > T // 10 or seen.max() < T - 1 - T // 10:
        notes.append(f"the timesteps covered only {int(seen.min())}..{int(seen.max())} of 0..{T - 1}")
    return "".join(f"  Your run: {note}.\n" for note in notes)


def _recompute(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
    """(loss, gradients) of L_simple for the model as it was before the step, on the inputs it was given."""
    loss = ((model(x_t, t) - target) ** 2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.item(), [g.detach() for g in grads]


def _step_units(fn: Callable) -> None:
    """One and then a second call on a tiny model: timesteps, noising, loss value and parameter update."""
    images, _ = digits_tensors("test", run.IMAGE_SIZE)
    x0 = images[:64]                                                          # (64, 1, 16, 16)
    alpha_bar = run.digits_diffusion().schedule.alpha_bar                     # (T,)
    T, B = len(alpha_bar), len(x0)
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = _SpyNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        grads_before: list[torch.Tensor] | None = None
        for call_number in (1, 2):
            where = f"training_step call {call_number} on a tiny model, x0 (64, 1, 16, 16), alpha_bar ({T},)"
            before = copy.deepcopy(model)
            before.calls = []
            model.calls.clear()
            loss = call(fn, model, optimizer, x0, alpha_bar, hint=HINT_STEP)
            if len(model.calls) != 1:
                raise AssertionError(f"{where}: the model was called {len(model.calls)} times, expected once.\n"
                                     f"  Hint: call model(x_t, t) once, on the whole batch. {HINT_STEP}")
            x_t, t = model.calls[0]
            if not torch.is_tensor(t) or tuple(t.shape) != (B,) or t.is_floating_point():
                got = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if torch.is_tensor(t) else repr(t)
                raise AssertionError(f"{where}: the model got t = {got}, expected a (64,) integer tensor.\n"
                                     f"  Hint: one integer timestep per sample: torch.randint(0, T, (B,)), T = "
                                     f"len(alpha_bar); not t / T.")
            if int(t.min()) < 0 or int(t.max()) >= T or len(set(t.tolist())) == 1:
                raise AssertionError(f"{where}: the timesteps were {t[:8].tolist()}... (min {int(t.min())}, max "
                                     f"{int(t.max())}), expected one per sample, drawn uniformly from 0..{T - 1}.\n"
                                     f"  Hint: torch.randint(0, T, (B,)) draws B timesteps in 0..T-1.")
            if x_t.shape != x0.shape:
                raise AssertionError(f"{where}: the model got x_t of shape {tuple(x_t.shape)}, expected the shape "
                                     f"of x0, {tuple(x0.shape)}.\n  Hint: {HINT_STEP}")
            # The eps that made x_t, recovered from it: standard normal if x_t came from q_sample.
            a = alpha_bar[t].reshape(-1, 1, 1, 1)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()                       # (B, 1, 16, 16)
            mean, std = eps.mean().item(), eps.std().item()
            if abs(mean) > 0.05 or abs(std - 1) > 0.05 or not torch.isfinite(eps).all():
                raise AssertionError(f"{where}: x_t is not x0 noised as in exercise 1: the noise that makes "
                                     f"q_sample(x0, t, eps) equal to x_t has mean {mean:.3g} and standard deviation "
                                     f"{std:.3g}, expected a standard normal sample (0 and 1).\n"
                                     f"{_dependency_note(fn, 'q_sample', check_q_sample, 'exercise 1')}"
                                     f"  Hint: {HINT_STEP}")
            expected_loss, grads = _recompute(before, x_t, t, eps)
            if torch.is_tensor(loss):
                raise AssertionError(f"{where}: returned a tensor, expected a Python float.\n  Hint: return "
                                     f"loss.item(): a float, which does not keep the computation graph alive.")
            with torch.no_grad():
                out = before(x_t, t)
            expect_float(loss, expected_loss, f"{where}: the returned loss", HINT_STEP, rtol=2e-3, atol=1e-6,
                         mistakes={"compare the prediction with x0 instead of eps": F.mse_loss(out, x0).item(),
                                   "compare the prediction with x_t instead of eps": F.mse_loss(out, x_t).item(),
                                   "sum the squared errors instead of averaging them":
                                       ((out - eps) ** 2).sum().item()})
            # With SGD (lr 0.1, no momentum) the update is -0.1 times the gradient of this step's loss.
            update = [p.detach() - q.detach() for p, q in zip(model.parameters(), before.parameters())]
            if all(bool((u == 0).all()) for u in update):
                raise AssertionError(f"{where}: the parameters did not change.\n  Hint: after loss.backward(), "
                                     f"call optimizer.step().")
            expected_update = torch.cat([-0.1 * g.reshape(-1) for g in grads])
            mistakes = {}
            if grads_before is not None:
                mistakes["keep the previous step's gradients (no optimizer.zero_grad())"] = torch.cat(
                    [-0.1 * (g + h).reshape(-1) for g, h in zip(grads, grads_before)])
            expect_close(torch.cat([u.reshape(-1) for u in update]), expected_update,
                         f"{where}: the parameter update (SGD, lr 0.1)",
                         "the update must be -lr times the gradient of this step's loss: optimizer.zero_grad(), "
                         "then loss.backward(), then optimizer.step().", rtol=2e-3, atol=1e-6, mistakes=mistakes)
            grads_before = grads


@build_along
def check_training_step(fn: Callable) -> None:
    """fn(model, optimizer, x0, alpha_bar) -> loss (float), one step of DDPM Algorithm 1; then the toy U-Net
    trained on the digits with it."""
    _step_units(fn)
    with torch.random.fork_rng():
        model = run.toy_unet(run.SEED)
        log = _TimestepLog(model)
        say(f"  training the toy U-Net with your training_step: {run.TRAIN_STEPS} steps at batch "
            f"{run.BATCH_SIZE} ...")
        try:
            losses = run.train_toy_unet(log, fn, say=say)
        except run.TrainingFailed as e:
            raise AssertionError(f"training the toy U-Net with your training_step: {e}.\n  Hint: {HINT_STEP}") from e
        diagnosis = _timestep_diagnosis(log.timesteps, run.digits_diffusion().num_steps)
        _quality_checks(model, losses, "the toy U-Net with your training_step", HINT_STEP, diagnosis)
    _trained["model"] = (model, "the toy U-Net your training_step trained")


# ---------------------------------------------------------------------------------------------------------
# Exercise 9: the DDIM sampling loop around the learner's ddim_step.
# ---------------------------------------------------------------------------------------------------------

class _SpyEps(nn.Module):
    """A stand-in noise predictor that remembers every t it is called with: (B, C, H, W), (B,) -> (B, C, H, W).

    It predicts the eps for which x0_hat is 0.8 tanh(x): bounded samples at every step, as from a real denoiser."""

    def __init__(self, alpha_bar: torch.Tensor):
        super().__init__()
        self.alpha_bar = alpha_bar
        self.weight = nn.Parameter(torch.tensor(0.8))
        self.calls: list = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.detach().clone() if torch.is_tensor(t) else t)
        a = self.alpha_bar[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1)       # (B or 1, 1, 1, 1)
        return (x - a.sqrt() * self.weight * torch.tanh(x)) / (1 - a).sqrt()


def _sample_mistakes(model: nn.Module, x_T: torch.Tensor, alpha_bar: torch.Tensor, ts: list[int]):
    """What the loop gives for likely mistakes: no final step to alpha-bar = 1; alpha_bar[t - 1] as alpha_bar_prev."""
    def loop(prev):
        x = x_T
        with torch.no_grad():
            for i, t in enumerate(ts):
                a_t, a_prev = alpha_bar[t], prev(i, t)
                eps_hat = model(x, torch.full((len(x),), t, dtype=torch.long))
                x = (a_prev.sqrt() * (x - (1 - a_t).sqrt() * eps_hat) / a_t.sqrt() + (1 - a_prev).sqrt() * eps_hat
                     if a_prev is not None else x)
        return x
    return {"stop at the last timestep of the list instead of stepping on to alpha-bar = 1":
                loop(lambda i, t: alpha_bar[ts[i + 1]] if i + 1 < len(ts) else None),
            "use alpha_bar[t - 1], the neighbouring timestep, instead of the next timestep in the list":
                loop(lambda i, t: alpha_bar[t - 1] if t > 0 else torch.tensor(1.0))}


def _sample_units(fn: Callable) -> None:
    alpha_bar = run.digits_diffusion().schedule.alpha_bar
    diffusion = run.digits_diffusion()
    g = torch.Generator().manual_seed(9)
    for K in (5, 1):
        ts = timesteps(len(alpha_bar), K)
        model = _SpyEps(alpha_bar)
        x_T = torch.randn(3, 1, 8, 8, generator=g)
        where = f"ddim_sample on a stand-in network, x_T (3, 1, 8, 8), timesteps {ts}"
        got = call(fn, model, x_T.clone(), alpha_bar, ts, hint=HINT_SAMPLE)
        seen = [int(t[0]) if torch.is_tensor(t) and t.ndim == 1 and len(t) == 3 and not t.is_floating_point()
                else None for t in model.calls]
        if seen == ts[:-1]:
            raise AssertionError(f"{where}: the network was called {len(seen)} times, at {seen}: the last "
                                 f"timestep, {ts[-1]}, was skipped.\n  Hint: visit every timestep in the list, "
                                 f"including the last, and from it step on to alpha-bar = 1 (clean data). "
                                 f"{HINT_SAMPLE}")
        if seen != ts:
            shown = [f"a {t.dtype} tensor of shape {tuple(t.shape)}" if torch.is_tensor(t) and seen[i] is None
                     else (repr(t) if seen[i] is None else str(seen[i])) for i, t in enumerate(model.calls)]
            raise AssertionError(f"{where}: the network was called with t = [{', '.join(shown)}], expected {ts}, "
                                 f"each as a (3,) long tensor.\n  Hint: call the network once per timestep, in "
                                 f"the order given, with torch.full((B,), t, dtype=torch.long).")
        model.calls.clear()
        expected = sample(model, diffusion, tuple(x_T.shape), "ddim", K, eta=0.0, initial_noise=x_T)
        expect_close(got, expected, where, HINT_SAMPLE, rtol=1e-4, atol=1e-4,
                     mistakes=_sample_mistakes(model, x_T, alpha_bar, ts))
        if got.requires_grad:
            raise AssertionError(f"{where}: the samples carry a computation graph (requires_grad=True).\n  Hint: run "
                                 f"the loop under torch.no_grad() (or decorate ddim_sample with it): sampling "
                                 f"needs no gradients, and keeping them costs memory at every step.")


def _model_to_sample() -> tuple[nn.Module, str]:
    """The U-Net trained by the learner's training_step if that passed in this process; else one trained by
    minidiff (once per process)."""
    if "model" not in _trained:
        say(f"  training the toy U-Net with minidiff's training step first (exercise 8 does not pass yet in this "
            f"run): {run.TRAIN_STEPS} steps at batch {run.BATCH_SIZE} ...")
        with torch.random.fork_rng():
            model = run.toy_unet(run.SEED)
            run.train_toy_unet(model, run.reference_step(run.digits_diffusion(),
                                                         torch.Generator().manual_seed(run.SEED)), say=say)
        _trained["model"] = (model, "the toy U-Net minidiff trained")
    return _trained["model"]


@build_along
def check_ddim_sample(fn: Callable) -> None:
    """fn(model, x_T, alpha_bar, timesteps) -> x0: deterministic DDIM with the learner's ddim_step; then digits
    drawn from the trained toy U-Net with it."""
    try:
        _sample_units(fn)
    except NotImplementedYet:
        raise
    except AssertionError as e:
        raise AssertionError(_dependency_note(fn, "ddim_step", check_ddim_step, "exercise 6") + str(e)) from None
    model, source = _model_to_sample()
    model.eval()
    alpha_bar = run.digits_diffusion().schedule.alpha_bar
    x_T = run.initial_noise()
    say(f"  sampling {len(x_T)} digits with your ddim_sample ({run.SAMPLE_STEPS} steps) from {source} ...")
    samples = call(fn, model, x_T.clone(), alpha_bar, run.sampling_timesteps(), hint=HINT_SAMPLE)
    reference = run.reference_samples(model, x_T, clip_x0=False)
    where = f"sampling: {len(x_T)} digits from {source}"
    expect_close(samples, reference, f"{where}, against minidiff's DDIM sampler from the same noise", HINT_SAMPLE,
                 rtol=1e-3, atol=1e-3)
    metrics, expected = run.judge(samples), run.judge(reference)
    say(f"    recognizability of your samples: {metrics['recognizability']:.3f} (minidiff's sampler: "
        f"{expected['recognizability']:.3f}; real digits {metrics['real_recognizability']:.3f})")
    expect_floor(metrics["recognizability"], expected["recognizability"] - SAMPLER_SLACK,
                 f"{where}: the recognizability of your samples",
                 "your samples should be as recognizable as minidiff's sampler's from the same network and noise. "
                 + HINT_SAMPLE)


# ---------------------------------------------------------------------------------------------------------
# Running every check.
# ---------------------------------------------------------------------------------------------------------

TITLE = "Chapter 1 exercises"
CHECKS: dict[str, Check] = {
    "q_sample": check_q_sample,
    "posterior_mean_variance": check_posterior_mean_variance,
    "v_target": check_v_target,
    "x0_eps_from_v": check_x0_eps_from_v,
    "cosine_betas": check_cosine_betas,
    "ddim_step": check_ddim_step,
    "ResidualBlock": check_ResidualBlock,
    "training_step": check_training_step,
    "ddim_sample": check_ddim_sample,
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch01", CHECKS, TITLE)
