"""Chapter 1's exercise cases for tests/test_exercises.py: DDPM and DDIM.

WRONG lists (exercise, plausible but wrong implementation, a phrase the failure message must contain);
RIGHT (optional) lists other correct implementations the checks must accept; BROKEN lists deliberately broken
versions of the build-along exercises (7-9) with a phrase the failure must contain. Most fail in the quick unit
stage; one block and one training step are right in every unit comparison and fail only on the held-out error or
the samples of the short training run (a full 300-step run each).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.exercises.checking import load_exercise_file
from exercise_paths import solutions_path

solutions_ch01 = load_exercise_file(solutions_path("ch01"))


def q_sample_without_sqrt(x0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return a * x0 + (1 - a) * eps


def q_sample_paper_index(x0, t, eps, alpha_bar):
    return solutions_ch01.q_sample(x0, t - 1, eps, alpha_bar)


def q_sample_first_timestep_for_all(x0, t, eps, alpha_bar):
    return solutions_ch01.q_sample(x0, t[:1].expand(len(t)), eps, alpha_bar)


def posterior_with_forward_variance(x0, x_t, alpha_bar_t, alpha_bar_prev):
    mean, _ = solutions_ch01.posterior_mean_variance(x0, x_t, alpha_bar_t, alpha_bar_prev)
    return mean, 1 - alpha_bar_t / alpha_bar_prev


def posterior_without_sqrt_alpha(x0, x_t, alpha_bar_t, alpha_bar_prev):
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (alpha_bar_prev.sqrt() * beta_t * x0 + alpha_t * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar_t)
    return mean, beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)


def v_target_flipped(x0, eps, alpha_bar_t):
    return -solutions_ch01.v_target(x0, eps, alpha_bar_t)


def x0_eps_from_v_rotating_forward(v, x_t, alpha_bar_t):
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    return a * x_t + s * v, -s * x_t + a * v


def cosine_betas_uncapped(num_steps, s=0.008, max_beta=0.999):
    return solutions_ch01.cosine_betas(num_steps, s, max_beta=1.0)


def cosine_betas_float32(num_steps, s=0.008, max_beta=0.999):
    u = torch.arange(num_steps + 1, dtype=torch.float32) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cosine_betas_without_offset(num_steps, s=0.008, max_beta=0.999):
    return solutions_ch01.cosine_betas(num_steps, 0.0, max_beta)


def ddim_step_wrong_sign(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x0_hat = (x_t + (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()  # + where eq. 12 has -
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat


def ddim_step_ignoring_eta(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    return solutions_ch01.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)


def ddim_step_without_sigma_in_direction(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x_prev = solutions_ch01.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    return x_prev + sigma * noise if eta > 0 else x_prev


def q_sample_without_reshape(x0, t, eps, alpha_bar):
    a = alpha_bar[t]  # (B,) does not broadcast against (B, C, H, W): torch raises a RuntimeError
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


# Exercise 7: the residual block. Each is the reference block with one mistake.

class BlockWithoutTime(solutions_ch01.ResidualBlock):
    def forward(self, x, temb):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class BlockTimeAfterNorm(solutions_ch01.ResidualBlock):
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h) + self.time_emb_proj(F.silu(temb))[:, :, None, None]))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class BlockWithoutSkip(solutions_ch01.ResidualBlock):
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h)))


class BlockAlwaysShortcut(solutions_ch01.ResidualBlock):
    """A 1x1 convolution on the skip even when the channels do not change."""

    def __init__(self, in_channels, out_channels, temb_dim, groups=8, eps=1e-6):
        super().__init__(in_channels, out_channels, temb_dim, groups, eps)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)


class BlockDetachedBranch(solutions_ch01.ResidualBlock):
    """Right output for any weights, so every unit comparison passes; but the residual branch is cut from the
    graph, so norm1, conv1, time_emb_proj, norm2 and conv2 never learn (nor the U-Net's timestep MLP)."""

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h.detach()


# Exercise 8: the training step.

def _noised(x0, alpha_bar):
    t = torch.randint(0, len(alpha_bar), (x0.shape[0],))
    eps = torch.randn_like(x0)
    return t, eps, solutions_ch01.q_sample(x0, t, eps, alpha_bar)


def _finish(optimizer, loss):
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def training_step_predicting_x0(model, optimizer, x0, alpha_bar):
    t, eps, x_t = _noised(x0, alpha_bar)
    return _finish(optimizer, F.mse_loss(model(x_t, t), x0))


def training_step_without_zero_grad(model, optimizer, x0, alpha_bar):
    t, eps, x_t = _noised(x0, alpha_bar)
    loss = F.mse_loss(model(x_t, t), eps)
    loss.backward()
    optimizer.step()
    return loss.item()


def training_step_without_sqrt(model, optimizer, x0, alpha_bar):
    t = torch.randint(0, len(alpha_bar), (x0.shape[0],))
    eps = torch.randn_like(x0)
    a = alpha_bar[t].reshape(-1, 1, 1, 1)
    x_t = a * x0 + (1 - a) * eps
    return _finish(optimizer, F.mse_loss(model(x_t, t), eps))


def training_step_one_timestep_per_batch(model, optimizer, x0, alpha_bar):
    t = torch.randint(0, len(alpha_bar), (1,)).expand(x0.shape[0])
    eps = torch.randn_like(x0)
    x_t = solutions_ch01.q_sample(x0, t, eps, alpha_bar)
    return _finish(optimizer, F.mse_loss(model(x_t, t), eps))


def training_step_with_fractional_time(model, optimizer, x0, alpha_bar):
    t, eps, x_t = _noised(x0, alpha_bar)
    return _finish(optimizer, F.mse_loss(model(x_t, t / len(alpha_bar)), eps))


def training_step_returning_a_tensor(model, optimizer, x0, alpha_bar):
    t, eps, x_t = _noised(x0, alpha_bar)
    loss = F.mse_loss(model(x_t, t), eps)
    _finish(optimizer, loss)
    return loss


def training_step_without_optimizer_step(model, optimizer, x0, alpha_bar):
    t, eps, x_t = _noised(x0, alpha_bar)
    loss = F.mse_loss(model(x_t, t), eps)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def training_step_reseeding(model, optimizer, x0, alpha_bar):
    """Right in every single call (the unit comparisons pass); but it seeds the generator itself, so every step
    of the run draws the same timesteps and the same noise, and the network learns little."""
    torch.manual_seed(0)
    t, eps, x_t = _noised(x0, alpha_bar)
    return _finish(optimizer, F.mse_loss(model(x_t, t), eps))


# Exercise 9: the DDIM sampling loop.

@torch.no_grad()
def ddim_sample_without_final_step(model, x_T, alpha_bar, timesteps):
    x = x_T
    for i, t in enumerate(timesteps[:-1]):
        eps_hat = model(x, torch.full((len(x),), t))
        x = solutions_ch01.ddim_step(x, eps_hat, alpha_bar[t], alpha_bar[timesteps[i + 1]])
    return x


@torch.no_grad()
def ddim_sample_stopping_at_the_last_timestep(model, x_T, alpha_bar, timesteps):
    x = x_T
    for i, t in enumerate(timesteps):
        alpha_bar_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else alpha_bar[t]
        x = solutions_ch01.ddim_step(x, model(x, torch.full((len(x),), t)), alpha_bar[t], alpha_bar_prev)
    return x


@torch.no_grad()
def ddim_sample_with_neighbouring_prev(model, x_T, alpha_bar, timesteps):
    x = x_T
    for t in timesteps:
        alpha_bar_prev = alpha_bar[t - 1] if t > 0 else torch.tensor(1.0)
        x = solutions_ch01.ddim_step(x, model(x, torch.full((len(x),), t)), alpha_bar[t], alpha_bar_prev)
    return x


@torch.no_grad()
def ddim_sample_with_integer_t(model, x_T, alpha_bar, timesteps):
    x = x_T
    for i, t in enumerate(timesteps):
        alpha_bar_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        x = solutions_ch01.ddim_step(x, model(x, t), alpha_bar[t], alpha_bar_prev)
    return x


def ddim_sample_keeping_gradients(model, x_T, alpha_bar, timesteps):
    x = x_T
    for i, t in enumerate(timesteps):
        alpha_bar_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        x = solutions_ch01.ddim_step(x, model(x, torch.full((len(x),), t)), alpha_bar[t], alpha_bar_prev)
    return x


@torch.no_grad()
def ddim_sample_in_increasing_order(model, x_T, alpha_bar, timesteps):
    return solutions_ch01.ddim_sample(model, x_T, alpha_bar, timesteps[::-1])


WRONG = [
    ("q_sample", q_sample_without_sqrt, "instead of its square root"),
    ("q_sample", q_sample_paper_index, "paper's numbering"),
    ("q_sample", q_sample_first_timestep_for_all, "values differ"),
    ("q_sample", q_sample_without_reshape, "raised RuntimeError"),
    ("posterior_mean_variance", posterior_with_forward_variance, "forward step's variance"),
    ("posterior_mean_variance", posterior_without_sqrt_alpha, "values differ"),
    ("v_target", v_target_flipped, "flip the sign"),
    ("x0_eps_from_v", x0_eps_from_v_rotating_forward, "values differ"),
    ("cosine_betas", cosine_betas_uncapped, "forget the cap"),
    ("cosine_betas", cosine_betas_float32, "float64"),
    ("cosine_betas", cosine_betas_without_offset, "values differ"),
    ("ddim_step", ddim_step_wrong_sign, "flip the sign"),
    ("ddim_step", ddim_step_ignoring_eta, "ignore eta"),
    ("ddim_step", ddim_step_without_sigma_in_direction, "eta = 1"),
    ("ResidualBlock", BlockWithoutTime, "leave out the timestep embedding"),
    ("ResidualBlock", BlockTimeAfterNorm, "after norm2 instead of before it"),
    ("ResidualBlock", BlockWithoutSkip, "leave out the skip connection"),
    ("ResidualBlock", BlockAlwaysShortcut, "unexpected conv_shortcut"),
    ("training_step", training_step_predicting_x0, "with x0 instead of eps"),
    ("training_step", training_step_without_zero_grad, "no optimizer.zero_grad"),
    ("training_step", training_step_without_sqrt, "not x0 noised as in exercise 1"),
    ("training_step", training_step_one_timestep_per_batch, "drawn uniformly"),
    ("training_step", training_step_with_fractional_time, "integer tensor"),
    ("training_step", training_step_returning_a_tensor, "Python float"),
    ("training_step", training_step_without_optimizer_step, "did not change"),
    ("ddim_sample", ddim_sample_without_final_step, "step on to alpha-bar = 1"),
    ("ddim_sample", ddim_sample_stopping_at_the_last_timestep, "stepping on to alpha-bar = 1"),
    ("ddim_sample", ddim_sample_with_neighbouring_prev, "neighbouring timestep"),
    ("ddim_sample", ddim_sample_with_integer_t, "long tensor"),
    ("ddim_sample", ddim_sample_keeping_gradients, "no_grad"),
    ("ddim_sample", ddim_sample_in_increasing_order, "the network was called with t"),
]

# Build-along: each check must fail these with a message that contains the phrase and a hint. The first two
# pass every unit comparison and fail only after the short training run.
BROKEN = [
    ("ResidualBlock", BlockDetachedBranch, "did not change these parameters"),
    ("training_step", training_step_reseeding, "every step drew the same timesteps"),
    ("ResidualBlock", BlockTimeAfterNorm, "outputs with minidiff's weights copied in"),
    ("training_step", training_step_without_zero_grad, "the parameter update"),
    ("ddim_sample", ddim_sample_stopping_at_the_last_timestep, "stepping on to alpha-bar = 1"),
]
