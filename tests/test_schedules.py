"""Noise schedules: golden numbers, closed forms, the posterior, and parity with diffusers' DDPMScheduler.

Golden values: fact sheet A, section 10 (measured with diffusers 0.42.1, float32). Indices are
diffusers' t = 0..T-1, i.e. the paper's t minus one.
"""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from minidiff.process import SCHEDULES, NoiseSchedule, cosine_betas, linear_betas
from minidiff.process.schedules import cosine_alpha_bar


@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule.make("linear")


@pytest.fixture(scope="module")
def cosine():
    return NoiseSchedule.make("cosine")


# ---------------------------------------------------------------------------- golden numbers


def test_linear_golden_numbers(linear):
    assert linear.num_steps == 1000
    assert linear.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert linear.betas[999].item() == pytest.approx(0.02, rel=1e-6)
    assert linear.alpha_bar[0].item() == pytest.approx(0.9999, rel=1e-6)
    assert linear.alpha_bar[499].item() == pytest.approx(0.0785872, rel=1e-5)
    assert linear.alpha_bar[999].item() == pytest.approx(4.03583e-05, rel=1e-5)
    assert linear.alpha_bar[999].sqrt().item() == pytest.approx(0.00635282, rel=1e-5)


def test_cosine_golden_numbers(cosine):
    assert cosine.betas[0].item() == pytest.approx(4.12842e-05, rel=1e-5)
    assert cosine.betas[999].item() == pytest.approx(0.999, rel=1e-6)    # the cap
    assert cosine.alpha_bar[0].item() == pytest.approx(0.999959, rel=1e-6)
    assert cosine.alpha_bar[499].item() == pytest.approx(0.493843, rel=1e-5)
    # diffusers' float32 cumprod gives 2.428735e-09; minidiff's float64 cumprod 2.428767e-09.
    assert cosine.alpha_bar[999].item() == pytest.approx(2.4287e-09, rel=1e-4)


def test_all_tensors_are_float32_of_length_T(linear):
    for name in ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "posterior_variance",
                 "posterior_mean_coef_x0", "posterior_mean_coef_xt"):
        value = getattr(linear, name)
        assert value.shape == (1000,) and value.dtype == torch.float32, name


# ---------------------------------------------------------------------------- closed forms


def test_linear_betas_are_evenly_spaced():
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64
    steps = betas.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), rtol=1e-9, atol=0)


