"""Recipes: what each chapter trains, on which data, with which preset and budget.

A recipe bundles four config sections that are saved together in a run's config.json:
  model      the network's config dataclass (from a named preset, e.g. `unet-toy`)
  diffusion  the process: schedule, number of steps, prediction target
  train      the loop's settings (minidiff.training.loop.TrainConfig)
  sample     the default sampler used for grids and evaluation
Any field can be changed from the command line as `key=value` (or `section.key=value`).

Chapter 1: `ddpm-digits` (the main job: real handwritten digits, 16x16) and `ddpm-2d` (2D toys).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minidiff.config import apply_overrides, from_dict, to_dict
from minidiff.models import PRESETS, build_model
from minidiff.process import PREDICTIONS, SAMPLERS, SCHEDULES, VARIANCES, GaussianDiffusion, NoiseSchedule, sample
from minidiff.training.checkpoint import CHECKPOINT, CONFIG, atomic_write_text, load_checkpoint, unprefixed
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
class Recipe:
    name: str
    description: str
    preset: str                    # default model preset
    presets: tuple[str, ...]       # presets this recipe's data fits
    data: str                      # 'digits' or a 2D distribution name
    diffusion: DiffusionConfig
    train: TrainConfig
    sample: SampleConfig
    model_overrides: dict = field(default_factory=dict)
    eval_samples: int = 1000       # samples drawn by `minidiff eval`

    @property
    def is_2d(self) -> bool:
        return self.data != "digits"


RECIPES = {
    "ddpm-digits": Recipe(
        name="ddpm-digits",
        description="DDPM on scikit-learn's real handwritten digits at 16x16 (Chapter 1's main job)",
        preset="unet-toy", presets=("unet-toy", "ddpm-cifar10"), data="digits",
        diffusion=DiffusionConfig(schedule="cosine", prediction="eps"),
        train=TrainConfig(steps=1900, batch_size=64, lr=2e-3, warmup_steps=100, sample_every=1000),
        sample=SampleConfig(sampler="ddpm", sample_steps=100),
        model_overrides={"in_channels": 1, "out_channels": 1, "sample_size": 16},
        eval_samples=594,
    ),
    "ddpm-2d": Recipe(
        name="ddpm-2d",
        description="DDPM on a 2D toy distribution (dataset=swiss_roll | two_moons | eight_gaussians)",
        preset="mlp-toy", presets=("mlp-toy",), data="swiss_roll",
        diffusion=DiffusionConfig(schedule="linear", prediction="eps", num_steps=1000),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, warmup_steps=100, sample_every=0),
        sample=SampleConfig(sampler="ddpm", sample_steps=1000, clip_x0=False, num_images=2000),
        eval_samples=2000,
    ),
}


@dataclass
class DataConfig:
    dataset: str = "digits"        # 'digits' or a 2D distribution: swiss_roll, two_moons, eight_gaussians
    num_points: int = 20000        # training points for 2D toys


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
    data = DataConfig(dataset=recipe.data)
    sections = apply_overrides({"model": model_config, "diffusion": recipe.diffusion, "train": recipe.train,
                                "sample": recipe.sample, "data": data}, list(overrides))
    validate(sections)
    return {"recipe": recipe.name, "preset": preset, **{k: to_dict(v) for k, v in sections.items()}}


def validate(sections: dict) -> None:
    d, s, data = sections["diffusion"], sections["sample"], sections["data"]
    for value, allowed, key in [(d.schedule, SCHEDULES, "schedule"), (d.prediction, PREDICTIONS, "prediction"),
                                (s.sampler, SAMPLERS, "sampler"), (s.variance, VARIANCES, "variance")]:
        if value not in allowed:
            raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")
    if not 1 <= s.sample_steps <= d.num_steps:
        raise ValueError(f"sample_steps={s.sample_steps} must be between 1 and num_steps={d.num_steps}")
    from minidiff.data import DISTRIBUTIONS

    model, is_image = sections["model"], hasattr(sections["model"], "block_channels")
    if data.dataset != "digits" and data.dataset not in DISTRIBUTIONS:
        raise ValueError(f"unknown dataset {data.dataset!r}; choose digits or one of {', '.join(DISTRIBUTIONS)}")
    if is_image != (data.dataset == "digits"):
        raise ValueError(f"dataset {data.dataset!r} does not fit this preset's network; use recipe "
                         f"{'ddpm-digits' if data.dataset == 'digits' else 'ddpm-2d'}")
    if is_image:
        factor, size = 2 ** (len(model.block_channels) - 1), model.sample_size
        if size % factor or size < factor or size < 8:
            raise ValueError(f"image size sample_size={size} cannot go through this U-Net, which halves the resolution "
                             f"{len(model.block_channels) - 1} times; use a multiple of {factor}, at least 8")


def load_sections(run_config: dict) -> dict:
    """config.json dict -> config dataclasses."""
    model_cls = type(PRESETS[run_config["preset"]][1]())
    return {"model": from_dict(model_cls, run_config["model"]),
            "diffusion": from_dict(DiffusionConfig, run_config["diffusion"]),
            "train": from_dict(TrainConfig, run_config["train"]),
            "sample": from_dict(SampleConfig, run_config["sample"]),
            "data": from_dict(DataConfig, run_config["data"])}


def load_data(data: DataConfig, size: int = 16) -> torch.Tensor:
    """Training data as a tensor: digits (N, 1, size, size) in [-1, 1], or 2D points (N, 2)."""
    from minidiff.data import digits_tensors, sample_2d

    if data.dataset == "digits":
        return digits_tensors("train", size)[0]
    return sample_2d(data.dataset, data.num_points, torch.Generator().manual_seed(1234))


def sample_from_run(model: torch.nn.Module, sections: dict, n: int, seed: int = 0, **sampler_overrides):
    """Draw n samples from a trained model with the run's default sampler (overridable)."""
    s = dataclasses.replace(sections["sample"], **sampler_overrides)
    diffusion = sections["diffusion"].build()
    data = sections["data"]
    m = sections["model"]
    shape = (n, 2) if data.dataset != "digits" else (n, m.in_channels, m.sample_size, m.sample_size)
    device = next(model.parameters()).device
    x = sample(model, diffusion, shape, sampler=s.sampler, steps=s.sample_steps, eta=s.eta, variance=s.variance,
               clip_x0=s.clip_x0, generator=torch.Generator().manual_seed(seed), device=device).cpu()
    return x if data.dataset != "digits" else x.clamp(-1, 1)  # images: the pixel range, as when saved


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
    from minidiff.eval.toy2d import toy2d_metrics

    return toy2d_metrics(samples, data.dataset)


