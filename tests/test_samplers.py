"""Samplers: timestep spacing, DDPM and DDIM steps against diffusers, whole sampling loops, and
sampling Gaussian data with the exact (closed-form) noise predictor.

Parity tests give minidiff the float32 alpha_bar table of the diffusers scheduler they compare with
(`twin`). The two tables differ only in the last bit (minidiff takes the cumulative product in
float64; see test_schedules.py), but 1 - alpha_bar near t = 0 and 1 / sqrt(alpha_bar) near t = T-1
amplify a last-bit difference to ~1e-4, which would hide the algebra under test.
"""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minidiff.process import GaussianDiffusion, NoiseSchedule, ddim_step, ddpm_step, sample, timesteps

T = 1000
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
DIFFUSERS_VARIANCE = {"beta_tilde": "fixed_small", "beta": "fixed_large"}
SHAPE = (2, 3, 4, 4)


def twin(scheduler, prediction: str = "eps", schedule: str = "linear") -> GaussianDiffusion:
    """A GaussianDiffusion whose alpha_bar is bit-identical to the diffusers scheduler's."""
    diffusion = GaussianDiffusion(NoiseSchedule.make(schedule), prediction)
    diffusion.schedule.alpha_bar = scheduler.alphas_cumprod.clone()
    return diffusion


def toy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed, smooth stand-in for a network: bounded output that depends on x and t."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * torch.tanh(x) + 0.3 * torch.cos(t / 100.0)


def random_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(3)]   # model output, x_t, noise


# ---------------------------------------------------------------------------- timestep spacing


def test_trailing_with_all_steps_visits_every_timestep():
    assert timesteps(T, T, "trailing") == list(range(999, -1, -1))
    assert timesteps(T, T, "leading") == list(range(999, -1, -1))


def test_trailing_ten_steps():
    assert timesteps(T, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def test_leading_fifty_steps_matches_diffusers_default():
    expected = list(range(980, -1, -20))      # fact sheet A, section 3: [980, 960, ..., 20, 0]
    assert timesteps(T, 50, "leading") == expected
    scheduler = DDIMScheduler()                # timestep_spacing="leading" is diffusers' default
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == expected


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [1, 3, 7, 10, 50, 333, 999, 1000])
def test_spacing_matches_diffusers(spacing, steps):
    scheduler = DDPMScheduler(timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert timesteps(T, steps, spacing) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("steps", [1, 3, 10, 50, 999])
def test_leading_steps_offset_matches_diffusers(steps):
    """SD 1.x/2.x's scheduler configs have steps_offset=1: 'leading' timesteps shift up by one (981, ..., 1)."""
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(steps)
    assert timesteps(T, steps, "leading", steps_offset=1) == scheduler.timesteps.tolist()
    assert timesteps(T, steps, "leading", steps_offset=1) == [t + 1 for t in timesteps(T, steps, "leading")]


def test_bad_steps_offset():
    with pytest.raises(ValueError, match="steps_offset=1 applies to 'leading' spacing only"):
        timesteps(T, 10, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="outside 0..999"):
        timesteps(T, 1000, "leading", steps_offset=1)      # would visit t = 1000
    with pytest.raises(ValueError, match="outside 0..999"):
        timesteps(T, 10, "leading", steps_offset=-1)


def test_bad_spacing_and_step_counts():
    with pytest.raises(ValueError, match="unknown spacing 'linspace'"):
        timesteps(T, 10, "linspace")
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
            timesteps(T, steps)


# ---------------------------------------------------------------------------- one DDPM step


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_step_matches_diffusers(variance, clip_x0, prediction, schedule):
    """Every step of the full 1000-step chain that the test visits, with diffusers' noise replayed:
    diffusers draws randn(shape) from the generator it is given, so the same seed gives minidiff the same z."""
    scheduler = DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[schedule], variance_type=DIFFUSERS_VARIANCE[variance],
                              clip_sample=clip_x0, prediction_type=DIFFUSERS_PREDICTION[prediction])
    diffusion = twin(scheduler, prediction, schedule)
    for t in (999, 998, 700, 500, 100, 10, 1, 0):
        output, x_t, _ = random_inputs(t)
        expected = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        got = ddpm_step(diffusion, output, x_t, t, t - 1, noise, variance, clip_x0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"t={t}")


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_step_on_a_sub_sequence_matches_diffusers(variance, spacing):
    """K = 50 < T steps: beta is recomputed from alpha_bar over the jump, beta' = 1 - alpha_bar_t / alpha_bar_prev.
    (The last trailing step, t = 19 -> -1, is covered by test_ddpm_last_step_adds_no_noise.)"""
    scheduler = DDPMScheduler(variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=False, timestep_spacing=spacing)
    scheduler.set_timesteps(50)
    diffusion = twin(scheduler)
    ts = timesteps(T, 50, spacing)
    for i, t in enumerate(ts[:-1] if spacing == "trailing" else ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        output, x_t, _ = random_inputs(i)
        expected = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i))
        got = ddpm_step(diffusion, output, x_t, t, t_prev, noise, variance)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"t={t}")


