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
what their runs do is in minidiff/recipes_text.py, as Chapter 2's is in minidiff/recipes_latent.py.
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
from minidiff.models.discriminator import DiscriminatorConfig
from minidiff.process import PREDICTIONS, SAMPLERS, SCHEDULES, VARIANCES, GaussianDiffusion, NoiseSchedule, sample
from minidiff.training.autoencoder import PIXEL_LOSSES, AutoencoderLossConfig
from minidiff.recipes_latent import (attach_autoencoder, autoencoder_tensors, build_latent_model,
                                     heldout_scenes, reconstruction_metrics, train_autoencoder_run)
from minidiff.training.checkpoint import CHECKPOINT, CONFIG, atomic_write_text, load_checkpoint, unprefixed
from minidiff.training.loop import TrainConfig, train

__all__ = ["RECIPES", "heldout_scenes", "load_run", "make_run_config", "reconstruction_metrics", "run_evaluation",
           "run_training", "sample_from_run"]   # heldout_scenes, reconstruction_metrics: Chapter 2's, re-exported


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
    category_weights: tuple[float, ...] | None = None   # 'shapes': how often each caption category is drawn, in the
                                   # order of TRAIN_CATEGORIES (single, two, relation, counting, position); None: the
                                   # Shapes world's default 0.25,0.25,0.2,0.15,0.15 (weights are normalised)


@dataclass
class LatentConfig:
    autoencoder_run: str = ""      # run folder of a trained `vae-shapes`; "" trains one first in OUT/autoencoder
    scaling_factor: float | None = None   # None: the autoencoder run's fitted scale; a number replaces it
                                          # (1.0: no scaling, to see what goes wrong without it)


@dataclass
class TextConfig:
    clip_run: str = ""             # run folder of a trained `clip-shapes`; "" trains one first in OUT/clip
    vocab_size: int = 1000         # BPE vocabulary learned from the training captions (at most; it may stop early)
    context_length: int = 32       # tokens per prompt, BOS and EOS included (the longest Shapes caption needs 19)
    p_uncond: float = 0.1          # chance a training caption is dropped, so guidance has an unconditional model
    hard_negatives: bool = False   # clip-shapes: each caption naming a place also trains against its left/right swap
    train_encoder: bool = False    # sd-shapes: the diffusion loss fine-tunes the CLIP text tower with the U-Net


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
        # Tuned to a 5-minute budget on 2 CPU cores (benchmarks/RESULTS.md, "the recipe against the bar"): the toy
        # U-Net's 2x2 patch fold and batch 192 make an image cheap on a CPU, Min-SNR weighting and a high peak lr
        # help, and the fused AdamW buys steps; quality still rises at the end, so the budget sets the step count.
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps", min_snr_gamma=5.0),
        train=TrainConfig(steps=2500, batch_size=192, lr=4e-3, warmup_steps=100, sample_every=1250, fused=True),
        sample=SampleConfig(sampler="ddpm", sample_steps=250),
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
        train=TrainConfig(steps=4000, batch_size=128, lr=1e-3, warmup_steps=100, weight_decay=0.1, sample_every=0),
        text=TextConfig(hard_negatives=True),
        eval_samples=1000,
    ),
    "sd-shapes": Recipe(
        name="sd-shapes",
        description="Stable Diffusion on Shapes: a frozen CLIP text tower, cross-attention U-Net on vae-shapes latents",
        kind="text-to-image", preset="unet-text-toy", presets=("unet-text-toy",),
        data=DataConfig("shapes", train_examples=20000),
        diffusion=DiffusionConfig(schedule="scaled_linear", prediction="eps"),
        train=TrainConfig(steps=8000, batch_size=64, lr=2e-3, warmup_steps=100, sample_every=4000),
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
    if data.category_weights is not None:
        from minidiff.data.shapes_dataset import TRAIN_CATEGORIES

        weights = data.category_weights
        if data.dataset != "shapes":
            raise ValueError(f"category_weights chooses Shapes caption categories; recipe {recipe.name} trains on "
                             f"{data.dataset}, so drop it")
        if len(weights) != len(TRAIN_CATEGORIES) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"category_weights={','.join(map(str, weights))}: give {len(TRAIN_CATEGORIES)} non-negative "
                             f"weights, not all zero, for the Shapes categories {','.join(TRAIN_CATEGORIES)}")
    if hasattr(model, "block_channels"):
        network = "autoencoder" if recipe.kind == "autoencoder" else "U-Net"
        factor = model.factor if network == "autoencoder" else model.downsampling_factor   # U-Net: patch x halvings
        size = model.sample_size
        if size % factor or size < factor:
            raise ValueError(f"image size sample_size={size} cannot go through this {network}, whose smallest "
                             f"feature map is {factor} times smaller; use a multiple of {factor}")
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
    from minidiff.data.shapes_dataset import category_options

    if data.dataset == "digits":
        return digits_tensors("train", size)[0]
    if data.dataset == "shapes":
        return shapes_tensors("train", data.train_examples, size, options=category_options(data.category_weights))[0]
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
        train_autoencoder_run(sections, run_config, out, resume, progress)
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
