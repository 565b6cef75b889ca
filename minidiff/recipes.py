"""Recipes: what each chapter trains, on which data, with which preset and budget.

A recipe bundles four config sections that are saved together in a run's config.json:
  model      the network's config dataclass (from a named preset, e.g. `unet-toy`)
  diffusion  the process: schedule, number of steps, prediction target
  train      the loop's settings (minidiff.training.loop.TrainConfig)
  sample     the default sampler used for grids and evaluation
Any field can be changed from the command line as `key=value` (or `section.key=value`).
An autoencoder recipe has `loss` and `discriminator` sections instead of `diffusion` and `sample`; a latent
diffusion recipe adds `latent` (which autoencoder run to use) and `autoencoder` (that run's config, copied in).

Chapter 1: `ddpm-digits` (the main job: real handwritten digits, 16x16) and `ddpm-2d` (2D toys).
Chapter 2: `vae-shapes` (the autoencoder), `ldm-shapes` (diffusion in its latent space) and `ddpm-shapes`
(the same data in pixel space, the baseline latent diffusion is measured against).
Chapter 3: `clip-shapes` (a CLIP on Shapes captions) and `sd-shapes` (text-to-image in the latent space, guided);
what their runs do is in minidiff/recipes_text.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minidiff.config import apply_overrides, from_dict, to_dict
from minidiff.models import PRESETS, Autoencoder, AutoencoderConfig, build_model
from minidiff.models.clip import CLIPTextConfig
from minidiff.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from minidiff.process import PREDICTIONS, SAMPLERS, SCHEDULES, VARIANCES, GaussianDiffusion, NoiseSchedule, sample
from minidiff.training.autoencoder import PIXEL_LOSSES, AutoencoderLossConfig
from minidiff.training.checkpoint import (CHECKPOINT, CONFIG, atomic_write_text, load_checkpoint, save_checkpoint,
                                          unprefixed)
from minidiff.training.loop import TrainConfig, train


@dataclass
class DiffusionConfig:
    schedule: str = "linear"       # 'linear' (DDPM) or 'cosine' (Improved DDPM)
    num_steps: int = 1000          # T
    prediction: str = "eps"        # what the network predicts: 'eps', 'x0' or 'v'
    min_snr_gamma: float | None = None   # None: L_simple; a number: Min-SNR-gamma loss weighting (5 in the paper)

    def build(self) -> GaussianDiffusion:
        return GaussianDiffusion(NoiseSchedule.make(self.schedule, self.num_steps), self.prediction, self.min_snr_gamma)


@dataclass
class SampleConfig:
    sampler: str = "ddpm"          # 'ddpm' (ancestral) or 'ddim'
    sample_steps: int = 100        # sampling steps (<= num_steps)
    eta: float = 0.0               # DDIM's eta
    variance: str = "beta_tilde"   # DDPM's sigma^2: 'beta' or 'beta_tilde'
    clip_x0: bool = True           # clip the predicted x0 to [-1, 1] at each step
    num_images: int = 64           # images in each grid written during training


@dataclass
class DataConfig:
    dataset: str = "digits"        # 'digits', 'shapes', or a 2D distribution: swiss_roll, two_moons, eight_gaussians
    num_points: int = 20000        # training points for 2D toys
    train_examples: int = 5000     # training scenes for 'shapes' (train split examples 0..train_examples-1)


@dataclass
class LatentConfig:
    autoencoder_run: str = ""      # run folder of a trained `vae-shapes`; "" trains one first in OUT/autoencoder
    scaling_factor: float | None = None   # None: the autoencoder run's fitted scale; a number replaces it
                                          # (1.0: no scaling, to see what goes wrong without it)


@dataclass
class TextConfig:
    clip_run: str = ""             # run folder of a trained `clip-shapes`; "" trains one first in OUT/clip
    vocab_size: int = 1000         # BPE vocabulary learned from the training captions (at most; it may stop early)
    context_length: int = 32       # tokens per prompt, BOS and EOS included (the longest Shapes caption needs ~22)
    p_uncond: float = 0.1          # chance a training caption is dropped, so guidance has an unconditional model


@dataclass
class GuidanceConfig:
    guidance_scale: float = 5.0    # classifier-free guidance: 1 is off, 0 ignores the prompt
    negative_prompt: str = ""      # what the unconditional branch encodes ("" as in training)
    guidance_rescale: float = 0.0  # Lin et al.'s phi (0.7 in their paper); 0 is off


KINDS = ("diffusion", "autoencoder", "latent-diffusion", "clip", "text-to-image")
SECTION_TYPES = {"diffusion": DiffusionConfig, "sample": SampleConfig, "train": TrainConfig, "data": DataConfig,
                 "loss": AutoencoderLossConfig, "discriminator": DiscriminatorConfig, "latent": LatentConfig,
                 "autoencoder": AutoencoderConfig, "text": TextConfig, "guidance": GuidanceConfig,
                 "text_encoder": CLIPTextConfig}


@dataclass
class Recipe:
    name: str
    description: str
    kind: str                      # 'diffusion' (pixels or points), 'autoencoder' or 'latent-diffusion'
    preset: str                    # default model preset
    presets: tuple[str, ...]       # presets this recipe's data fits
    data: DataConfig
    train: TrainConfig
    diffusion: DiffusionConfig | None = None      # diffusion recipes
    sample: SampleConfig | None = None
    loss: AutoencoderLossConfig | None = None     # autoencoder recipes
    discriminator: DiscriminatorConfig | None = None
    latent: LatentConfig | None = None            # latent diffusion recipes
    text: TextConfig | None = None                # text recipes (CLIP, text-to-image)
    guidance: GuidanceConfig | None = None        # text-to-image recipes
    model_overrides: dict = field(default_factory=dict)
    eval_samples: int = 1000       # samples (or test images) used by `minidiff eval`

    def sections(self) -> dict:
        names = {"diffusion": ("diffusion", "train", "sample", "data"),
                 "autoencoder": ("loss", "discriminator", "train", "data"),
                 "latent-diffusion": ("diffusion", "train", "sample", "data", "latent"),
                 "clip": ("train", "data", "text"),
                 "text-to-image": ("diffusion", "train", "sample", "guidance", "data", "latent", "text")}[self.kind]
        return {name: getattr(self, name) for name in names}


RECIPES = {
    "ddpm-digits": Recipe(
        name="ddpm-digits",
        description="DDPM on scikit-learn's real handwritten digits at 16x16 (Chapter 1's main job)",
        kind="diffusion", preset="unet-toy", presets=("unet-toy", "ddpm-cifar10"), data=DataConfig("digits"),
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps"),
        train=TrainConfig(steps=1900, batch_size=64, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddpm", sample_steps=100),
        model_overrides={"in_channels": 1, "out_channels": 1, "sample_size": 16},
        eval_samples=594,
    ),
    "ddpm-2d": Recipe(
        name="ddpm-2d",
        description="DDPM on a 2D toy distribution (dataset=swiss_roll | two_moons | eight_gaussians)",
        kind="diffusion", preset="mlp-toy", presets=("mlp-toy",), data=DataConfig("swiss_roll"),
        diffusion=DiffusionConfig(schedule="linear", prediction="eps", num_steps=1000),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, warmup_steps=100, sample_every=0),
        sample=SampleConfig(sampler="ddpm", sample_steps=1000, clip_x0=False, num_images=2000),
        eval_samples=2000,
    ),
    "vae-shapes": Recipe(
        name="vae-shapes",
        description="the KL autoencoder of latent diffusion on Shapes 32x32 (f=4, 4 latent channels)",
        kind="autoencoder", preset="vae-toy", presets=("vae-toy", "sd-vae", "sd3-vae"), data=DataConfig("shapes"),
        loss=AutoencoderLossConfig(pixel_loss="l1", perceptual_weight=1.0, kl_weight=1e-6, disc_weight=0.5,
                                   disc_start=2400),
        discriminator=DiscriminatorConfig.toy(),
        train=TrainConfig(steps=4000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000,
                          checkpoint_every=500),
        model_overrides={"sample_size": 32},
        eval_samples=500,
    ),
    "ldm-shapes": Recipe(
        name="ldm-shapes",
        description="latent diffusion on Shapes 32x32: the U-Net on the 8x8x4 latents of a vae-shapes run",
        kind="latent-diffusion", preset="unet-latent-toy", presets=("unet-latent-toy",), data=DataConfig("shapes"),
        diffusion=DiffusionConfig(schedule="scaled_linear", prediction="eps"),
        train=TrainConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddim", sample_steps=50, clip_x0=False),
        latent=LatentConfig(),
        eval_samples=1000,
    ),
    "ddpm-shapes": Recipe(
        name="ddpm-shapes",
        description="pixel-space DDPM on Shapes 32x32: the baseline that ldm-shapes is measured against",
        kind="diffusion", preset="unet-shapes-toy", presets=("unet-shapes-toy",), data=DataConfig("shapes"),
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps"),
        train=TrainConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddim", sample_steps=50),
        eval_samples=1000,
    ),
    "clip-shapes": Recipe(
        name="clip-shapes",
        description="CLIP on Shapes captions: a BPE tokenizer, a text and an image transformer, contrastive loss",
        kind="clip", preset="clip-toy", presets=("clip-toy",), data=DataConfig("shapes", train_examples=20000),
        train=TrainConfig(steps=1500, batch_size=128, lr=1e-3, warmup_steps=100, weight_decay=0.1, sample_every=0),
        text=TextConfig(),
        eval_samples=1000,
    ),
    "sd-shapes": Recipe(
        name="sd-shapes",
        description="Stable Diffusion on Shapes: a frozen CLIP text tower, cross-attention U-Net on vae-shapes latents",
        kind="text-to-image", preset="unet-text-toy", presets=("unet-text-toy",),
        data=DataConfig("shapes", train_examples=20000),
        diffusion=DiffusionConfig(schedule="scaled_linear", prediction="eps"),
        train=TrainConfig(steps=4000, batch_size=64, lr=2e-3, warmup_steps=100, sample_every=2000),
        sample=SampleConfig(sampler="ddim", sample_steps=50, clip_x0=False),
        guidance=GuidanceConfig(), latent=LatentConfig(), text=TextConfig(),
        eval_samples=600,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def make_run_config(recipe_name: str, preset: str | None = None, overrides: list[str] = ()) -> dict:
    """The full, validated config of a run: recipe defaults, then the preset, then key=value overrides."""
    recipe = get_recipe(recipe_name)
    preset = preset or recipe.preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; run `minidiff presets` to list them")
    if preset not in recipe.presets:
        raise ValueError(f"preset {preset!r} does not fit recipe {recipe.name}; use one of {', '.join(recipe.presets)}")
    model_config = PRESETS[preset][1](**recipe.model_overrides)
    sections = apply_overrides({"model": model_config, **recipe.sections()}, list(overrides))
    validate(sections, recipe)
    return {"recipe": recipe.name, "preset": preset, **{k: to_dict(v) for k, v in sections.items()}}


def _check_choice(value, allowed, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")


def validate(sections: dict, recipe: Recipe) -> None:
    from minidiff.data import DISTRIBUTIONS

    data, model = sections["data"], sections["model"]
    if "diffusion" in sections:
        d, s = sections["diffusion"], sections["sample"]
        for value, allowed, key in [(d.schedule, SCHEDULES, "schedule"), (d.prediction, PREDICTIONS, "prediction"),
                                    (s.sampler, SAMPLERS, "sampler"), (s.variance, VARIANCES, "variance")]:
            _check_choice(value, allowed, key)
        if not 1 <= s.sample_steps <= d.num_steps:
            raise ValueError(f"sample_steps={s.sample_steps} must be between 1 and num_steps={d.num_steps}")
    if "loss" in sections:
        _check_choice(sections["loss"].pixel_loss, PIXEL_LOSSES, "pixel_loss")
    expected = recipe.data.dataset
    if (data.dataset in DISTRIBUTIONS) != (expected in DISTRIBUTIONS) or (
            expected not in DISTRIBUTIONS and data.dataset != expected):
        choices = ", ".join(DISTRIBUTIONS) if expected in DISTRIBUTIONS else expected
        raise ValueError(f"dataset {data.dataset!r} does not fit recipe {recipe.name}; use dataset={choices}")
    if "text" in sections:
        text = sections["text"]
        if not 0.0 <= text.p_uncond <= 1.0:
            raise ValueError(f"p_uncond={text.p_uncond} is a probability; use a value in [0, 1] (0.1 in SD 1.5)")
        if text.context_length < 3:
            raise ValueError(f"context_length={text.context_length} leaves no room for a word between BOS and EOS")
    if data.dataset == "shapes" and data.train_examples < 1:
        raise ValueError(f"train_examples={data.train_examples} must be at least 1")
    if hasattr(model, "block_channels"):
        factor, size = 2 ** (len(model.block_channels) - 1), model.sample_size
        network = "autoencoder" if recipe.kind == "autoencoder" else "U-Net"
        if size % factor or size < factor:
            raise ValueError(f"image size sample_size={size} cannot go through this {network}, which halves the "
                             f"resolution {len(model.block_channels) - 1} times; use a multiple of {factor}")
        if data.dataset == "shapes" and recipe.kind == "diffusion" and not 16 <= size <= 256:
            raise ValueError(f"sample_size={size}: the Shapes world renders 16 to 256 pixels")


def load_sections(run_config: dict) -> dict:
    """config.json dict -> config dataclasses (a 'model' section plus those the run has)."""
    model_cls = type(PRESETS[run_config["preset"]][1]())
    sections = {"model": from_dict(model_cls, run_config["model"])}
    for name, cls in SECTION_TYPES.items():
        if name in run_config:
            sections[name] = from_dict(cls, run_config[name])
    return sections


def recipe_of(run_config: dict) -> Recipe:
    return get_recipe(run_config["recipe"])


def load_data(data: DataConfig, size: int = 16) -> torch.Tensor:
    """Training data as a tensor: images (N, C, size, size) in [-1, 1], or 2D points (N, 2)."""
    from minidiff.data import digits_tensors, sample_2d, shapes_tensors

    if data.dataset == "digits":
        return digits_tensors("train", size)[0]
    if data.dataset == "shapes":
        return shapes_tensors("train", data.train_examples, size)[0]
    return sample_2d(data.dataset, data.num_points, torch.Generator().manual_seed(1234))


def sample_from_run(model: torch.nn.Module, sections: dict, n: int, seed: int = 0, **sampler_overrides):
    """Draw n samples from a trained model with the run's default sampler (overridable).

    Images come back in [-1, 1] (latent runs decode their samples), 2D points as they are."""
    if "text" in sections and "sample" not in sections:
        raise ValueError("this run is a CLIP, which does not sample; `minidiff eval` measures its retrieval, and "
                         "`minidiff train sd-shapes text.clip_run=RUN` conditions a U-Net on its text tower")
    if "sample" not in sections:
        raise ValueError("this run is an autoencoder, which does not sample; `minidiff eval` measures its "
                         "reconstructions, and `minidiff train ldm-shapes latent.autoencoder_run=RUN` diffuses in its latents")
    if "guidance" in sections:
        raise ValueError("this run draws images from prompts; use `minidiff sample RUN --prompt TEXT`, or "
                         "minidiff.recipes_text.generate(model, sections, prompts)")
    s = dataclasses.replace(sections["sample"], **sampler_overrides)
    diffusion = sections["diffusion"].build()
    m = sections["model"]
    is_2d = not hasattr(m, "block_channels")
    shape = (n, 2) if is_2d else (n, m.in_channels, m.sample_size, m.sample_size)
    device = next(model.parameters()).device
    x = sample(model, diffusion, shape, sampler=s.sampler, steps=s.sample_steps, eta=s.eta, variance=s.variance,
               clip_x0=s.clip_x0, generator=torch.Generator().manual_seed(seed), device=device).cpu()
    if "latent" in sections:
        return model.decode(x.to(device)).cpu()   # scaled latents -> images in [-1, 1]
    return x if is_2d else x.clamp(-1, 1)         # images: the pixel range, as when saved


def save_samples(samples: torch.Tensor, path: Path, is_2d: bool, title: str | None = None) -> None:
    from minidiff.plotting import save_grid, save_points

    if is_2d:
        save_points(samples, path, title)
    else:
        save_grid(samples, path)


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


def evaluate(samples: torch.Tensor, sections: dict) -> dict:
    """The recipe's metrics for a batch of samples."""
    data = sections["data"]
    if data.dataset == "digits":
        from minidiff.eval.digits import digit_metrics

        return digit_metrics(samples)
    if data.dataset == "shapes":
        from minidiff.eval.shapes_fd import shapes_frechet

        return shapes_frechet(samples)
    from minidiff.eval.toy2d import toy2d_metrics

    return toy2d_metrics(samples, data.dataset)