def test_ddpm_step_mean_is_eq_11_when_not_clipped():
    """Without clipping, mu_tilde(x0_hat, x_t) equals DDPM eq. 11:
    (x_t - beta / sqrt(1 - alpha_bar) eps) / sqrt(alpha)."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    s = diffusion.schedule
    g = torch.Generator().manual_seed(0)
    eps, x_t = torch.randn(4, 8, dtype=torch.float64, generator=g), torch.randn(4, 8, dtype=torch.float64, generator=g)
    for t in (999, 500, 3):
        beta, alpha, alpha_bar = s.betas[t].double(), s.alphas[t].double(), s.alpha_bar[t].double()
        expected = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
        torch.testing.assert_close(ddpm_step(diffusion, eps, x_t, t, t - 1, None), expected, rtol=1e-5, atol=1e-5)


def test_ddpm_last_step_adds_no_noise():
    """DDPM Algorithm 2 adds no noise on the last step (z = 0). diffusers skips it only when t == 0, so with
    'trailing' spacing (last t = 99 for K = 10) and 'fixed_large' it adds sqrt(1 - alpha_bar_99) z at the end:
    the two final samples differ by exactly that term."""
    scheduler = DDPMScheduler(variance_type="fixed_large", clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    diffusion = twin(scheduler)
    output, x_t, _ = random_inputs(0)
    g = torch.Generator().manual_seed(1)
    theirs = scheduler.step(output, 99, x_t, generator=g).prev_sample
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = ddpm_step(diffusion, output, x_t, 99, -1, z, "beta")
    torch.testing.assert_close(ours, ddpm_step(diffusion, output, x_t, 99, -1, None, "beta"))   # noise is ignored
    torch.testing.assert_close(theirs - ours, (1 - scheduler.alphas_cumprod[99]).sqrt() * z, rtol=1e-5, atol=1e-5)


def test_ddpm_step_bad_variance():
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    with pytest.raises(ValueError, match="unknown variance 'fixed_small'.*beta, beta_tilde"):
        ddpm_step(diffusion, torch.zeros(1, 1), torch.zeros(1, 1), 5, 4, None, variance="fixed_small")


# ---------------------------------------------------------------------------- one DDIM step


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_matches_diffusers(eta, spacing, clip_x0, prediction, schedule):
    scheduler = DDIMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[schedule], clip_sample=clip_x0, set_alpha_to_one=True,
                              timestep_spacing=spacing, prediction_type=DIFFUSERS_PREDICTION[prediction])
    scheduler.set_timesteps(50)
    diffusion = twin(scheduler, prediction, schedule)
    ts = timesteps(T, 50, spacing)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        output, x_t, noise = random_inputs(i)
        expected = scheduler.step(output, t, x_t, eta=eta, variance_noise=noise).prev_sample
        got = ddim_step(diffusion, output, x_t, t, t_prev, noise, eta, clip_x0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"t={t}")


def test_ddim_sigma_is_eq_16():
    """sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev): the noise enters with exactly that scale,
    and eta = 1 gives sigma^2 = beta_tilde (DDIM's eta = 1 is DDPM's posterior variance)."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    ab = diffusion.schedule.alpha_bar.double()
    output, x_t, noise = (v.double() for v in random_inputs(0))
    t, t_prev = 600, 580
    for eta in (0.5, 1.0):
        sigma = eta * ((1 - ab[t_prev]) / (1 - ab[t]) * (1 - ab[t] / ab[t_prev])).sqrt()
        with_noise = ddim_step(diffusion, output, x_t, t, t_prev, noise, eta)
        without = ddim_step(diffusion, output, x_t, t, t_prev, torch.zeros_like(noise), eta)
        torch.testing.assert_close(with_noise - without, sigma * noise)
    beta = 1 - ab[t] / ab[t_prev]
    torch.testing.assert_close(sigma**2, beta * (1 - ab[t_prev]) / (1 - ab[t]))


