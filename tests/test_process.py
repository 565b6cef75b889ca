"""The forward process: q(x_t | x0), the three training targets, their inversion, and the loss.

Checked against the closed forms (DDPM eq. 4, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0) and
against diffusers' DDPMScheduler.add_noise / get_velocity.
"""
import pytest
import torch
from diffusers import DDPMScheduler

from minidiff.process import PREDICTIONS, GaussianDiffusion, NoiseSchedule


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.make("linear")


def test_q_sample_moments_by_monte_carlo(schedule):
    """x_t ~ N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I): check mean and variance on 100k draws."""
    diffusion = GaussianDiffusion(schedule)
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x0 = torch.full((n,), 0.7)
    for t in (0, 100, 499, 999):
        t_batch = torch.full((n,), t)
        x_t = diffusion.q_sample(x0, t_batch, torch.randn(n, generator=g))
        alpha_bar = schedule.alpha_bar[t].item()
        std = (1 - alpha_bar) ** 0.5
        assert x_t.mean().item() == pytest.approx(alpha_bar**0.5 * 0.7, abs=5 * std / n**0.5)
        assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.03)


def test_q_sample_per_example_timesteps(schedule):
    """Each example in the batch gets its own alpha_bar, broadcast over (C, H, W)."""
    diffusion = GaussianDiffusion(schedule)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    for i in range(3):
        a = schedule.alpha_bar[t[i]]
        torch.testing.assert_close(x_t[i], a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i])


@pytest.mark.parametrize("schedule_name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_q_sample_matches_diffusers_add_noise(schedule_name, diffusers_name):
    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule_name))
    scheduler = DDPMScheduler(beta_schedule=diffusers_name)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    # Tolerance: the two alpha_bar tables differ in the last float32 bit (test_schedules), which
    # sqrt(1 - alpha_bar) at t = 1 (1 - 0.99978) turns into a few 1e-6.
    torch.testing.assert_close(diffusion.q_sample(x0, t, eps), scheduler.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    scheduler.alphas_cumprod = diffusion.schedule.alpha_bar.clone()   # same table: the formulas agree to rounding
    torch.testing.assert_close(diffusion.q_sample(x0, t, eps), scheduler.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)


def test_targets(schedule):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.equal(GaussianDiffusion(schedule, "eps").target(x0, t, eps), eps)
    assert torch.equal(GaussianDiffusion(schedule, "x0").target(x0, t, eps), x0)
    a = schedule.alpha_bar[t].reshape(-1, 1, 1, 1)
    v = GaussianDiffusion(schedule, "v").target(x0, t, eps)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("schedule_name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_v_target_matches_diffusers_get_velocity(schedule_name, diffusers_name):
    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule_name), prediction="v")
    scheduler = DDPMScheduler(beta_schedule=diffusers_name, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(diffusion.target(x0, t, eps), scheduler.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-5)
    scheduler.alphas_cumprod = diffusion.schedule.alpha_bar.clone()
    torch.testing.assert_close(diffusion.target(x0, t, eps), scheduler.get_velocity(x0, eps, t), rtol=1e-6, atol=1e-6)


def test_v_is_the_rotation_of_eps_and_x0(schedule):
    """With x_t = a x0 + s eps and v = a eps - s x0 (a^2 + s^2 = 1): |x_t|^2 + |v|^2 = |x0|^2 + |eps|^2."""
    diffusion = GaussianDiffusion(schedule, "v")
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(4, 8, dtype=torch.float64, generator=g), torch.randn(4, 8, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 100, 600, 999])
    x_t, v = diffusion.q_sample(x0, t, eps), diffusion.target(x0, t, eps)
    torch.testing.assert_close(x_t**2 + v**2, x0**2 + eps**2)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_predict_x0_eps_inverts_the_target(prediction, schedule_name):
    """Given x_t, any one of eps, x0, v determines the other two: predict_x0_eps(target) gives back (x0, eps).
    In float64 the round trip is exact to rounding, even at t = 999 where alpha_bar is tiny."""
    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule_name), prediction)
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=g)
    eps = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 500, 998, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    x0_hat, eps_hat = diffusion.predict_x0_eps(diffusion.target(x0, t, eps), x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


def test_loss_is_zero_for_an_oracle(schedule):
    """The oracle replays the loss's own random draws (t first, then eps, from the same seeded generator)
    and returns the exact target, so L_simple is exactly 0 for every prediction type."""
    x0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    for prediction in PREDICTIONS:
        diffusion = GaussianDiffusion(schedule, prediction)
        replay = torch.Generator().manual_seed(8)
        t_expected = torch.randint(0, 1000, (8,), generator=replay)
        eps = torch.randn(x0.shape, generator=replay)

        def oracle(x_t, t):
            assert torch.equal(t, t_expected)
            torch.testing.assert_close(x_t, diffusion.q_sample(x0, t, eps))
            return diffusion.target(x0, t, eps)

        assert diffusion.loss(oracle, x0, generator=torch.Generator().manual_seed(8)).item() == 0.0


def test_loss_is_the_mean_squared_error(schedule):
    """A model off by a constant c everywhere has loss c^2; the zero model has loss mean(target^2)."""
    diffusion = GaussianDiffusion(schedule, "eps")
    x0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(10)
    torch.randint(0, 1000, (16,), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    off_by_half = lambda x_t, t: eps + 0.5  # noqa: E731
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    assert diffusion.loss(off_by_half, x0, torch.Generator().manual_seed(10)).item() == pytest.approx(0.25)
    assert diffusion.loss(zero, x0, torch.Generator().manual_seed(10)).item() == pytest.approx((eps**2).mean().item())


def test_loss_backpropagates(schedule):
    diffusion = GaussianDiffusion(schedule)
    scale = torch.zeros((), requires_grad=True)
    loss = diffusion.loss(lambda x_t, t: scale * x_t, torch.randn(4, 1, 4, 4))
    loss.backward()
    assert scale.grad is not None and scale.grad.item() != 0.0


def test_sample_timesteps_range(schedule):
    t = GaussianDiffusion(schedule).sample_timesteps(10_000, torch.Generator().manual_seed(11))
    assert t.shape == (10_000,) and t.dtype == torch.long
    assert t.min().item() == 0 and t.max().item() == 999


def test_unknown_prediction(schedule):
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'.*eps, x0, v"):
        GaussianDiffusion(schedule, prediction="epsilon")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_is_x0_error_times_capped_snr(prediction):
    """Hang et al. eq. 7: whatever the target, weight * ||target error||^2 = min(SNR, gamma) * ||x0 error||^2."""
    gamma = 5.0
    diffusion = GaussianDiffusion(NoiseSchedule.make("cosine"), prediction, min_snr_gamma=gamma)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 3, 50, 400, 800, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    output = torch.randn(6, 1, 4, 4, generator=g)                       # any network output
    target_error = (output - diffusion.target(x0, t, eps)).pow(2).flatten(1).sum(1)
    x0_hat, _ = diffusion.predict_x0_eps(output, x_t, t)
    x0_error = (x0_hat - x0).pow(2).flatten(1).sum(1)
    snr = diffusion.schedule.snr()[t]
    torch.testing.assert_close(diffusion.loss_weight(t) * target_error, snr.clamp(max=gamma) * x0_error,
                               rtol=1e-3, atol=1e-5)


def test_min_snr_must_be_positive():
    with pytest.raises(ValueError, match="min_snr_gamma"):
        GaussianDiffusion(NoiseSchedule.make("cosine"), min_snr_gamma=0)
