"""Noise schedules: how much noise the forward process adds at each of T steps.

Papers: Ho et al. 2020, DDPM (arXiv:2006.11239), section 4 (linear schedule);
Nichol & Dhariwal 2021, Improved DDPM (arXiv:2102.09672), eq. 17 (cosine schedule);
Rombach et al. 2022, latent diffusion (arXiv:2112.10752), whose code and Stable Diffusion use "scaled linear".

| code            | paper            | meaning                                              |
|-----------------|------------------|------------------------------------------------------|
| `betas[t]`      | beta_t           | variance added by forward step t                     |
| `alphas[t]`     | alpha_t          | 1 - beta_t                                           |
| `alpha_bar[t]`  | alpha-bar_t      | prod_{s<=t} alpha_s: the signal kept after t steps   |
| `alpha_bar_prev`| alpha-bar_{t-1}  | alpha_bar shifted right, with alpha_bar_{-1} = 1     |

Indexing: the papers number steps t = 1..T; minidiff, like diffusers, numbers them t = 0..T-1,
so `betas[0]` is the paper's beta_1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "scaled_linear")


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: beta_t rises linearly from 1e-4 to 0.02 over T = 1000 steps."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent diffusion's and Stable Diffusion's schedule: sqrt(beta_t) rises linearly, from 0.00085 to 0.012.

    It ends at alpha_bar_{T-1} = 0.00466 rather than the cosine schedule's 2.4e-9: the last step keeps a trace of
    signal, and x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) divides by 0.068, not by 5e-5, so an
    unclipped prediction (latents have no [-1, 1] range to clip to) stays finite."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """f(u) = cos^2(((u + s) / (1 + s)) * pi / 2) for u = t / T in [0, 1] (Improved DDPM eq. 17)."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's schedule: alpha_bar_t = f(t/T) / f(0), beta_t = 1 - alpha_bar_t / alpha_bar_{t-1},
    capped at 0.999 so that the last step does not destroy the signal in one go."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = cosine_alpha_bar(u, s)
    betas = 1 - f[1:] / f[:-1]  # f(0) cancels in the ratio
    return betas.clamp(max=max_beta)


@dataclass
class NoiseSchedule:
    """The per-step constants of a variance-preserving diffusion, computed once in float64.

    Every tensor has shape (T,) and lives on the CPU in float32; `at(values, t, x)` gathers the
    entries for a batch of timesteps and reshapes them to broadcast against x.
    """

    betas: torch.Tensor

    def __post_init__(self):
        betas = self.betas.to(torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]; check the schedule's settings")
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.num_steps = len(betas)
        self.betas = betas.float()
        self.alphas = alphas.float()
        self.alpha_bar = alpha_bar.float()
        self.alpha_bar_prev = alpha_bar_prev.float()
        # Posterior q(x_{t-1} | x_t, x0) = N(mean, beta_tilde I), DDPM eq. 6-7.
        self.posterior_variance = (betas * (1 - alpha_bar_prev) / (1 - alpha_bar)).float()
        self.posterior_mean_coef_x0 = (betas * alpha_bar_prev.sqrt() / (1 - alpha_bar)).float()
        self.posterior_mean_coef_xt = ((1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar)).float()

    @classmethod
    def make(cls, name: str = "linear", num_steps: int = 1000) -> "NoiseSchedule":
        """Build a schedule by name: 'linear' (DDPM), 'cosine' (Improved DDPM) or 'scaled_linear' (LDM, SD)."""
        if name == "linear":
            return cls(linear_betas(num_steps))
        if name == "scaled_linear":
            return cls(scaled_linear_betas(num_steps))
        if name == "cosine":
            return cls(cosine_betas(num_steps))
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per step, shape (T,)."""
        return self.alpha_bar / (1 - self.alpha_bar)

    @staticmethod
    def at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """values[t] reshaped to (B, 1, 1, ...) so it broadcasts against x of shape (B, ...)."""
        out = values.to(x.device)[t.to(x.device).long()].to(x.dtype)
        return out.reshape(-1, *([1] * (x.ndim - 1)))
