"""Samplers: run the learned reverse process from pure noise back to data.

Papers: Ho et al. 2020, DDPM (arXiv:2006.11239), Algorithm 2 and eq. 6-7, 11;
Song, Meng & Ermon 2021, DDIM (arXiv:2010.02502), eq. 12 and 16.

| code              | paper                                         |
|-------------------|-----------------------------------------------|
| `x_t`, `x_prev`   | x_t, x_{t-1} (on a sub-sequence: the previous timestep in it) |
| `x0_hat`, `eps_hat` | the network's estimates of x_0 and epsilon  |
| `alpha_bar`, `alpha_bar_prev` | alpha-bar_t, alpha-bar_{t-1} (after the last step: 1, or alpha-bar_0) |
| `variance`        | sigma_t^2: 'beta' (beta_t, "fixed large") or 'beta_tilde' (posterior, "fixed small") |
| `eta`             | DDIM's eta: 0 is deterministic, 1 is DDPM-like |

Each step takes the model's output, so a step can be tested without a network; `sample` is the loop.
On a sub-sequence of K < T steps, DDPM recomputes beta from alpha-bar: beta' = 1 - alpha_bar_t / alpha_bar_prev.
"""
from __future__ import annotations

import torch

from minidiff.process.ddpm import GaussianDiffusion, Model

SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("beta", "beta_tilde")
SPACINGS = ("trailing", "leading")


def timesteps(num_train_steps: int, num_steps: int, spacing: str = "trailing", steps_offset: int = 0) -> list[int]:
    """The decreasing timesteps a sampler visits.

    'trailing' ends at T-1 and spaces evenly down from it (so few-step sampling starts from pure noise);
    'leading' is diffusers' default: 0, T/K, 2T/K, ... reversed. With K = T both give T-1, ..., 0.
    steps_offset shifts the 'leading' timesteps up (diffusers' steps_offset; SD 1.x/2.x's scheduler configs have 1:
    981, 961, ..., 1 for K = 50); 'trailing' already ends at T-1 and takes none.
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"steps must be between 1 and {num_train_steps}, got {num_steps}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset={steps_offset} applies to 'leading' spacing only; pass steps_offset=0")
    if spacing == "trailing":
        stride = num_train_steps / num_steps
        return [round(num_train_steps - i * stride) - 1 for i in range(num_steps)]
    if spacing == "leading":
        stride = num_train_steps // num_steps
        if steps_offset < 0 or (num_steps - 1) * stride + steps_offset >= num_train_steps:
            raise ValueError(f"steps_offset={steps_offset} with {num_steps} leading steps gives timesteps outside "
                             f"0..{num_train_steps - 1}; use fewer steps or a smaller offset")
        return [i * stride + steps_offset for i in reversed(range(num_steps))]
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def _alpha_bars(diffusion: GaussianDiffusion, t: int, t_prev: int):
    alpha_bar = diffusion.schedule.alpha_bar
    return alpha_bar[t], (alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0))


def ddpm_step(diffusion: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
              noise: torch.Tensor | None, variance: str = "beta_tilde", clip_x0: bool = False) -> torch.Tensor:
    """One ancestral step x_t -> x_prev ~ N(mu_tilde(x0_hat, x_t), sigma^2 I).

    mu_tilde = sqrt(alpha_bar_prev) beta / (1 - alpha_bar) x0_hat + sqrt(alpha) (1 - alpha_bar_prev) / (1 - alpha_bar) x_t
    (DDPM eq. 7, with x0 replaced by the network's estimate, clipped to [-1, 1] if clip_x0).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    alpha_bar, alpha_bar_prev = _alpha_bars(diffusion, t, t_prev)
    alpha = alpha_bar / alpha_bar_prev
    beta = 1 - alpha
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device)
    x0_hat, _ = diffusion.predict_x0_eps(output, x_t, t_batch)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0_hat \
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    if t_prev < 0 or noise is None:  # the last step adds no noise (Algorithm 2, z = 0 when t = 1)
        return mean
    if variance == "beta":
        sigma2 = beta
    else:
        sigma2 = (beta * (1 - alpha_bar_prev) / (1 - alpha_bar)).clamp(min=1e-20)
    return mean + sigma2.sqrt() * noise


def ddim_step(diffusion: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
              noise: torch.Tensor | None, eta: float = 0.0, clip_x0: bool = False) -> torch.Tensor:
    """One DDIM step (eq. 12):
    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_prev)   (eq. 16).
    """
    alpha_bar, alpha_bar_prev = _alpha_bars(diffusion, t, t_prev)
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device)
    x0_hat, eps_hat = diffusion.predict_x0_eps(output, x_t, t_batch)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps_hat
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def sample(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, variance: str = "beta_tilde", clip_x0: bool = False,
           spacing: str = "trailing", generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           return_trajectory: bool = False, initial_noise: torch.Tensor | None = None, steps_offset: int = 0,
           final_timestep: int = -1):
    """Draw samples of `shape` (B, ...) by running the reverse process from x_T ~ N(0, I).

    sampler 'ddpm' (ancestral; `variance` picks sigma^2) or 'ddim' (`eta`). steps defaults to T for DDPM
    and 50 for DDIM. initial_noise: x_T itself (of `shape`), to start two pipelines from the same noise;
    otherwise it is drawn from `generator`. steps_offset shifts 'leading' timesteps (see `timesteps`).
    final_timestep: where the last step lands: -1 is the clean data (alpha_bar = 1, as in the DDIM paper); 0 stops
    at alpha_bar_0 (diffusers' set_alpha_to_one=False, in SD 1.x/2.x's scheduler configs). Returns x0 of `shape`, or
    (x0, trajectory) where trajectory is a list of (t, x_t) pairs on the CPU, one per step, starting with the
    initial noise.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = steps or (diffusion.num_steps if sampler == "ddpm" else 50)
    if final_timestep not in (-1, 0):
        raise ValueError(f"final_timestep must be -1 (clean data) or 0 (alpha_bar_0), got {final_timestep}")
    ts = timesteps(diffusion.num_steps, steps, spacing, steps_offset)
    randn = lambda: torch.randn(shape, generator=generator).to(device)  # noqa: E731 (draws on the CPU: same on any device)
    if initial_noise is not None and tuple(initial_noise.shape) != tuple(shape):
        raise ValueError(f"initial_noise has shape {tuple(initial_noise.shape)} but samples have shape {tuple(shape)}")
    x = randn() if initial_noise is None else initial_noise.to(device)
    trajectory = [(diffusion.num_steps, x.cpu())]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else final_timestep
        output = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).float()
        noise = randn() if t_prev >= 0 and (sampler == "ddpm" or eta > 0) else None
        if sampler == "ddpm":
            x = ddpm_step(diffusion, output, x, t, t_prev, noise, variance, clip_x0)
        else:
            x = ddim_step(diffusion, output, x, t, t_prev, noise, eta, clip_x0)
        if return_trajectory:
            trajectory.append((t, x.cpu()))
    return (x, trajectory) if return_trajectory else x
