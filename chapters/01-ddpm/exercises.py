"""Chapter 1 exercises: DDPM and DDIM, one equation at a time, then a U-Net block, a training step and a sampler.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/01-ddpm/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure (the hint gives the formula when your
result is wrong), and exits with the number of exercises that do not pass yet. Use torch only: the point is to
write each equation yourself, so do not call `minidiff.process` or `minidiff.blocks` here (the checks compare
your result with them).

Exercises 1-6 are single equations, checked against minidiff on small inputs. Exercises 7-9 are build-along: the
check puts your code into a real run. Your ResidualBlock replaces every residual block of the toy U-Net, which is
then trained on the digits; your training_step trains the toy U-Net; your ddim_sample, built on your ddim_step,
draws digits from it. The first two pass when the trained network denoises held-out digits well enough and the
digits drawn from it are recognizable and varied; the third when your samples are minidiff's sampler's and as
recognizable (the check prints the numbers). A run trains for 300 steps on one CPU thread, which takes some
seconds to a minute, and prints its progress.

Conventions (the same as minidiff's):
- timesteps are numbered t = 0..T-1, so `alpha_bar[t]` is what the papers call alpha-bar_{t+1};
- `alpha_bar_t`, `alpha_bar_prev` are tensors that broadcast against the images: 0-d, or (B, 1, ..., 1);
- images are (B, C, H, W), 2D points are (B, 2); exercises 1-6 should work for both.

Papers: DDPM, Ho et al. 2020 (arXiv:2006.11239); Improved DDPM, Nichol & Dhariwal 2021 (arXiv:2102.09672);
DDIM, Song et al. 2021 (arXiv:2010.02502); v-prediction, Salimans & Ho 2022 (arXiv:2202.00512).
"""
from __future__ import annotations

import math  # noqa: F401 (you may want math.pi)

