"""Where Chapter 1's build-along exercises run: a short training of the toy U-Net on digits, then sampling it.

A build-along check plugs a learner's part into this run (their residual block inside the U-Net, their training
step in the loop, their sampling loop after it) and holds the trained network and its samples to floors: the
denoising error on held-out digits, and the recognizability and coverage of minidiff.eval.digits. Everything is
seeded, so a pass or a failure repeats.

| setting        | value                                                                          |
|----------------|--------------------------------------------------------------------------------|
| data           | the 1500 training digits at 16x16, pixels in [-1, 1] (`digits_tensors`)        |
| network        | `UNet(UNetConfig.toy())`, 687,636 parameters                                   |
| process        | cosine schedule (Improved DDPM eq. 17), T = 1000, eps-prediction, L_simple     |
| optimiser      | AdamW, peak lr 4e-3 after 50 warmup steps, cosine decay, batch 64, 300 steps   |
| sampler        | DDIM with eta = 0, 20 'trailing' steps, x0_hat clipped to [-1, 1], 256 samples |

The floors in minidiff.exercises.ch01 were measured on this run (three seeds, and untrained and broken networks).
It runs on one CPU thread (checking.build_along sees to that): on a loaded 2-core machine the first 100 training
steps took 532 s with torch's default threads and 18-28 s with one.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from minidiff.data.digits import digits_tensors
from minidiff.eval.digits import digit_metrics
from minidiff.models.unet import UNet, UNetConfig
from minidiff.process import GaussianDiffusion, NoiseSchedule, sample, timesteps

IMAGE_SIZE = 16
TRAIN_STEPS = 300
BATCH_SIZE = 64
PEAK_LR = 4e-3
WARMUP_STEPS = 50
SAMPLE_STEPS = 20
NUM_SAMPLES = 256
SEED = 0

# A training step: step(model, optimizer, x0 (B, 1, 16, 16), alpha_bar (T,)) -> the batch's loss as a float.
Step = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], float]


class TrainingFailed(Exception):
    """The loss became NaN or inf, or the learner's step raised; the message says at which step."""


def digits_diffusion() -> GaussianDiffusion:
    """The process every build-along run uses: cosine schedule, T = 1000, the network predicts eps."""
    return GaussianDiffusion(NoiseSchedule.make("cosine", 1000), prediction="eps")


def toy_unet(seed: int = SEED) -> UNet:
    """The toy U-Net with seeded initial weights (a learner's block swapped in later draws from the same seed)."""
    torch.manual_seed(seed)
    return UNet(UNetConfig.toy())


def reference_step(diffusion: GaussianDiffusion, generator: torch.Generator) -> Step:
    """minidiff's own training step: L_simple (DDPM eq. 14) from GaussianDiffusion.loss, backward, AdamW step."""
    def step(model: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor, alpha_bar: torch.Tensor) -> float:
        loss = diffusion.loss(model, x0, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def learning_rate(step: int, steps: int) -> float:
    """Linear warmup to PEAK_LR over WARMUP_STEPS, then cosine decay to 0 at the last step."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * progress))


def train_toy_unet(model: nn.Module, step: Step, steps: int = TRAIN_STEPS, seed: int = SEED,
                   say: Callable[[str], None] = print) -> list[float]:
    """Train `model` on the digits with `step`, one call per batch; return the losses.

    The batches come from a generator seeded with `seed`; the global generator is seeded too, for a step that
    draws its timesteps and noise with torch.randint / torch.randn. Raises TrainingFailed when the step raises
    or returns a loss that is not a finite number."""
    images, _ = digits_tensors("train", IMAGE_SIZE)                     # (1500, 1, 16, 16) in [-1, 1]
    alpha_bar = digits_diffusion().schedule.alpha_bar                   # (T,)
    batches = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for i in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(i, steps)
        x0 = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=batches)]   # (B, 1, 16, 16)
        try:
            loss = step(model, optimizer, x0, alpha_bar)
        except NotImplementedError:
            raise
        except Exception as e:
            raise TrainingFailed(f"training step {i} raised {type(e).__name__}: {e}") from e
        loss = float(loss.detach()) if torch.is_tensor(loss) else loss
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise TrainingFailed(f"training step {i} returned the loss {loss!r}, not a finite number")
        losses.append(float(loss))
        if (i + 1) % 100 == 0:
            say(f"    step {i + 1}/{steps}: loss {sum(losses[-100:]) / 100:.4f} "
                f"({time.perf_counter() - start:.1f} s)")
    model.eval()
    return losses


def initial_noise(n: int = NUM_SAMPLES, seed: int = SEED) -> torch.Tensor:
    """x_T ~ N(0, I), (n, 1, 16, 16), from a seeded generator."""
    return torch.randn((n, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))


def sampling_timesteps(steps: int = SAMPLE_STEPS) -> list[int]:
    """The K decreasing timesteps DDIM visits: 'trailing' spacing, from T-1 down (minidiff.process.timesteps)."""
    return timesteps(digits_diffusion().num_steps, steps, "trailing")


@torch.no_grad()
def reference_samples(model: nn.Module, x_T: torch.Tensor, steps: int = SAMPLE_STEPS,
                      clip_x0: bool = True) -> torch.Tensor:
    """minidiff's DDIM sampler (eta = 0) from x_T: (N, 1, 16, 16). clip_x0 clips each step's x0_hat to [-1, 1]
    (diffusers' clip_sample): after 300 steps the network's early estimates of x0 still overshoot, and the
    clipped samples tell a trained network from an untrained one much more clearly (see minidiff.exercises.ch01)."""
    model.eval()
    return sample(model, digits_diffusion(), tuple(x_T.shape), "ddim", steps, eta=0.0, clip_x0=clip_x0,
                  initial_noise=x_T)


@torch.no_grad()
def heldout_error(model: nn.Module, seed: int = SEED) -> float:
    """The trained network's denoising error on the 297 held-out test digits: the mean squared error of its eps
    prediction, each digit noised at 4 timesteps spread over 0..T-1 with seeded noise. A precise measure of how
    much the network learned (the loss of an untrained toy U-Net is about 1, of a trained one about 0.1)."""
    diffusion = digits_diffusion()
    images, _ = digits_tensors("test", IMAGE_SIZE)                       # (297, 1, 16, 16)
    g = torch.Generator().manual_seed(seed)
    model.eval()
    errors = []
    for t_value in (50, 300, 600, 900):
        t = torch.full((len(images),), t_value, dtype=torch.long)
        eps = torch.randn(images.shape, generator=g)
        errors.append(torch.mean((model(diffusion.q_sample(images, t, eps), t) - eps) ** 2).item())
    return sum(errors) / len(errors)


def judge(images: torch.Tensor) -> dict:
    """digit_metrics of samples, clamped to [-1, 1] first (a sampler's last step can overshoot a little)."""
    return digit_metrics(images.clamp(-1, 1))
