"""Chapter 1's exercise cases for tests/test_exercises.py: DDPM and DDIM.

WRONG lists (exercise, plausible but wrong implementation, a phrase the failure message must contain);
RIGHT (optional) lists other correct implementations the checks must accept.
"""
import math

import torch

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
]