def test_ddim_eta_0_is_deterministic():
    """With eta = 0 the noise argument is ignored: the same x_T gives the same sample whatever noise is passed."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ts = timesteps(T, 20)
    results = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        x = x_T
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = ddim_step(diffusion, toy_model(x, t), x, t, t_prev, torch.randn(SHAPE, generator=g), eta=0.0)
        results.append(x)
    assert torch.equal(results[0], results[1])
    a = sample(toy_model, diffusion, SHAPE, "ddim", steps=20, generator=torch.Generator().manual_seed(0))
    b = sample(toy_model, diffusion, SHAPE, "ddim", steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, results[0])   # sample() draws x_T first, then nothing for eta = 0
    c = sample(toy_model, diffusion, SHAPE, "ddim", steps=20, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------- whole sampling loops


def diffusers_loop(scheduler, steps: int, seed: int, **step_kwargs) -> torch.Tensor:
    """What DDPMPipeline / DDIMPipeline do: x_T ~ randn from the generator, then step() with the same generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_model(x, t.expand(SHAPE[0])), t, x, generator=g, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("steps, spacing, variance", [
    (1000, "leading", "beta_tilde"), (1000, "leading", "beta"), (1000, "trailing", "beta_tilde"),
    (1000, "trailing", "beta"), (50, "leading", "beta_tilde"), (50, "leading", "beta"), (10, "trailing", "beta_tilde")])
