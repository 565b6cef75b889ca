"""Chapter 1 exercises: reference solutions (for instructors).

Each function is written from the paper's equations, not by calling minidiff, so that the checks in
`minidiff.exercises.ch01` compare two independent implementations. Same signatures as exercises.py.

    python instructors/solutions/01-ddpm.py        # every check passes: exit status 0

Exercises 7-9 are build-along: ResidualBlock is DDPM's U-Net block (appendix B), training_step is Algorithm 1 and
uses this file's q_sample, ddim_sample is the DDIM loop around this file's ddim_step.

Papers: DDPM (arXiv:2006.11239), Improved DDPM (arXiv:2102.09672), DDIM (arXiv:2010.02502),
v-prediction: Salimans & Ho (arXiv:2202.00512). minidiff numbers timesteps t = 0..T-1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


class ResidualBlock(nn.Module):
    """Exercise 7: DDPM's residual block (appendix B: Wide ResNet with GroupNorm, the timestep added inside).

        h   = conv1(SiLU(norm1(x)))                                  (B, C_out, H, W)
        h   = h + time_emb_proj(SiLU(temb))[:, :, None, None]        the timestep, broadcast over H, W
        h   = conv2(SiLU(norm2(h)))
        out = skip(x) + h,  skip = identity, or a 1x1 conv when C_in != C_out
    """

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int = 8, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)   # 1x1: match the channels
                              if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), temb (B, D) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))                                   # (B, C_out, H, W)
        h = h + self.time_emb_proj(F.silu(temb)).reshape(*temb.shape[:1], -1, 1, 1)   # + (B, C_out, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))                                   # (B, C_out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)       # (B, C_out, H, W)
        return skip + h


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
                  alpha_bar: torch.Tensor) -> float:
    """Exercise 8: DDPM Algorithm 1 on a batch. t ~ Uniform{0..T-1}, eps ~ N(0, I), x_t from q_sample (eq. 4),
    L_simple = mean (eps - eps_theta(x_t, t))^2 (eq. 14), one gradient step."""
    B = x0.shape[0]
    t = torch.randint(0, alpha_bar.shape[0], (B,), device=x0.device)         # (B,) long
    eps = torch.randn_like(x0)                                               # (B, C, H, W)
    x_t = q_sample(x0, t, eps, alpha_bar)                                    # exercise 1
    loss = ((model(x_t, t) - eps) ** 2).mean()                               # L_simple, eq. 14
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def ddim_sample(model: nn.Module, x_T: torch.Tensor, alpha_bar: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Exercise 9: deterministic DDIM (eta = 0) over the given decreasing timesteps, ending at alpha-bar = 1."""
    x = x_T                                                                  # (B, C, H, W)
    one = torch.ones((), dtype=alpha_bar.dtype)
    for i, t in enumerate(timesteps):
        alpha_bar_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else one
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)   # (B,)
        eps_hat = model(x, t_batch)                                          # (B, C, H, W)
        x = ddim_step(x, eps_hat, alpha_bar[t], alpha_bar_prev)              # exercise 6, eta = 0
    return x


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch01 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