# Settings that may change when a run is resumed: how long it trains, and what it writes on the way.
RESUMABLE_KEYS = ("steps", "sample_every", "checkpoint_every", "log_every", "device")


def _resumed_config(out: Path, preset: str | None, overrides: list[str]) -> dict:
    _, meta = load_checkpoint(out / CHECKPOINT)
    run_config = meta["config"]
    if preset and preset != run_config["preset"]:
        raise ValueError(f"--resume continues a run with its own preset ({run_config['preset']}); drop --preset")
    if overrides:
        before = load_sections(run_config)
        after = apply_overrides(before, list(overrides))
        changed = [f"{s}.{f.name}" for s in before for f in dataclasses.fields(before[s])
                   if getattr(before[s], f.name) != getattr(after[s], f.name)
                   and not (s == "train" and f.name in RESUMABLE_KEYS)]
        if changed:
            raise ValueError(f"--resume continues a run as it was configured; only {', '.join(RESUMABLE_KEYS)} "
                             f"may change (tried to change {', '.join(changed)})")
        run_config["train"] = to_dict(after["train"])
    return run_config


def run_training(recipe_name: str, out: str | Path, preset: str | None = None, overrides: list[str] = (),
                 resume: bool = False, progress: bool = True, evaluate_after: bool = True) -> dict:
    """`minidiff train`: train, write samples.png and (optionally) metrics.json; returns the metrics (or {})."""
    out = Path(out)
    if resume:
        run_config = _resumed_config(out, preset, overrides)
    else:
        run_config = make_run_config(recipe_name, preset, overrides)
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume, or pass --out NEW_DIR")
    recipe = recipe_of(run_config)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.kind in ("latent-diffusion", "text-to-image") and not resume:
        run_config = attach_autoencoder(run_config, out, progress)
    if recipe.kind == "clip" and not resume:
        from minidiff.recipes_text import attach_tokenizer

        run_config = attach_tokenizer(run_config, out)
    if recipe.kind == "text-to-image" and not resume:
        from minidiff.recipes_text import attach_clip

        run_config = attach_clip(run_config, out, progress)
    atomic_write_text(out / CONFIG, json.dumps(run_config, indent=2))
    sections = load_sections(run_config)
    torch.manual_seed(sections["train"].seed)
    if recipe.kind == "autoencoder":
        _train_autoencoder_run(sections, run_config, out, resume, progress)
    elif recipe.kind in ("clip", "text-to-image"):
        from minidiff import recipes_text

        run = recipes_text.train_clip_run if recipe.kind == "clip" else recipes_text.train_text_run
        run(sections, run_config, out, resume, progress)
    else:
        _train_diffusion_run(recipe, sections, run_config, out, resume, progress)
    return run_evaluation(out) if evaluate_after else {}


