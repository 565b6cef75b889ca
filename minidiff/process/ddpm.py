"""The Gaussian diffusion process: the forward noising, the training targets and the loss.

Paper: Ho et al. 2020, Denoising Diffusion Probabilistic Models (arXiv:2006.11239).
v-prediction: Salimans & Ho 2022, Progressive Distillation (arXiv:2202.00512), section 4.

| code          | paper                         |
|---------------|-------------------------------|
| `x0`          | x_0, a clean sample           |
| `x_t`         | x_t, the sample after t steps |
| `eps`         | epsilon ~ N(0, I)             |
| `alpha_bar`   | alpha-bar_t                   |
| `v`           | v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 |

The process knows nothing about the network: `model` is any callable `(x_t, t) -> prediction`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from minidiff.process.schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    """Forward process q(x_t | x0) and the simple loss, for one schedule and one prediction target.

    prediction: what the network outputs, 'eps' (DDPM), 'x0', or 'v' (needed from Chapter 3 on).
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        self.schedule = schedule
        self.prediction = prediction

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T-1}, shape (B,)."""
        return torch.randint(0, self.num_steps, (batch_size,), generator=generator)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps   (DDPM eq. 4, reparameterized)."""
        alpha_bar = NoiseSchedule.at(self.schedule.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network should output for this (x0, eps) pair."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        alpha_bar = NoiseSchedule.at(self.schedule.alpha_bar, t, x0)
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0  # v

    def predict_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Turn the network's output into both x0-hat and eps-hat (they determine each other given x_t)."""
        alpha_bar = NoiseSchedule.at(self.schedule.alpha_bar, t, x_t)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction == "eps":
            eps = output
            x0 = (x_t - s * eps) / a  # invert q_sample
        elif self.prediction == "x0":
            x0 = output
            eps = (x_t - a * x0) / s
        else:  # v
            x0 = a * x_t - s * output
            eps = s * x_t + a * output
        return x0, eps

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple = E_{t, x0, eps} || target - model(x_t, t) ||^2 (DDPM eq. 14), averaged over all elements."""
        t = self.sample_timesteps(x0.shape[0], generator).to(x0.device)                    # (B,)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)   # like x0
        x_t = self.q_sample(x0, t, eps)
        output = model(x_t, t)
        return F.mse_loss(output.float(), self.target(x0, t, eps).float())