def test_ddpm_sample_matches_diffusers_loop(steps, spacing, variance, clip_x0):
    """sample() and diffusers' loop draw the same random numbers in the same order (x_T, then one z per step
    except the last), so seeded runs must agree. Trailing K < T ends at t = 99 > 0, where diffusers adds
    noise (test_ddpm_last_step_adds_no_noise): compared there only with 'beta_tilde', whose sigma^2 is 1e-20."""
    scheduler = DDPMScheduler(variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=clip_x0, timestep_spacing=spacing)
    expected = diffusers_loop(scheduler, steps, seed=0)
    got = sample(toy_model, twin(scheduler), SHAPE, "ddpm", steps=steps, variance=variance, clip_x0=clip_x0,
                 spacing=spacing, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_sample_matches_diffusers_loop(eta, spacing, clip_x0):
    scheduler = DDIMScheduler(clip_sample=clip_x0, set_alpha_to_one=True, timestep_spacing=spacing)
    expected = diffusers_loop(scheduler, 50, seed=0, eta=eta)
    got = sample(toy_model, twin(scheduler), SHAPE, "ddim", steps=50, eta=eta, clip_x0=clip_x0, spacing=spacing,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_sample_ending_at_alpha_bar_0_matches_diffusers_loop(eta):
    """SD 1.5's scheduler config run by DDIMScheduler: scaled linear betas, leading spacing with steps_offset=1, and
    set_alpha_to_one=False, so the last step (t = 1) lands on alpha_bar_0 rather than 1: final_timestep=0."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    expected = diffusers_loop(scheduler, 50, seed=0, eta=eta)
    diffusion = twin(scheduler, schedule="scaled_linear")
    options = dict(steps=50, eta=eta, spacing="leading", steps_offset=1)
    got = sample(toy_model, diffusion, SHAPE, "ddim", final_timestep=0, generator=torch.Generator().manual_seed(0),
                 **options)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    to_clean = sample(toy_model, diffusion, SHAPE, "ddim", generator=torch.Generator().manual_seed(0), **options)
    assert (to_clean - expected).abs().max() > 1e-3          # the option matters
    with pytest.raises(ValueError, match="final_timestep must be -1"):
        sample(toy_model, diffusion, SHAPE, "ddim", final_timestep=1, **options)


def test_own_schedule_loops_agree_with_diffusers():
    """With minidiff's own (float64-built) alpha_bar the whole loops still agree closely with diffusers."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    expected = diffusers_loop(DDIMScheduler(clip_sample=False), 50, seed=0)
    got = sample(toy_model, diffusion, SHAPE, "ddim", steps=50, spacing="leading",
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    expected = diffusers_loop(DDPMScheduler(clip_sample=False), 1000, seed=0)
    got = sample(toy_model, diffusion, SHAPE, "ddpm", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_trajectory_and_bad_sampler():
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    x, trajectory = sample(toy_model, diffusion, SHAPE, "ddim", steps=5, return_trajectory=True,
                           generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in trajectory] == [1000, 999, 799, 599, 399, 199]
    assert torch.equal(trajectory[0][1], torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(trajectory[-1][1], x) and x.shape == SHAPE
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*ddpm, ddim"):
        sample(toy_model, diffusion, SHAPE, "euler")


# ---------------------------------------------------------------------------- Gaussian data, exact predictor

MU, S2 = 1.5, 0.25          # data x0 ~ N(MU, S2)
N = 20_000


def gaussian_oracle(diffusion: GaussianDiffusion):
    """For x0 ~ N(mu, s^2), x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and the MMSE noise estimate is
    E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E x_t) = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""
    alpha_bar = diffusion.schedule.alpha_bar

    def eps_star(x_t, t):
        ab = alpha_bar[t].reshape(-1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * MU) / (ab * S2 + 1 - ab)
    return eps_star


def ddim_prediction(alpha_bar: torch.Tensor, ts: list[int]) -> tuple[float, float]:
    """DDIM with eps_star, written in y = x / sqrt(ab), sigma = sqrt((1 - ab) / ab), is Euler's method on
    dy/dsigma = sigma (y - mu) / (s^2 + sigma^2): each step multiplies (y - mu) by
    1 + sigma (sigma_prev - sigma) / (s^2 + sigma^2).
    Starting from x_T ~ N(0, 1), the sample has mean mu (1 - P) and variance P^2 / ab_T, P = the product."""
    ab = alpha_bar.double()
    sigma = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    product = torch.tensor(1.0, dtype=torch.float64)
    for i, t in enumerate(ts):
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        s, s_prev = sigma(ab[t]), sigma(ab_prev)
        product = product * (1 + s * (s_prev - s) / (S2 + s**2))
    return (MU * (1 - product)).item(), (product**2 / ab[ts[0]]).item()


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_recovers_gaussian_data(variance):
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    x = sample(gaussian_oracle(diffusion), diffusion, (N, 1), "ddpm", variance=variance,
               generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(MU, abs=0.02)       # standard error 0.0035
    assert x.var().item() == pytest.approx(S2, rel=0.04)        # standard error 1 %; beta_tilde ~ -1 %, beta ~ +1 %


def test_ddim_recovers_gaussian_data():
    """DDIM (eta = 0, 50 steps) with the exact predictor lands on the mean, and on exactly the variance its
    Euler discretisation predicts: 11 % below s^2 on the linear schedule, the few-step DDIM shrinkage."""
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    x = sample(gaussian_oracle(diffusion), diffusion, (N, 1), "ddim", steps=50, eta=0.0,
               generator=torch.Generator().manual_seed(0))
    mean, var = ddim_prediction(diffusion.schedule.alpha_bar, timesteps(T, 50, "trailing"))
    assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert x.var().item() == pytest.approx(var, rel=0.04)
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert var == pytest.approx(0.889 * S2, rel=0.01)
    # with all 1000 steps the discretisation error is gone: the prediction is within 1 % of s^2
    _, var_1000 = ddim_prediction(diffusion.schedule.alpha_bar, timesteps(T, T, "trailing"))
    assert var_1000 == pytest.approx(S2, rel=0.01)


def test_trajectory_frames_are_labelled_with_their_noise_level():
    """The first frame is the noise the network sees at the first timestep; each later one is the sample after a
    step, at the next step's timestep; the last is the sample, not a timestep (it was once labelled t=9)."""
    from minidiff.plotting import trajectory_labels
    from minidiff.process.samplers import timesteps

    diffusion = GaussianDiffusion(NoiseSchedule.make("linear"))
    _, trajectory = sample(toy_model, diffusion, SHAPE, "ddim", steps=5, return_trajectory=True,
                           generator=torch.Generator().manual_seed(0))
    ts = timesteps(diffusion.num_steps, 5, "trailing")
    assert trajectory_labels(trajectory) == [f"t={t}" for t in ts] + ["sample"]
