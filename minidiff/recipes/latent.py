"""Chapter 2's runs: the autoencoder (`vae-shapes`), diffusion in its latents (`ldm-shapes`) and the pixel-space
baseline (`ddpm-shapes`).

An autoencoder run trains with the perceptual and GAN terms, fits the latent scale and is judged by its held-out
reconstructions. A latent run builds on a finished autoencoder: by default the `vae-shapes` part that ships with
minidiff (minidiff/recipes/parts/), with `--retrain-parts` one trained first in OUT/autoencoder, or any run given
as `latent.autoencoder_run=DIR`. Its checkpoint embeds the frozen autoencoder, so a resumed run encodes its data
with exactly the autoencoder it started with, whatever happened to that folder since.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from minidiff.config import from_dict, to_dict
from minidiff.io import atomic_write_json, load_state_strict
from minidiff.models import Autoencoder, AutoencoderConfig, build_model
from minidiff.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from minidiff.recipes.base import Recipe, RunKind, load_data, prerequisite_run, register_kind, register_recipe
from minidiff.recipes.sections import (DataConfig, DiffusionConfig, SampleConfig, check_choice, check_image_size,
                                       register_section)
from minidiff.recipes.ddpm import Diffusion
from minidiff.training.autoencoder import PIXEL_LOSSES, AutoencoderLossConfig, AutoencoderObjective
from minidiff.training.checkpoint import CHECKPOINT, CONFIG, load_checkpoint, save_checkpoint, unprefixed
from minidiff.training.loop import TrainConfig, train


@dataclass
class LatentConfig:
    autoencoder_run: str = ""      # run folder of a trained `vae-shapes`; "": the shipped part (or, with
                                   # --retrain-parts, one trained first in OUT/autoencoder)
    scaling_factor: float | None = None   # None: the autoencoder run's fitted scale; a number replaces it
                                          # (1.0: no scaling, to see what goes wrong without it)

    def validate(self) -> None:
        if self.scaling_factor is not None and not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"latent.scaling_factor={self.scaling_factor} must be a positive number (the fitted "
                             f"scale is about 1/std of the latents), or none for the autoencoder run's own")


register_section("loss", AutoencoderLossConfig)
register_section("discriminator", DiscriminatorConfig)
register_section("latent", LatentConfig)
register_section("autoencoder", AutoencoderConfig)


# ---------------------------------------------------------------------------- vae-shapes


def heldout_scenes(n: int, size: int = 32) -> tuple[torch.Tensor, list[list[dict]]]:
    """Held-out Shapes scenes (test split 0..n-1): (images (n, 3, size, size) in [-1, 1], each scene's objects)."""
    from minidiff.data.shapes_dataset import shapes_scenes

    images, _, objects = shapes_scenes("test", n, size)
    return images, objects


@torch.no_grad()
def reconstruction_metrics(autoencoder: Autoencoder, sections: dict, n: int) -> dict:
    """PSNR (dB) of held-out reconstructions, and the share of their objects ShapesEval's detector still finds."""
    from minidiff.eval.shapeseval import object_recall
    from minidiff.training.autoencoder import psnr

    images, objects = heldout_scenes(n, sections["model"].sample_size)
    recon = torch.cat([autoencoder(images[i:i + 100], sample_posterior=False)[0].clamp(-1, 1)
                       for i in range(0, n, 100)])
    values = psnr(images, recon)
    recall = object_recall(recon, objects)
    return {"psnr": values.mean().item(), "psnr_min": values.min().item(), "object_recall": recall["recall"],
            "scene_recall": recall["scene_recall"], "test_images": n,
            "scaling_factor": autoencoder.config.scaling_factor, "shift_factor": autoencoder.config.shift_factor}


def save_reconstructions(autoencoder: Autoencoder, images: torch.Tensor, path: Path) -> None:
    """A grid: originals on the top row, their reconstructions below."""
    from minidiff.plotting import save_grid

    with torch.no_grad():
        recon = autoencoder(images, sample_posterior=False)[0].clamp(-1, 1)
    save_grid(torch.cat([images, recon]), path, nrow=len(images))


def perceptual_net_for_run(sections: dict, resume: bool):
    """The perceptual loss's feature network: trained on the run's own data (about 20 s), or, on resume, a blank
    one that the training loop fills with the weights stored in the checkpoint (`perceptual.*`)."""
    from minidiff.eval.shapes_fd import shapes_attribute_data
    from minidiff.models.perceptual import PerceptualConfig, PerceptualNet
    from minidiff.training.autoencoder import train_perceptual_net

    if resume:
        return PerceptualNet(PerceptualConfig(in_channels=sections["model"].in_channels))
    images, labels = shapes_attribute_data("train", min(sections["data"].train_examples, 2000),
                                           sections["model"].sample_size)   # (n, 3, S, S), (n, 11) attributes
    return train_perceptual_net(images, labels, epochs=2, seed=sections["train"].seed)


class AutoencoderRun(RunKind):
    """The KL autoencoder of latent diffusion, trained with reconstruction, perceptual, KL and GAN terms."""
    name = "autoencoder"
    sections = ("loss", "discriminator", "train", "data")
    what = "an autoencoder"

    def validate(self, sections: dict, recipe: Recipe) -> None:
        check_choice(sections["loss"].pixel_loss, PIXEL_LOSSES, "pixel_loss")
        check_image_size(sections["model"], "autoencoder")

    def build(self, sections: dict, run_dir: Path) -> torch.nn.Module:
        return Autoencoder(sections["model"])

    def sample(self, model, sections, n, seed=0, prompts=None, **overrides):
        raise ValueError("this run is an autoencoder, which does not sample; `minidiff eval` measures its "
                         "reconstructions, and `minidiff train ldm-shapes latent.autoencoder_run=RUN` diffuses in "
                         "its latents")

    def train(self, sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
        from minidiff.models.autoencoder import fit_latent_scaling
        from minidiff.training.distributed import is_main

        model = Autoencoder(sections["model"])
        images = load_data(sections["data"], sections["model"].sample_size)
        loss = sections["loss"]
        perceptual = perceptual_net_for_run(sections, resume) if loss.perceptual_weight > 0 else None
        discriminator = PatchDiscriminator(dataclasses.replace(sections["discriminator"],
                                                               in_channels=sections["model"].in_channels))
        show, _ = heldout_scenes(8, sections["model"].sample_size)

        def on_sample(ema, step):
            save_reconstructions(ema, show, out / "samples" / f"step_{step:06d}.png")

        objective = AutoencoderObjective(loss, perceptual, discriminator)
        _, ema, _ = train(model, objective, images, sections["train"], out, run_config, resume=resume,
                          on_sample=on_sample, progress=progress)
        if not is_main():
            return
        # The latent scale, fitted on the training images' latents as SD did (its 0.18215), joins the model config.
        with torch.no_grad():
            latents = torch.cat([ema.encode(images[i:i + 256]).mean for i in range(0, min(len(images), 2000), 256)])
        scale, shift = fit_latent_scaling(latents)
        run_config["model"]["scaling_factor"], run_config["model"]["shift_factor"] = scale, shift
        tensors, meta = load_checkpoint(out / CHECKPOINT)
        save_checkpoint(out / CHECKPOINT, tensors, {**meta, "config": run_config})
        atomic_write_json(out / CONFIG, run_config)
        save_reconstructions(ema, show, out / "samples.png")

    def evaluate(self, model, sections: dict, run_dir: Path, n: int, seed: int = 0, **overrides) -> dict:
        return reconstruction_metrics(model, sections, n)


# ---------------------------------------------------------------------------- ldm-shapes


def attach_autoencoder(run_config: dict, out: Path, progress: bool, retrain: bool = False,
                       resume: bool = False) -> dict:
    """Find (or train) the latent run's autoencoder and copy its config into the run's config."""
    latent = run_config["latent"]
    vae_dir, vae_config = prerequisite_run(latent["autoencoder_run"], out / "autoencoder", "vae-shapes",
                                           "latent.autoencoder_run", "an autoencoder", progress, retrain, resume)
    latent["autoencoder_run"] = str(vae_dir)
    autoencoder = from_dict(AutoencoderConfig, vae_config["model"])
    if latent["scaling_factor"] is not None:
        autoencoder = dataclasses.replace(autoencoder, scaling_factor=latent["scaling_factor"])
    unet = run_config["model"]
    if unet["in_channels"] != autoencoder.latent_channels or \
            unet["sample_size"] * autoencoder.factor != autoencoder.sample_size:
        unet.update(in_channels=autoencoder.latent_channels, out_channels=autoencoder.latent_channels,
                    sample_size=autoencoder.sample_size // autoencoder.factor)
    return {**run_config, "autoencoder": to_dict(autoencoder)}


def autoencoder_tensors(run_config: dict) -> dict[str, torch.Tensor]:
    """The EMA weights of the autoencoder run a latent run was configured with."""
    tensors, _ = load_checkpoint(Path(run_config["latent"]["autoencoder_run"]) / CHECKPOINT)
    return unprefixed(tensors, "ema")


def build_latent_model(sections: dict, autoencoder_state: dict | None = None):
    from minidiff.pipelines import LatentDiffusion

    autoencoder = Autoencoder(sections["autoencoder"])
    if autoencoder_state is not None:
        load_state_strict(autoencoder, autoencoder_state, "the autoencoder run")
    return LatentDiffusion(build_model(sections["model"]), autoencoder)


def restore_embedded_parts(model: torch.nn.Module, out: Path) -> None:
    """On resume: the training weights from the run's own checkpoint, frozen parts included, so the data is
    encoded with the parts the run started with (not with whatever their folders hold now)."""
    tensors, _ = load_checkpoint(out / CHECKPOINT)
    load_state_strict(model, unprefixed(tensors, "model"), str(out / CHECKPOINT))


class LatentDiffusionRun(Diffusion):
    """Diffusion in the latent space of a frozen autoencoder; samples are decoded to images."""
    name = "latent-diffusion"
    sections = ("diffusion", "train", "sample", "data", "latent")
    what = "a latent diffusion model"

    def validate(self, sections: dict, recipe: Recipe) -> None:
        check_image_size(sections["model"], "U-Net")

    def prepare(self, run_config, out, progress, retrain_parts, resume):
        return attach_autoencoder(run_config, out, progress, retrain_parts, resume)

    def network(self, sections: dict, run_dir: Path | None = None) -> torch.nn.Module:
        return build_latent_model(sections)

    def load_parts(self, model, run_config: dict, out: Path, resume: bool) -> None:
        if resume:
            restore_embedded_parts(model, out)
        else:
            load_state_strict(model.autoencoder, autoencoder_tensors(run_config), run_config["latent"]["autoencoder_run"])

    def training_data(self, model, sections: dict) -> torch.Tensor:
        images = load_data(sections["data"], sections["autoencoder"].sample_size)
        return model.encode(images)                                   # (N, L, h, w) scaled latents

    def finish(self, model, x: torch.Tensor, sections: dict) -> torch.Tensor:
        return model.decode(x)                                        # scaled latents -> images in [-1, 1]


register_kind(AutoencoderRun())
register_kind(LatentDiffusionRun())

register_recipe(Recipe(
    name="vae-shapes",
    description="the KL autoencoder of latent diffusion on Shapes 32x32 (f=4, 4 latent channels)",
    kind="autoencoder", chapter=2, preset="vae-toy", presets=("vae-toy", "sd-vae", "sd3-vae"),
    sections=dict(
        loss=AutoencoderLossConfig(pixel_loss="l1", perceptual_weight=1.0, kl_weight=1e-6, disc_weight=0.5,
                                   disc_start=2400),
        discriminator=DiscriminatorConfig.toy(),
        train=TrainConfig(steps=4000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000,
                          checkpoint_every=500),
        data=DataConfig("shapes")),
    model_overrides={"sample_size": 32},
    eval_samples=500,
))

register_recipe(Recipe(
    name="ldm-shapes",
    description="latent diffusion on Shapes 32x32: the U-Net on the 8x8x4 latents of a vae-shapes run",
    kind="latent-diffusion", chapter=2, preset="unet-latent-toy", presets=("unet-latent-toy",),
    sections=dict(
        diffusion=DiffusionConfig(schedule="scaled_linear", prediction="eps"),
        train=TrainConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddim", sample_steps=50, clip_x0=False),
        data=DataConfig("shapes"),
        latent=LatentConfig()),
    eval_samples=1000,
))

register_recipe(Recipe(
    name="ddpm-shapes",
    description="pixel-space DDPM on Shapes 32x32: the baseline that ldm-shapes is measured against",
    kind="diffusion", chapter=2, preset="unet-shapes-toy", presets=("unet-shapes-toy",),
    sections=dict(
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps"),
        train=TrainConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddim", sample_steps=50),
        data=DataConfig("shapes")),
    eval_samples=1000,
))
