"""Checks for Chapter 1's exercises (chapters/01-ddpm/exercises.py): DDPM and DDIM by hand.

Each `check_<name>(fn)` calls a learner's function on several inputs and compares the result with
minidiff's own implementation in `minidiff.process` and with closed-form properties of the maths.
It returns quietly when everything agrees and raises AssertionError otherwise, saying what was
expected, what came back, and giving a hint. A function that still raises NotImplementedError fails
with `NotImplementedYet`, a kind of AssertionError. `run_checks(module)` runs them all. The helpers that
call the learner's function and compare tensors are minidiff.exercises.checking's.

| exercise                  | paper                                  | minidiff reference                       |
|---------------------------|----------------------------------------|------------------------------------------|
| `q_sample`                | DDPM (arXiv:2006.11239) eq. 4          | `GaussianDiffusion.q_sample`             |
| `posterior_mean_variance` | DDPM eq. 6-7                           | `NoiseSchedule.posterior_*`, `ddpm_step` |
| `v_target`                | Salimans & Ho (arXiv:2202.00512) sec. 4 | `GaussianDiffusion.target` ('v')        |
| `x0_eps_from_v`           | the inverse of the above               | `GaussianDiffusion.predict_x0_eps`       |
| `cosine_betas`            | Improved DDPM (arXiv:2102.09672) eq. 17 | `cosine_betas`, `cosine_alpha_bar`      |
| `ddim_step`               | DDIM (arXiv:2010.02502) eq. 12 and 16  | `ddim_step`, `ddpm_step`                 |

Timesteps follow minidiff's convention: t = 0..T-1, so `alpha_bar[t]` is the paper's alpha-bar_{t+1}.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch

from minidiff.exercises.checking import Check, call, command_line, expect_close, expect_pair, preview, report
from minidiff.process import GaussianDiffusion, NoiseSchedule, cosine_betas, ddim_step, ddpm_step, linear_betas
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
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch01", CHECKS, TITLE)
