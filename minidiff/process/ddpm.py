"""The Gaussian diffusion process: the forward noising, the training targets and the loss.

Paper: Ho et al. 2020, Denoising Diffusion Probabilistic Models (arXiv:2006.11239).
v-prediction: Salimans & Ho 2022, Progressive Distillation (arXiv:2202.00512), section 4.
Min-SNR weighting: Hang et al. 2023, Efficient Diffusion Training via Min-SNR Weighting (arXiv:2303.09556), eq. 7.

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
    min_snr_gamma: None for L_simple (every timestep weighted alike); a number gamma for Min-SNR weighting, which
        caps each timestep's weight in x0 terms at gamma, so that the many nearly clean timesteps (high SNR),
        where denoising is easy, stop dominating the gradient.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", min_snr_gamma: float | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive (5 in the paper) or None, got {min_snr_gamma}")
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma

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

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR weight of each timestep, (B,), for this prediction target (Hang et al. eq. 7 and its table):

            eps:  min(SNR, gamma) / SNR      x0:  min(SNR, gamma)      v:  min(SNR, gamma) / (SNR + 1)

        Each turns the target's squared error into the x0 error times min(SNR, gamma)."""
        snr = self.schedule.snr().to(t.device)[t]                                        # (B,)
        capped = snr.clamp(max=self.min_snr_gamma)
        return {"eps": capped / snr, "x0": capped, "v": capped / (snr + 1)}[self.prediction]

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator | None = None,
             shard: slice = slice(None)) -> torch.Tensor:
        """L_simple = E_{t, x0, eps} || target - model(x_t, t) ||^2 (DDPM eq. 14), averaged over all elements;
        with min_snr_gamma, each sample's squared error is weighted by loss_weight(t) first.

        shard: with several processes (torchrun), this process's examples of the batch x0 (B, ...). The timesteps
        and noise are drawn for the whole batch, as one process would draw them, then sliced: so N processes
        follow the one-process run."""
        t = self.sample_timesteps(x0.shape[0], generator).to(x0.device)                    # (B,)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)   # like x0
        x0, t, eps = x0[shard], t[shard], eps[shard]                     # (b, ...): this process's share
        x_t = self.q_sample(x0, t, eps)
        output = model(x_t, t)
        if self.min_snr_gamma is None:
            return F.mse_loss(output.float(), self.target(x0, t, eps).float())
        per_sample = (output.float() - self.target(x0, t, eps).float()).pow(2).flatten(1).mean(1)   # (B,)
        return (self.loss_weight(t) * per_sample).mean()
