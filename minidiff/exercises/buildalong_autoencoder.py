"""The short autoencoder trainings behind Chapter 2's build-along exercises (minidiff/exercises/ch02.py).

A build-along check puts the learner's code into minidiff's real autoencoder (`Autoencoder`, a tiny config) and
trains it with minidiff's real loop (`minidiff.training.loop.train`) on Shapes scenes, then measures what the
training gave: the loss curve, the reconstruction PSNR of held-out scenes, the posterior's statistics. Everything
is seeded, so one implementation always gets the same numbers at one thread.

| name             | what                                                                                   |
|------------------|----------------------------------------------------------------------------------------|
| `TINY`           | the autoencoder trained: AutoencoderConfig.toy at widths (8, 16), f = 2, 16 x 16 images |
| `TRAIN`          | 100 AdamW steps of 16 images, lr 1e-2 (warmup 5, cosine): about 5 s at one CPU thread   |
| `shapes_images`  | Shapes scenes at 16 x 16 in [-1, 1]: 512 to train on, 64 held out (the validation split) |
| `train_briefly`  | runs the real loop in a temporary folder and returns the trained model and the losses  |
| `reconstruction_psnr`, `posterior_statistics` | what the checks hold the trained model to               |

Floors and bands were measured on the reference solutions and on broken versions; ch02.py says which.
"""
from __future__ import annotations

import copy
import tempfile
import time

import torch

from minidiff.data.shapes_dataset import shapes_tensors
from minidiff.exercises.checking import one_thread
from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.training.autoencoder import psnr
from minidiff.training.loop import TrainConfig, train

SIZE = 16                                      # image side: 16 x 16 scenes, latents 8 x 8 x 4
TINY = AutoencoderConfig.toy(block_channels=(8, 16), norm_groups=4, sample_size=SIZE)   # 43,711 parameters
TRAIN = TrainConfig(steps=100, batch_size=16, lr=1e-2, warmup_steps=5, log_every=100, sample_every=0,
                    checkpoint_every=100, device="cpu", seed=0)
TRAIN_EXAMPLES, HELD_OUT = 512, 64


def shapes_images(split: str) -> torch.Tensor:
    """Shapes scenes (N, 3, 16, 16) in [-1, 1]: the first 512 of the train split or the first 64 of validation.
    (Contiguous, as shapes_tensors hands them out: a learner's block that detaches its input must not crash.)"""
    n = TRAIN_EXAMPLES if split == "train" else HELD_OUT
    return shapes_tensors(split, n, SIZE)[0]                                   # (N, 3, 16, 16)


def tiny_autoencoder(seed: int = 0) -> Autoencoder:
    """A freshly initialised TINY autoencoder, the same weights for the same seed; the global RNG is left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Autoencoder(copy.deepcopy(TINY))


def train_briefly(model: torch.nn.Module, objective, what: str,
                  config: TrainConfig = TRAIN) -> tuple[torch.nn.Module, list[float], float]:
    """Train `model` with `objective` in minidiff's loop for config.steps steps on the Shapes training scenes.

    Prints one line before (what is trained) and one after (time and losses), for the learner watching.
    Returns (the trained model, in eval mode; the loss of every step; the seconds it took)."""
    print(f"      training {what}: {config.steps} steps of {config.batch_size} Shapes scenes at {SIZE}x{SIZE} "
          f"(a few seconds) ...", flush=True)
    data = shapes_images("train")
    start = time.perf_counter()
    with one_thread(), tempfile.TemporaryDirectory(prefix="minidiff-exercise-") as run_dir:
        model, _, logs = train(model, objective, data, copy.deepcopy(config), run_dir, {"recipe": "exercise"},
                               progress=False)
    seconds = time.perf_counter() - start
    losses = [record["loss"] for record in logs]
    print(f"      done in {seconds:.1f} s: loss {losses[0]:.4f} at the first step, {losses[-1]:.4f} at the last",
          flush=True)
    return model.eval(), losses, seconds


def loss_fell(losses: list[float], by: float = 0.5) -> bool:
    """Whether the mean loss of the last 10 steps is below `by` times that of the first 10."""
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    return last < by * first


@torch.no_grad()
def reconstruction_psnr(model: Autoencoder, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of images (N, 3, H, W) in [-1, 1] reconstructed through the posterior mean."""
    with one_thread():
        x_hat = model.decode(model.encode(images).mean)                        # (N, 3, H, W)
    return psnr(images, x_hat).mean().item()


@torch.no_grad()
def posterior_statistics(model: Autoencoder, images: torch.Tensor) -> dict[str, float]:
    """What the KL term shapes: the posterior of images (N, 3, H, W) over its (N, L, h, w) latent elements.

    kl_per_element: KL(q(z|x) || N(0, I)) per latent element, averaged; sigma: the mean posterior standard
    deviation; mean_rms: the root mean square of the posterior means."""
    with one_thread():
        posterior = model.encode(images)
    elements = posterior.mean[0].numel()                                       # L * h * w
    return {"kl_per_element": (posterior.kl() / elements).mean().item(),
            "sigma": posterior.std.mean().item(),
            "mean_rms": posterior.mean.pow(2).mean().sqrt().item()}