def _train_diffusion_run(recipe: Recipe, sections: dict, run_config: dict, out: Path, resume: bool,
                         progress: bool) -> None:
    is_2d = sections["data"].dataset not in ("digits", "shapes")
    if recipe.kind == "latent-diffusion":
        model = build_latent_model(sections, autoencoder_tensors(run_config))
        images = load_data(sections["data"], sections["autoencoder"].sample_size)
        data = model.encode(images)                                   # (N, L, h, w) scaled latents
    else:
        model = build_model(sections["model"])
        data = load_data(sections["data"], getattr(sections["model"], "sample_size", 0))
    diffusion = sections["diffusion"].build()
    n_grid = sections["sample"].num_images

    def on_sample(ema, step):
        samples = sample_from_run(ema, sections, n_grid, seed=step)
        save_samples(samples, out / "samples" / f"step_{step:06d}.png", is_2d, f"step {step}")

    _, ema, _ = train(model, diffusion, data, sections["train"], out, run_config, resume=resume,
                      on_sample=on_sample, progress=progress)
    save_samples(sample_from_run(ema, sections, n_grid), out / "samples.png", is_2d, recipe.name)


def _train_autoencoder_run(sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
    from minidiff.models.autoencoder import fit_latent_scaling
    from minidiff.training.autoencoder import train_autoencoder

    model = Autoencoder(sections["model"])
    images = load_data(sections["data"], sections["model"].sample_size)
    loss = sections["loss"]
    perceptual = None
    if loss.perceptual_weight > 0:
        perceptual = _perceptual_net(sections, out, resume)
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


def _perceptual_net(sections: dict, out: Path, resume: bool):
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


def attach_autoencoder(run_config: dict, out: Path, progress: bool) -> dict:
    """Find (or train) the latent run's autoencoder and copy its config into the run's config."""
    latent = run_config["latent"]
    if not latent["autoencoder_run"]:
        vae_dir = out / "autoencoder"
        if not (vae_dir / CHECKPOINT).exists():
            run_training("vae-shapes", vae_dir, progress=progress, evaluate_after=False)
        latent["autoencoder_run"] = str(vae_dir)
    vae_dir = Path(latent["autoencoder_run"])
    _, meta = load_checkpoint(vae_dir / CHECKPOINT)
    vae_config = meta["config"]
    if vae_config.get("recipe") != "vae-shapes":
        raise ValueError(f"{vae_dir} is a {vae_config.get('recipe')!r} run, not an autoencoder; "
                         f"pass latent.autoencoder_run=FOLDER of a `minidiff train vae-shapes` run")
    if meta["step"] < vae_config["train"]["steps"]:
        raise ValueError(f"the autoencoder run {vae_dir} stopped at step {meta['step']} of "
                         f"{vae_config['train']['steps']} and has no fitted latent scale yet; finish it with "
                         f"`minidiff train vae-shapes --out {vae_dir} --resume`")
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


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(EMA model in eval mode, config sections) from a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist; train one with `minidiff train RECIPE --out {run_dir}`")
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    sections = load_sections(meta["config"])
    kind = recipe_of(meta["config"]).kind
    if kind == "latent-diffusion":
        model = build_latent_model(sections)
    elif kind == "text-to-image":
        from minidiff.recipes_text import build_text_model

        model = build_text_model(sections, run_dir)
    elif kind == "clip":
        from minidiff.models.clip import CLIP

        model = CLIP(sections["model"])
    elif kind == "autoencoder":
        model = Autoencoder(sections["model"])
    else:
        model = build_model(sections["model"])
    model.load_state_dict(unprefixed(tensors, "ema"))
    return model.to(device).eval(), sections


def run_evaluation(run_dir: str | Path, model: torch.nn.Module | None = None, n: int | None = None,
                   seed: int = 0, **sampler_overrides) -> dict:
    """`minidiff eval`: sample the run's model (or reconstruct held-out images) and write metrics.json."""
    run_dir = Path(run_dir)
    loaded, sections = load_run(run_dir)
    model = model or loaded
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_of(meta["config"])
    n = n or recipe.eval_samples
    if recipe.kind == "autoencoder":
        metrics = reconstruction_metrics(model, sections, n)
    elif recipe.kind == "clip":
        from minidiff.recipes_text import clip_metrics

        metrics = clip_metrics(model, sections, run_dir, n)
    elif recipe.kind == "text-to-image":
        from minidiff.recipes_text import text_metrics

        metrics = text_metrics(model, sections, seed=seed, **sampler_overrides)
    else:
        samples = sample_from_run(model, sections, n, seed=seed, **sampler_overrides)
        s = dataclasses.replace(sections["sample"], **sampler_overrides)
        metrics = {**evaluate(samples, sections), "sampler": s.sampler, "sample_steps": s.sample_steps}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
