"""Chapter 1 exercises: reference solutions (for instructors).

Each function is written from the paper's equations, not by calling minidiff, so that the checks in
`minidiff.exercises.ch01` compare two independent implementations. Same signatures as exercises.py.

    python instructors/solutions/01-ddpm.py        # every check passes: exit status 0

Papers: DDPM (arXiv:2006.11239), Improved DDPM (arXiv:2102.09672), DDIM (arXiv:2010.02502),
v-prediction: Salimans & Ho (arXiv:2202.00512). minidiff numbers timesteps t = 0..T-1.
"""
from __future__ import annotations

import math

import torch


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Exercise 1: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps   (DDPM eq. 4, reparameterised)."""
    a = alpha_bar.to(x0.device)[t.long()].to(x0.dtype)       # (B,): one alpha-bar per sample
    a = a.reshape(-1, *([1] * (x0.ndim - 1)))                 # (B, 1, ..., 1): broadcasts over x0
    return a.sqrt() * x0 + (1 - a).sqrt() * eps              # like x0


def posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor,
                            alpha_bar_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 2: mean and variance of q(x_{t-1} | x_t, x0)   (DDPM eq. 6-7)."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev)
    alpha_t = alpha_bar_t / alpha_bar_prev                    # holds on a respaced schedule too
    beta_t = 1 - alpha_t
    coef_x0 = alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t)
    coef_xt = alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    mean = coef_x0 * x0 + coef_xt * x_t                       # mu-tilde_t, eq. 7
    variance = beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)  # beta-tilde_t, eq. 7
    return mean, variance


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Exercise 3: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0   (Salimans & Ho 2022, section 4)."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t)
    return alpha_bar_t.sqrt() * eps - (1 - alpha_bar_t).sqrt() * x0


def x0_eps_from_v(v: torch.Tensor, x_t: torch.Tensor,
                  alpha_bar_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 4: invert the rotation (x0, eps) -> (x_t, v):
    x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v,  eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t)
    cos_phi, sin_phi = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    return cos_phi * x_t - sin_phi * v, sin_phi * x_t + cos_phi * v


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Exercise 5: alpha_bar(t) = f(t/T) / f(0), f(u) = cos^2(((u + s) / (1 + s)) pi / 2)   (Improved DDPM eq. 17);
    beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), capped at max_beta. Float64 throughout."""
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)   # t / T for t = 0..T
    f = torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2
    alpha_bar = f / f[0]                                            # (T + 1,), alpha_bar[0] = 1
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]                      # (T,)
    return torch.clamp(betas, max=max_beta)


def ddim_step(x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Exercise 6: one DDIM step (DDIM eq. 12), with sigma from eq. 16."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev)
    x0_hat = (x_t - (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()        # "predicted x0"
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt() * (1 - alpha_bar_t / alpha_bar_prev).sqrt()
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps_hat       # "direction pointing to x_t"
    x_prev = alpha_bar_prev.sqrt() * x0_hat + direction
    if eta > 0:
        x_prev = x_prev + sigma * noise                                             # "random noise"
    return x_prev


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch01 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