def test_alpha_bar_is_the_product_of_alphas(linear):
    alpha_bar = torch.cumprod(1 - linear_betas(1000), dim=0)
    torch.testing.assert_close(linear.alpha_bar, alpha_bar.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(linear.alphas, 1 - linear.betas)
    assert linear.alpha_bar_prev[0].item() == 1.0
    torch.testing.assert_close(linear.alpha_bar_prev[1:], linear.alpha_bar[:-1])


def test_cosine_alpha_bar_is_f_t_over_f_0_where_beta_is_not_capped():
    """Improved DDPM eq. 17: alpha_bar_t = f(t/T) / f(0), f(u) = cos^2(((u + s)/(1 + s)) pi/2), s = 0.008.
    minidiff's alpha_bar[t] is the paper's alpha_bar_{t+1}, so it is f((t+1)/T) / f(0)."""
    T = 1000
    betas = cosine_betas(T)
    capped = betas >= 0.999
    assert capped.tolist() == [False] * (T - 1) + [True]   # only the last step hits the cap
    u = torch.arange(1, T + 1, dtype=torch.float64) / T
    s = 0.008
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731 (the paper's f, restated)
    closed_form = f(u) / f(torch.zeros((), dtype=torch.float64))
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    torch.testing.assert_close(alpha_bar[:-1], closed_form[:-1], rtol=1e-9, atol=0)
    torch.testing.assert_close(cosine_alpha_bar(u), f(u))
    # the capped step keeps 0.1 % of the signal instead of the closed form's f(1) / f(0) ~ 0
    assert alpha_bar[-1] == pytest.approx(alpha_bar[-2] * 0.001, rel=1e-9)
    assert closed_form[-1] < 1e-30


def test_cosine_sqrt_beta_0_is_below_one_pixel_bin():
    """s = 0.008 was chosen so that sqrt(beta_0) is a little smaller than the pixel bin 2/255 (Improved DDPM, 3.2)."""
    assert cosine_betas(1000)[0].sqrt() < 2 / 255


def test_posterior_variance_formula(linear, cosine):
    """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (DDPM eq. 7), zero at t = 0."""
    for schedule, betas in ((linear, linear_betas(1000)), (cosine, cosine_betas(1000))):
        alpha_bar = torch.cumprod(1 - betas, dim=0)   # float64: 1 - alpha_bar at t = 1 cancels badly in float32
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        expected = (1 - alpha_bar_prev) / (1 - alpha_bar) * betas
        torch.testing.assert_close(schedule.posterior_variance.double(), expected, rtol=1e-6, atol=0)
        assert schedule.posterior_variance[0].item() == 0.0
        assert (schedule.posterior_variance[1:] > 0).all()
        assert (schedule.posterior_variance <= schedule.betas).all()   # beta_tilde <= beta


@pytest.mark.parametrize("t", [1, 10, 500, 998])
def test_posterior_mean_and_variance_by_conditioning_a_gaussian(linear, t):
    """Derive q(x_{t-1} | x_t, x0) independently: given x0, (x_{t-1}, x_t) is jointly Gaussian with
    x_{t-1} = sqrt(ab_{t-1}) x0 + sqrt(1 - ab_{t-1}) e1, x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e2.
    Conditioning on x_t gives mean = E[x_{t-1}] + Cov / Var(x_t) (x_t - E[x_t]) and variance Var - Cov^2 / Var(x_t)."""
    beta = linear_betas(1000)[t]
    alpha_bar_prev = torch.cumprod(1 - linear_betas(1000), dim=0)[t - 1]
    alpha_bar = alpha_bar_prev * (1 - beta)
    var_prev, var_t = 1 - alpha_bar_prev, 1 - alpha_bar
    cov = (1 - beta).sqrt() * var_prev
    # mean = sqrt(ab_prev) x0 + cov / var_t (x_t - sqrt(ab) x0)  ->  coefficients of x0 and x_t:
    coef_xt = cov / var_t
    coef_x0 = alpha_bar_prev.sqrt() - coef_xt * alpha_bar.sqrt()
    variance = var_prev - cov**2 / var_t
    assert linear.posterior_mean_coef_xt[t].item() == pytest.approx(coef_xt.item(), rel=1e-5)
    assert linear.posterior_mean_coef_x0[t].item() == pytest.approx(coef_x0.item(), rel=1e-5)
    assert linear.posterior_variance[t].item() == pytest.approx(variance.item(), rel=1e-5)


# ---------------------------------------------------------------------------- shape of the schedules


@pytest.mark.parametrize("name", SCHEDULES)
def test_monotonic_and_in_range(name):
    schedule = NoiseSchedule.make(name)
    assert (schedule.betas.diff() >= 0).all()                 # noise per step never decreases
    assert (schedule.alpha_bar.diff() < 0).all()              # the signal always decays
    assert ((schedule.alpha_bar > 0) & (schedule.alpha_bar < 1)).all()
    snr = schedule.snr()
    assert (snr.diff() < 0).all()
    torch.testing.assert_close(snr, schedule.alpha_bar / (1 - schedule.alpha_bar))
    if name == "linear":
        assert (schedule.betas.diff() > 0).all()


def test_other_lengths():
    schedule = NoiseSchedule.make("linear", num_steps=10)
    assert schedule.num_steps == 10 and schedule.betas[-1].item() == pytest.approx(0.02)
    assert NoiseSchedule.make("cosine", num_steps=50).alpha_bar.shape == (50,)


def test_bad_schedule_name():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*linear, cosine"):
        NoiseSchedule.make("quadratic")


@pytest.mark.parametrize("betas", [torch.tensor([0.1, 0.0]), torch.tensor([0.5, 1.5]), torch.full((2, 2), 0.1)])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="betas must be a 1-D tensor"):
        NoiseSchedule(betas)


def test_at_broadcasts_against_x(linear):
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 499, 999])
    out = NoiseSchedule.at(linear.alpha_bar, t, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float64
    torch.testing.assert_close(out.flatten(), linear.alpha_bar[t].double())


# ---------------------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_matches_diffusers(name, diffusers_name):
    ours = NoiseSchedule.make(name)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas, theirs.alphas, rtol=0, atol=1e-7)
    # minidiff takes the cumulative product in float64, diffusers in float32: the last bits differ,
    # by at most 4e-7 (linear) and 1.4e-5 (cosine, whose alpha_bar falls to 2e-9) relative.
    rtol = 1e-6 if name == "linear" else 2e-5
    torch.testing.assert_close(ours.alpha_bar, theirs.alphas_cumprod, rtol=rtol, atol=0)


def test_scaled_linear_schedule_matches_stable_diffusion():
    """Fact sheet A, section 10 (diffusers' scaled_linear, 0.00085 -> 0.012): alpha_bar at t = 0, 499, 999."""
    ours = NoiseSchedule.make("scaled_linear")
    assert ours.alpha_bar[0].item() == pytest.approx(0.99915, rel=1e-6)
    assert ours.alpha_bar[499].item() == pytest.approx(0.277669, rel=1e-5)
    assert ours.alpha_bar[999].item() == pytest.approx(4.660095e-03, rel=1e-5)
    theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.allclose(ours.alpha_bar.double(), theirs.alphas_cumprod.double(), rtol=1e-5)