# Settings that may change when a run is resumed: how long it trains, and what it writes on the way.
RESUMABLE_KEYS = ("steps", "sample_every", "checkpoint_every", "log_every", "device")


def run_training(recipe_name: str, out: str | Path, preset: str | None = None, overrides: list[str] = (),
                 resume: bool = False, progress: bool = True, evaluate_after: bool = True) -> dict:
    """`minidiff train`: train, write samples.png and (optionally) metrics.json; returns the metrics (or {})."""
    out = Path(out)
    if resume:
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
    else:
        run_config = make_run_config(recipe_name, preset, overrides)
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume, or pass --out NEW_DIR")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, json.dumps(run_config, indent=2))

    sections = load_sections(run_config)
    recipe = get_recipe(run_config["recipe"])
    torch.manual_seed(sections["train"].seed)
    model = build_model(sections["model"])
    diffusion = sections["diffusion"].build()
    data = load_data(sections["data"], getattr(sections["model"], "sample_size", 0))
    n_grid = sections["sample"].num_images

    def on_sample(ema, step):
        samples = sample_from_run(ema, sections, n_grid, seed=step)
        save_samples(samples, out / "samples" / f"step_{step:06d}.png", recipe.is_2d, f"step {step}")

    _, ema, _ = train(model, diffusion, data, sections["train"], out, run_config, resume=resume,
                      on_sample=on_sample, progress=progress)
    save_samples(sample_from_run(ema, sections, n_grid), out / "samples.png", recipe.is_2d, recipe.name)
    if not evaluate_after:
        return {}
    return run_evaluation(out, model=ema)


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(EMA model in eval mode, config sections) from a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist; train one with `minidiff train RECIPE --out {run_dir}`")
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    sections = load_sections(meta["config"])
    model = build_model(sections["model"])
    model.load_state_dict(unprefixed(tensors, "ema"))
    return model.to(device).eval(), sections


def run_evaluation(run_dir: str | Path, model: torch.nn.Module | None = None, n: int | None = None,
                   seed: int = 0, **sampler_overrides) -> dict:
    """`minidiff eval`: sample the run's model and write metrics.json next to it."""
    run_dir = Path(run_dir)
    loaded, sections = load_run(run_dir)
    model = model or loaded
    recipe = get_recipe(json.loads((run_dir / CONFIG).read_text())["recipe"]) if (run_dir / CONFIG).exists() else None
    n = n or (recipe.eval_samples if recipe else 1000)
    samples = sample_from_run(model, sections, n, seed=seed, **sampler_overrides)
    s = dataclasses.replace(sections["sample"], **sampler_overrides)
    metrics = {**evaluate(samples, sections), "sampler": s.sampler, "sample_steps": s.sample_steps}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