import torch
import torch.nn.functional as F  # noqa: F401 (you may want F.silu, F.mse_loss)
from torch import nn


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Exercise 1. Noise a batch of clean samples to their timesteps in one jump.

    Compute a sample x_t of the forward process's marginal q(x_t | x0) (DDPM eq. 4), written with a standard
    normal eps instead of a random draw (the reparameterisation DDPM uses in eq. 9-14), so that the same x0, t
    and eps always give the same x_t. Each sample of the batch has its own timestep.

    Args:
        x0: clean samples, (B, ...) (images (B, C, H, W) or points (B, 2)).
        t: (B,) integer timesteps in 0..T-1, one per sample.
        eps: standard normal noise, the same shape as x0.
        alpha_bar: (T,) the whole table of alpha-bar values, alpha_bar[t] = prod_{s <= t} (1 - beta_s).
    Returns:
        x_t, the same shape as x0.
    """
    raise NotImplementedError("Exercise 1: write x_t from x0, eps and alpha_bar[t] (DDPM eq. 4)")


def posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor,
                            alpha_bar_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 2. The forward process run backwards, when x0 is known.

    Compute the mean mu-tilde_t and the variance beta-tilde_t of the Gaussian q(x_{t-1} | x_t, x0) (DDPM eq. 6-7).

    Take alpha_t and beta_t from the two alpha-bars you are given, not from a table of betas: then the same code
    serves a respaced schedule, where "t - 1" means the previous timestep visited. The checks pass the alpha-bars
    as float64 0-d tensors; keep that precision (at small t, beta_t is a small difference of two numbers close
    to 1).

    Args:
        x0, x_t: (B, ...) tensors of the same shape.
        alpha_bar_t: alpha-bar at step t; alpha_bar_prev: alpha-bar at the previous step (1.0 before the first).
    Returns:
        (mean, variance): mean has the shape of x0; variance broadcasts against it (a 0-d tensor is fine).
    """
    raise NotImplementedError("Exercise 2: write mu-tilde and beta-tilde (DDPM eq. 7)")


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Exercise 3. The "velocity" target used by v-prediction models (Salimans & Ho 2022, section 4).

    The noisy sample of exercise 1 is the pair (x0, eps) rotated by an angle phi that grows from 0 (clean) to
    pi/2 (pure noise) as alpha_bar_t falls from 1 to 0. Compute v, the derivative of x_t with respect to phi.

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
    Check your answer by substituting exercise 3.

    Args:
        v: the (predicted) velocity, (B, ...); x_t: the noisy input, same shape.
        alpha_bar_t: broadcasts against x_t.
    Returns:
        (x0_hat, eps_hat), each the shape of x_t.
    """
    raise NotImplementedError("Exercise 4: solve for x0 and eps given x_t and v")


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Exercise 5. The cosine noise schedule (Improved DDPM eq. 17).

    Build alpha-bar at t = 0, 1, ..., T from the paper's squared cosine of t/T (shifted by the offset s, and
    normalised so that alpha-bar is 1 at t = 0), then return the T betas whose running product of (1 - beta)
    gives back that alpha-bar, each capped at max_beta. The cap (section 3.2 of the paper) matters at the very
    end, where alpha-bar reaches 0 and the last beta would be 1; the offset keeps the first betas from being
    vanishingly small.

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

    From the current sample and the network's noise prediction, estimate x0 (undo exercise 1), then move to the
    next timestep's noise level as eq. 12 does: the "predicted x0" part, the "direction pointing to x_t" part
    and, when eta > 0, the "random noise" part, whose scale sigma (eq. 16) is eta times the DDPM posterior's
    standard deviation. (The DDIM paper writes alpha_t for what DDPM and minidiff call alpha_bar_t.) With eta = 0
    the step is deterministic: ignore `noise`. With eta = 1 it becomes DDPM's ancestral step with variance
    beta-tilde.

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


class ResidualBlock(nn.Module):
    """Exercise 7 (build-along). The residual block of DDPM's U-Net, which takes the timestep.

    DDPM, appendix B: the U-Net is built from Wide-ResNet blocks with group normalisation, and "the diffusion
    time t is specified by adding the Transformer sinusoidal position embedding into each residual block". The
    U-Net computes the timestep embedding `temb` once; each block projects it to its own width.

    Build these layers, with exactly these names (the check copies minidiff's weights into your block by name):
        norm1          GroupNorm with `groups` groups over in_channels, epsilon `eps`
        conv1          3x3 convolution, in_channels -> out_channels, padding 1
        time_emb_proj  Linear, temb_dim -> out_channels
        norm2          GroupNorm with `groups` groups over out_channels, epsilon `eps`
        conv2          3x3 convolution, out_channels -> out_channels, padding 1
        conv_shortcut  1x1 convolution in_channels -> out_channels when the two differ; None when they are equal

    forward(x, temb): the residual branch is normalise, SiLU, convolve (norm1, conv1); then add the timestep
    embedding, after a SiLU and time_emb_proj, to every pixel of every channel; then normalise, SiLU, convolve
    again (norm2, conv2). The output is the branch plus the skip: x itself, or conv_shortcut(x) when the number
    of channels changes.

    Args:
        in_channels, out_channels: C_in and C_out. temb_dim: D, the width of the timestep embedding.
        groups: GroupNorm groups (the toy U-Net uses 8). eps: GroupNorm's epsilon.
    forward:
        x (B, C_in, H, W), temb (B, D) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int = 8, eps: float = 1e-6):
        super().__init__()
        raise NotImplementedError("Exercise 7: build norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut")

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 7: the residual branch with the timestep added, plus the skip")


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
                  alpha_bar: torch.Tensor) -> float:
    """Exercise 8 (build-along). One step of DDPM training on a batch (DDPM Algorithm 1, the loss of eq. 14).

    For every sample of the batch draw a timestep, uniformly from 0..T-1 (T = len(alpha_bar)), and standard
    normal noise eps of the sample's shape; use torch.randint and torch.randn (the global generator, which the
    check seeds: do not seed it yourself). Noise x0 to x_t with your q_sample (exercise 1); the network predicts
    the noise, model(x_t, t) with t a (B,) long tensor; the loss is the mean squared error between that
    prediction and eps, averaged over every element ("L_simple"). Then clear the old gradients, backpropagate
    and take one optimizer step.

    Args:
        model: the network, (x_t (B, C, H, W), t (B,)) -> eps prediction (B, C, H, W).
        optimizer: an optimizer over model's parameters (the check's sets the learning rate).
        x0: a batch of clean images, (B, C, H, W) in [-1, 1].
        alpha_bar: (T,) the schedule's alpha-bar table.
    Returns:
        the batch's loss, a Python float.
    """
    raise NotImplementedError("Exercise 8: draw t and eps, noise x0, predict, MSE, backward, optimizer step")


def ddim_sample(model: nn.Module, x_T: torch.Tensor, alpha_bar: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Exercise 9 (build-along). Deterministic DDIM sampling (eta = 0): the loop around your ddim_step.

    Start from x_T, pure noise. Visit the timesteps in the order given (decreasing): at each, the network predicts
    the noise in the current sample, model(x, t) with t a (B,) long tensor holding that timestep; your ddim_step
    (exercise 6) then moves the sample to the noise level of the next timestep in the list, and after the last
    one to clean data, alpha-bar = 1 (DDIM eq. 12 on a sub-sequence of timesteps, section 4.2). The network needs
    no gradients here: run the loop under torch.no_grad().

    Args:
        model: the trained network, (x_t (B, C, H, W), t (B,)) -> eps prediction (B, C, H, W).
        x_T: (B, C, H, W) standard normal noise.
        alpha_bar: (T,) the schedule's alpha-bar table.
        timesteps: the K timesteps to visit, decreasing, e.g. [999, 949, ..., 49] for K = 20 of T = 1000.
    Returns:
        the samples x0, (B, C, H, W).
    """
    raise NotImplementedError("Exercise 9: loop over the timesteps, predict eps, call your ddim_step")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch01 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
