"""Chapter 2's runs: the autoencoder (`vae-shapes`) and what latent diffusion (`ldm-shapes`) needs from it.

The recipes themselves are in minidiff/recipes.py with the others; this file holds what an autoencoder run does
(train with the perceptual and GAN terms, fit the latent scale, judge reconstructions) and how a latent run finds,
or trains, the frozen autoencoder it diffuses in.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from minidiff.config import from_dict, to_dict
from minidiff.models import Autoencoder, AutoencoderConfig, build_model
from minidiff.models.discriminator import PatchDiscriminator
from minidiff.training.checkpoint import (CHECKPOINT, CONFIG, atomic_write_text, load_checkpoint, save_checkpoint,
                                          unprefixed)


def heldout_scenes(n: int, size: int = 32) -> tuple[torch.Tensor, list[list[dict]]]:
    """Held-out Shapes scenes (test split 0..n-1): (images (n, 3, size, size) in [-1, 1], each scene's objects)."""
    from minidiff.data.images import to_model_range
    from minidiff.data.shapes_dataset import make_example
    import numpy as np

    rows = [make_example("test", i, size) for i in range(n)]
    pixels = torch.from_numpy(np.stack([r["image"] for r in rows])).permute(0, 3, 1, 2).float() / 255
    return to_model_range(pixels), [r["objects"] for r in rows]


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


def train_autoencoder_run(sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
    from minidiff.models.autoencoder import fit_latent_scaling
    from minidiff.training.autoencoder import train_autoencoder

    from minidiff.recipes import load_data

    model = Autoencoder(sections["model"])
    images = load_data(sections["data"], sections["model"].sample_size)
    loss = sections["loss"]
    perceptual = None
    if loss.perceptual_weight > 0:
        perceptual = perceptual_net_for_run(sections, out, resume)
    discriminator = PatchDiscriminator(dataclasses.replace(sections["discriminator"],
                                                           in_channels=sections["model"].in_channels))
    show, _ = heldout_scenes(8, sections["model"].sample_size)

    def on_sample(ema, step):
        save_reconstructions(ema, show, out / "samples" / f"step_{step:06d}.png")

    _, ema, _ = train_autoencoder(model, images, loss, sections["train"], out, run_config, resume=resume,
                                  perceptual=perceptual, discriminator=discriminator, on_sample=on_sample,
                                  progress=progress)
    # The latent scale, fitted on the training images' latents as SD did (its 0.18215), joins the model config.
    with torch.no_grad():
        latents = torch.cat([ema.encode(images[i:i + 256]).mean for i in range(0, min(len(images), 2000), 256)])
    scale, shift = fit_latent_scaling(latents)
    run_config["model"]["scaling_factor"], run_config["model"]["shift_factor"] = scale, shift
    tensors, meta = load_checkpoint(out / CHECKPOINT)
    save_checkpoint(out / CHECKPOINT, tensors, {**meta, "config": run_config})
    atomic_write_text(out / CONFIG, json.dumps(run_config, indent=2))
    save_reconstructions(ema, show, out / "samples.png")


def perceptual_net_for_run(sections: dict, out: Path, resume: bool):
    """The perceptual loss's feature network: trained on the run's own data (about 20 s), or restored on resume."""
    from minidiff.eval.shapes_fd import shapes_attribute_data
    from minidiff.models.perceptual import PerceptualConfig, PerceptualNet
    from minidiff.training.autoencoder import train_perceptual_net

    if resume:
        tensors, _ = load_checkpoint(out / CHECKPOINT)
        net = PerceptualNet(PerceptualConfig(in_channels=sections["model"].in_channels))
        net.load_state_dict(unprefixed(tensors, "perceptual"))
        return net
    images, labels = shapes_attribute_data("train", min(sections["data"].train_examples, 2000),
                                           sections["model"].sample_size)   # (n, 3, S, S), (n, 11) attributes
    return train_perceptual_net(images, labels, epochs=2, seed=sections["train"].seed)


def save_reconstructions(autoencoder: Autoencoder, images: torch.Tensor, path: Path) -> None:
    """A grid: originals on the top row, their reconstructions below."""
    from minidiff.plotting import save_grid

    with torch.no_grad():
        recon = autoencoder(images, sample_posterior=False)[0].clamp(-1, 1)
    save_grid(torch.cat([images, recon]), path, nrow=len(images))


def prerequisite_run(folder: str, default: Path, recipe: str, key: str, what: str, progress: bool,
                     evaluate_after: bool = False) -> tuple[Path, dict]:
    """The finished run another run builds on: `folder` if given, else `default`, trained there first if empty.

    key: the config key that names the folder (for the error messages); what: the kind of run, in words.
    Returns (its folder, its config). A folder of another recipe, or a run stopped before its last step, is an error.
    """
    from minidiff.recipes import run_training

    if not folder:
        if not (default / CHECKPOINT).exists():
            run_training(recipe, default, progress=progress, evaluate_after=evaluate_after)
        folder = str(default)
    run_dir = Path(folder)
    if not (run_dir / CHECKPOINT).exists():
        raise ValueError(f"{run_dir} holds no run; pass {key}=FOLDER of a `minidiff train {recipe}` run")
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    config = meta["config"]
    if config.get("recipe") != recipe:
        raise ValueError(f"{run_dir} is a {config.get('recipe')!r} run, not {what}; "
                         f"pass {key}=FOLDER of a `minidiff train {recipe}` run")
    if meta["step"] < config["train"]["steps"]:
        raise ValueError(f"the {recipe} run {run_dir} stopped at step {meta['step']} of {config['train']['steps']} "
                         f"and is not finished; finish it with `minidiff train {recipe} --out {run_dir} --resume`")
    return run_dir, config


def attach_autoencoder(run_config: dict, out: Path, progress: bool) -> dict:
    """Find (or train) the latent run's autoencoder and copy its config into the run's config."""
    latent = run_config["latent"]
    vae_dir, vae_config = prerequisite_run(latent["autoencoder_run"], out / "autoencoder", "vae-shapes",
                                           "latent.autoencoder_run", "an autoencoder", progress)
    latent["autoencoder_run"] = str(vae_dir)
    autoencoder = from_dict(AutoencoderConfig, vae_config["model"])
    if latent["scaling_factor"] is not None:
        autoencoder = dataclasses.replace(autoencoder, scaling_factor=latent["scaling_factor"])
    unet = run_config["model"]
    if unet["in_channels"] != autoencoder.latent_channels or unet["sample_size"] * autoencoder.factor != autoencoder.sample_size:
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
        autoencoder.load_state_dict(autoencoder_state)
    return LatentDiffusion(build_model(sections["model"]), autoencoder)
