"""Chapter 1 exercises: DDPM and DDIM, one equation at a time.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/01-ddpm/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure, and exits with a non-zero status
until all six pass. Use torch only: the point is to write each formula yourself, so do not call
`minidiff.process` here (the checks compare your result with it).

Conventions (the same as minidiff's):
- timesteps are numbered t = 0..T-1, so `alpha_bar[t]` is what the papers call alpha-bar_{t+1};
- `alpha_bar_t`, `alpha_bar_prev` are tensors that broadcast against the images: 0-d, or (B, 1, ..., 1);
- images are (B, C, H, W), 2D points are (B, 2); your functions should work for both.

Papers: DDPM, Ho et al. 2020 (arXiv:2006.11239); Improved DDPM, Nichol & Dhariwal 2021 (arXiv:2102.09672);
DDIM, Song et al. 2021 (arXiv:2010.02502); v-prediction, Salimans & Ho 2022 (arXiv:2202.00512).
"""
from __future__ import annotations

import math  # noqa: F401 (you may want math.pi)

import torch


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Exercise 1. Noise a batch of clean samples to their timesteps in one jump.

    DDPM eq. 4 gives the marginal of the forward process, q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I);
    written with a standard normal eps (the reparameterisation used in eq. 9-14):

        x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps

    Args:
        x0: clean samples, (B, ...) (images (B, C, H, W) or points (B, 2)).
        t: (B,) integer timesteps in 0..T-1, one per sample.
        eps: standard normal noise, the same shape as x0.
        alpha_bar: (T,) the whole table of alpha-bar values, alpha_bar[t] = prod_{s <= t} (1 - beta_s).
    Returns:
        x_t, the same shape as x0.

    Hint: gather alpha_bar[t] (shape (B,)), then reshape it to (B, 1, ..., 1) so it broadcasts over x0.
    """
    raise NotImplementedError("Exercise 1: write x_t from x0, eps and alpha_bar[t] (DDPM eq. 4)")


def posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor,
                            alpha_bar_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 2. The forward process run backwards, when x0 is known.

    DDPM eq. 6-7: q(x_{t-1} | x_t, x0) = N(mu_tilde_t, beta_tilde_t I) with

        mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0
                     + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

    Take alpha_t = alpha_bar_t / alpha_bar_prev and beta_t = 1 - alpha_t from the two alpha-bars: then the same
    code serves a respaced schedule, where "t - 1" means the previous timestep visited. The checks pass the
    alpha-bars as float64 0-d tensors; keep that precision (at small t, beta_t is a small difference of two
    numbers close to 1).

    Args:
        x0, x_t: (B, ...) tensors of the same shape.
        alpha_bar_t: alpha-bar at step t; alpha_bar_prev: alpha-bar at the previous step (1.0 before the first).
    Returns:
        (mean, variance): mean has the shape of x0; variance broadcasts against it (a 0-d tensor is fine).
    """
    raise NotImplementedError("Exercise 2: write mu-tilde and beta-tilde (DDPM eq. 7)")


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Exercise 3. The "velocity" target used by v-prediction models (Salimans & Ho 2022, section 4).

    Write x_t = cos(phi) x0 + sin(phi) eps with cos(phi) = sqrt(alpha_bar_t), sin(phi) = sqrt(1 - alpha_bar_t).
    v is the derivative of x_t with respect to phi:

        v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0

    Args:
        x0, eps: (B, ...) tensors of the same shape.
        alpha_bar_t: broadcasts against x0, e.g. (B, 1, 1, 1).
    Returns:
        v, the same shape as x0.
    """
    raise NotImplementedError("Exercise 3: write v from x0, eps and alpha_bar_t")


def x0_eps_from_v(v: torch.Tensor, x_t: torch.Tensor,
                  alpha_bar_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 4. Turn a v-prediction back into estimates of x0 and eps.

    (x_t, v) is (x0, eps) rotated by the angle phi of exercise 3. Undo the rotation to get x0_hat and eps_hat:
    this is what a sampler does with a v-predicting network, which then proceeds exactly as with eps.

    Args:
        v: the (predicted) velocity, (B, ...); x_t: the noisy input, same shape.
        alpha_bar_t: broadcasts against x_t.
    Returns:
        (x0_hat, eps_hat), each the shape of x_t.

    Hint: the inverse of a rotation matrix is its transpose. Check your answer by substituting exercise 3.
    """
    raise NotImplementedError("Exercise 4: solve for x0 and eps given x_t and v")


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Exercise 5. The cosine noise schedule (Improved DDPM eq. 17).

        alpha_bar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi / 2 ),   t = 0, 1, ..., T
        beta_i = min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta),                  i = 0, ..., T-1

    The cap at 0.999 (section 3.2 of the paper) matters at the very end, where f(T) = cos^2(pi/2) = 0 would give
    beta = 1; the offset s keeps the first betas from being vanishingly small.

    Args:
        num_steps: T. s: the offset. max_beta: the cap.
    Returns:
        betas, a float64 tensor of shape (num_steps,). (Compute in float64: in float32 the first betas,
        about 4e-5, keep only a few significant digits.)
    """
    raise NotImplementedError("Exercise 5: build alpha_bar from f, then the capped betas (Improved DDPM eq. 17)")


def ddim_step(x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Exercise 6. One step of DDIM sampling (DDIM eq. 12, with sigma from eq. 16).

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_bar_t)                    "predicted x0"
        x_prev = sqrt(alpha_bar_prev) * x0_hat
               + sqrt(1 - alpha_bar_prev - sigma^2) * eps_hat                      "direction pointing to x_t"
               + sigma * noise                                                                 "random noise"
        sigma  = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)

    (The DDIM paper writes alpha_t for what DDPM and minidiff call alpha_bar_t.) With eta = 0 the step is
    deterministic: ignore `noise`. With eta = 1 it becomes DDPM's ancestral step with variance beta-tilde.

    Args:
        x_t: (B, ...) current sample. eps_hat: the network's noise prediction, same shape.
        alpha_bar_t: alpha-bar at the current timestep; alpha_bar_prev: at the next timestep the sampler visits
            (1.0 after the last step).
        eta: 0 for deterministic DDIM, 1 for DDPM-like sampling.
        noise: standard normal, the shape of x_t; used only when eta > 0.
    Returns:
        x_prev, the shape of x_t.
    """
    raise NotImplementedError("Exercise 6: write the DDIM update (DDIM eq. 12 and 16)")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch01 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
