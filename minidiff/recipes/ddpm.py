"""Chapter 1's runs: DDPM on pixels or 2D points (`ddpm-digits`, `ddpm-2d`).

The run kind `diffusion` trains a network on the Gaussian process's loss, draws sample grids on the way and is
judged by the metrics of its dataset: recognizability, coverage and Frechet distance for digits (Chapter 1),
Frechet distance of Shapes scenes (Chapter 2's pixel-space baseline, `ddpm-shapes`, registered in latent.py),
distances between point clouds for the 2D toys.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minidiff.models import build_model
from minidiff.process import sample
from minidiff.recipes.base import Recipe, RunKind, load_data, register_kind, register_recipe
from minidiff.recipes.sections import DataConfig, DiffusionConfig, SampleConfig, check_image_size
from minidiff.training.distributed import is_main
from minidiff.training.loop import TrainConfig, train


def is_points(sections: dict) -> bool:
    """2D toy runs draw points (N, 2); every other diffusion run draws images."""
    return not hasattr(sections["model"], "block_channels")


def save_samples(samples: torch.Tensor, path: Path, points: bool, title: str | None = None) -> None:
    from minidiff.plotting import save_grid, save_points

    if points:
        save_points(samples, path, title)
    else:
        save_grid(samples, path)


class Diffusion(RunKind):
    """A network trained on the Gaussian diffusion loss, sampled with DDPM or DDIM."""
    name = "diffusion"
    sections = ("diffusion", "train", "sample", "data")
    what = "a diffusion model"

    def validate(self, sections: dict, recipe: Recipe) -> None:
        if hasattr(sections["model"], "block_channels"):
            check_image_size(sections["model"], "U-Net", shapes_pixels=sections["data"].dataset == "shapes")

    def network(self, sections: dict, run_dir: Path | None = None) -> torch.nn.Module:
        return build_model(sections["model"])

    def build(self, sections: dict, run_dir: Path) -> torch.nn.Module:
        return self.network(sections, run_dir)

    def load_parts(self, model, run_config: dict, out: Path, resume: bool) -> None:
        """Load the trained parts a run builds on (a frozen autoencoder, a text encoder) into its fresh network."""

    def training_data(self, model, sections: dict) -> torch.Tensor:
        """What the loss sees: images (N, C, H, W) in [-1, 1], or points (N, 2)."""
        return load_data(sections["data"], getattr(sections["model"], "sample_size", 0))

    def train(self, sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
        model = self.network(sections, out)
        self.load_parts(model, run_config, out, resume)
        data = self.training_data(model, sections)
        n_grid, points = sections["sample"].num_images, is_points(sections)

        def on_sample(ema, step):
            save_samples(self.sample(ema, sections, n_grid, seed=step), out / "samples" / f"step_{step:06d}.png",
                         points, f"step {step}")

        _, ema, _ = train(model, sections["diffusion"].build(), data, sections["train"], out, run_config,
                          resume=resume, on_sample=on_sample, progress=progress)
        if is_main():
            save_samples(self.sample(ema, sections, n_grid), out / "samples.png", points, sections.recipe)

    def shape(self, sections: dict, n: int) -> tuple[int, ...]:
        m = sections["model"]
        return (n, 2) if is_points(sections) else (n, m.in_channels, m.sample_size, m.sample_size)

    def finish(self, model, x: torch.Tensor, sections: dict) -> torch.Tensor:
        """The sampler's output as the run's samples: images clamped to the pixel range (as when saved), points
        as they are."""
        return x if is_points(sections) else x.clamp(-1, 1)

    def sample(self, model, sections: dict, n: int, seed: int = 0, prompts=None, **overrides) -> torch.Tensor:
        s = sections["sample"]
        device = next(model.parameters()).device
        x = sample(model, sections["diffusion"].build(), self.shape(sections, n), sampler=s.sampler,
                   steps=s.sample_steps, eta=s.eta, variance=s.variance, clip_x0=s.clip_x0,
                   generator=torch.Generator().manual_seed(seed), device=device)
        return self.finish(model, x, sections).cpu()

    def evaluate(self, model, sections: dict, run_dir: Path, n: int, seed: int = 0, **overrides) -> dict:
        samples = self.sample(model, sections, n, seed=seed)
        s = sections["sample"]
        return {**dataset_metrics(samples, sections["data"]), "sampler": s.sampler, "sample_steps": s.sample_steps}


def dataset_metrics(samples: torch.Tensor, data: DataConfig) -> dict:
    """The metrics of a batch of samples, judged against the run's dataset."""
    if data.dataset == "digits":
        from minidiff.eval.digits import digit_metrics

        return digit_metrics(samples)
    if data.dataset == "shapes":
        from minidiff.eval.shapes_fd import shapes_frechet

        return shapes_frechet(samples)
    from minidiff.eval.toy2d import toy2d_metrics

    return toy2d_metrics(samples, data.dataset)


register_kind(Diffusion())

register_recipe(Recipe(
    name="ddpm-digits",
    description="DDPM on scikit-learn's real handwritten digits at 16x16 (Chapter 1's main job)",
    kind="diffusion", chapter=1, preset="unet-toy", presets=("unet-toy", "ddpm-cifar10"),
    # Tuned to a 5-minute budget on 2 CPU cores (benchmarks/RESULTS.md, "the recipe against the bar"): the toy
    # U-Net's 2x2 patch fold and batch 192 make an image cheap on a CPU, Min-SNR weighting and a high peak lr
    # help, and the fused AdamW buys steps; quality still rises at the end, so the budget sets the step count.
    sections=dict(
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps", min_snr_gamma=5.0),
        train=TrainConfig(steps=2500, batch_size=192, lr=4e-3, warmup_steps=100, sample_every=1250, fused=True),
        sample=SampleConfig(sampler="ddpm", sample_steps=250),
        data=DataConfig("digits")),
    model_overrides={"in_channels": 1, "out_channels": 1, "sample_size": 16},
    eval_samples=594,
))

register_recipe(Recipe(
    name="ddpm-2d",
    description="DDPM on a 2D toy distribution (dataset=swiss_roll | two_moons | eight_gaussians)",
    kind="diffusion", chapter=1, preset="mlp-toy", presets=("mlp-toy",),
    sections=dict(
        diffusion=DiffusionConfig(schedule="linear", prediction="eps", num_steps=1000),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, warmup_steps=100, sample_every=0),
        sample=SampleConfig(sampler="ddpm", sample_steps=1000, clip_x0=False, num_images=2000),
        data=DataConfig("swiss_roll")),
    eval_samples=2000,
))
