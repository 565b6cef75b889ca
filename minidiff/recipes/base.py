"""What every recipe shares: the recipe, its config sections, run kinds, prerequisites, shipped parts, and the
`minidiff train / sample / eval` steps that do not depend on the kind of run.

A recipe bundles config sections that are saved together in a run's config.json:
  model      the network's config dataclass (from a named preset, e.g. `unet-toy`)
  train      the loop's settings (minidiff.training.loop.TrainConfig)
  data       which data, how much of it
  ...        the sections its run kind needs: `diffusion` and `sample` for a diffusion run, `loss` and
             `discriminator` for an autoencoder, `latent`, `text`, `guidance`, `text_encoder` ...
Any field can be changed from the command line as `key=value` (or `section.key=value`).

A *run kind* says what a run does: which sections it has, how it gets ready (prerequisite runs, a tokenizer), how
it trains, how its model is rebuilt from a checkpoint, how it samples and how it is evaluated. Each chapter's
module (minidiff/recipes/ddpm.py, latent.py, text.py, ...) defines its kinds and registers them and its recipes
here; nothing in this file knows a particular kind. A section whose config class depends on a family (the
process: Gaussian or rectified flow; a text encoder: CLIP, T5, a language model) is saved with a "family" tag, so
a run folder says which class rebuilds it.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minidiff.config import apply_overrides, from_dict, to_dict
from minidiff.io import (FileError, atomic_write_json, load_state_strict, read_json,
                         remove_stale_temporaries)
from minidiff.models import PRESETS
from minidiff.training.checkpoint import CHECKPOINT, CONFIG, load_checkpoint, save_checkpoint, unprefixed

from minidiff.recipes.sections import (SECTIONS, DataConfig, Sections, check_model_sizes, section_from_dict,
                                       section_to_dict)

PARTS_DIR = Path(__file__).parent / "parts"   # the toy parts that ship with minidiff (see parts/README.md)


# ---------------------------------------------------------------------------- recipes and run kinds


@dataclass
class Recipe:
    name: str
    description: str
    kind: str                      # the run kind's name (RUN_KINDS)
    chapter: int
    preset: str                    # default model preset
    presets: tuple[str, ...]       # presets this recipe's data fits
    sections: dict                 # section name -> its default config (the kind's sections but 'model')
    model_overrides: dict = field(default_factory=dict)
    eval_samples: int = 1000       # samples (or test images) used by `minidiff eval`

    @property
    def data(self) -> DataConfig:
        return self.sections["data"]


class RunKind:
    """What a kind of run does. A chapter subclasses it and registers one instance; `minidiff train / sample /
    eval` call only these methods.

    sections   config sections (besides 'model') a run of this kind has
    prompts    True if `minidiff sample` takes --prompt (text-to-image)
    """
    name = ""
    sections: tuple[str, ...] = ()
    prompts = False
    what = "run"                   # the kind in words, for messages

    def validate(self, sections: dict, recipe: Recipe) -> None:
        """Checks that involve several sections (each section checks itself in its own validate())."""

    def prepare(self, run_config: dict, out: Path, progress: bool, retrain_parts: bool, resume: bool) -> dict:
        """Before the first step: find (or train) the runs this one builds on, copy what it needs of them into its
        config (returned). resume: the run was interrupted while preparing; finish its unfinished parts."""
        return run_config

    def train(self, sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
        raise NotImplementedError

    def build(self, sections: dict, run_dir: Path) -> torch.nn.Module:
        """The run's network(s), untrained, ready for the checkpoint's EMA weights."""
        raise NotImplementedError

    def sample(self, model, sections: dict, n: int, seed: int = 0, prompts: list[str] | None = None,
               **overrides) -> torch.Tensor:
        raise ValueError(f"this run is {self.what}, which does not sample")

    def evaluate(self, model, sections: dict, run_dir: Path, n: int, seed: int = 0, **overrides) -> dict:
        raise NotImplementedError

    def sample_overrides(self, sections: dict, overrides: dict) -> dict:
        """The run's sections with sampler/guidance overrides applied and validated (what sample/eval will use)."""
        out = sections.replace()
        for name in ("sample", "guidance"):
            if name in sections:
                config = sections[name]
                changes = {k: v for k, v in overrides.items() if hasattr(config, k)}
                out[name] = dataclasses.replace(config, **changes)
        unknown = [k for k in overrides if not any(hasattr(out.get(s), k) for s in ("sample", "guidance"))]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} does not apply to this run ({self.what})")
        validate_sections(out, None)
        return out


RECIPES: dict[str, Recipe] = {}
RUN_KINDS: dict[str, RunKind] = {}


def register_kind(kind: RunKind) -> RunKind:
    RUN_KINDS[kind.name] = kind
    return kind


def register_recipe(recipe: Recipe) -> Recipe:
    kind = RUN_KINDS[recipe.kind]
    missing = set(kind.sections) - set(recipe.sections)
    if missing:
        raise ValueError(f"recipe {recipe.name} lacks the sections its kind {kind.name} needs: {sorted(missing)}")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def kind_of(run_config: dict) -> RunKind:
    return RUN_KINDS[get_recipe(run_config["recipe"]).kind]


def recipe_of(run_config: dict) -> Recipe:
    return get_recipe(run_config["recipe"])


# ---------------------------------------------------------------------------- configs


def make_run_config(recipe_name: str, preset: str | None = None, overrides: list[str] = ()) -> dict:
    """The full, validated config of a run: recipe defaults, then the preset, then key=value overrides."""
    recipe = get_recipe(recipe_name)
    preset = preset or recipe.preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; run `minidiff presets` to list them")
    if preset not in recipe.presets:
        raise ValueError(f"preset {preset!r} does not fit recipe {recipe.name}; use one of {', '.join(recipe.presets)}")
    model_config = PRESETS[preset][1](**recipe.model_overrides)
    sections = apply_overrides({"model": model_config, **recipe.sections}, list(overrides))
    validate_sections(sections, recipe)
    return {"recipe": recipe.name, "preset": preset,
            **{k: to_dict(v) if k == "model" else section_to_dict(k, v) for k, v in sections.items()}}


def validate_sections(sections: dict, recipe: Recipe | None) -> None:
    """Each section's own checks, then the cross-section checks: the sample steps fit the process, the dataset fits
    the recipe, and the kind's own (recipe None: only what does not need the recipe)."""
    for config in sections.values():
        if hasattr(config, "validate"):
            config.validate()
    check_model_sizes(sections["model"])
    if hasattr(sections.get("diffusion"), "num_steps") and hasattr(sections.get("sample"), "sample_steps"):
        steps, num_steps = sections["sample"].sample_steps, sections["diffusion"].num_steps   # a discrete process
        if not 1 <= steps <= num_steps:
            raise ValueError(f"sample_steps={steps} must be between 1 and num_steps={num_steps}")
    if recipe is None:
        return
    from minidiff.data import DISTRIBUTIONS

    data, expected = sections["data"], recipe.data.dataset
    if (data.dataset in DISTRIBUTIONS) != (expected in DISTRIBUTIONS) or (
            expected not in DISTRIBUTIONS and data.dataset != expected):
        choices = ", ".join(DISTRIBUTIONS) if expected in DISTRIBUTIONS else expected
        raise ValueError(f"dataset {data.dataset!r} does not fit recipe {recipe.name}; use dataset={choices}")
    if data.category_weights is not None and data.dataset != "shapes":
        raise ValueError(f"category_weights chooses Shapes caption categories; recipe {recipe.name} trains on "
                         f"{data.dataset}, so drop it")
    RUN_KINDS[recipe.kind].validate(sections, recipe)


def load_sections(run_config: dict) -> dict:
    """config.json dict -> config dataclasses (a 'model' section plus those the run has)."""
    if run_config.get("preset") not in PRESETS:
        raise FileError(f"the run's config names preset {run_config.get('preset')!r}, which this minidiff does not "
                        f"have; the run is from another version")
    model_cls = type(PRESETS[run_config["preset"]][1]())
    sections = Sections(run_config["recipe"], {"model": from_dict(model_cls, run_config["model"])})
    for name, value in run_config.items():
        if name in SECTIONS:
            sections[name] = section_from_dict(name, value)
    return sections


# ---------------------------------------------------------------------------- data


def load_data(data: DataConfig, size: int = 16) -> torch.Tensor:
    """Training data as a tensor: images (N, C, size, size) in [-1, 1], or 2D points (N, 2)."""
    from minidiff.data import digits_tensors, sample_2d, shapes_tensors
    from minidiff.data.shapes_dataset import category_options

    if data.dataset == "digits":
        return digits_tensors("train", size)[0]
    if data.dataset == "shapes":
        return shapes_tensors("train", data.train_examples, size, options=category_options(data.category_weights))[0]
    return sample_2d(data.dataset, data.num_points, torch.Generator().manual_seed(1234))


# ---------------------------------------------------------------------------- prerequisite runs and shipped parts


def shipped_part(recipe: str) -> Path | None:
    """The folder of the toy part that ships with minidiff for `recipe` (a finished run of it), or None."""
    folder = PARTS_DIR / recipe
    return folder if (folder / CHECKPOINT).is_file() else None


SHIPPED_FILES = (CONFIG, "metrics.json", "samples.png")   # copied beside the weights; a tokenizer folder too


def ship_part(run_dir: str | Path, parts_dir: str | Path = PARTS_DIR) -> Path:
    """Turn a finished run into a shipped part: its EMA weights only (no training weights, optimizer or
    discriminator: a few MB), its config, metrics, samples and tokenizer, in parts_dir/RECIPE. Returns that folder.

    How the parts in minidiff/recipes/parts were made is in the README there."""
    run_dir = Path(run_dir)
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    recipe, (step, steps) = meta["config"]["recipe"], _progress(run_dir / CHECKPOINT)
    if step < steps:
        raise ValueError(f"{run_dir} stopped at step {step} of {steps}; finish it with --resume before shipping it")
    if not (run_dir / "metrics.json").exists():
        raise ValueError(f"{run_dir} has no metrics.json; run `minidiff eval {run_dir}` first, so the part ships "
                         f"with the numbers it was measured at")
    dest = Path(parts_dir) / recipe
    dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest / CHECKPOINT, {f"ema.{k}": v for k, v in unprefixed(tensors, "ema").items()},
                    {"step": step, "config": meta["config"]})
    for name in SHIPPED_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    if (run_dir / "tokenizer").is_dir():
        shutil.copytree(run_dir / "tokenizer", dest / "tokenizer", dirs_exist_ok=True)
    return dest


def _progress(checkpoint: Path) -> tuple[int, int]:
    """(steps done, steps planned) of the run whose checkpoint this is."""
    _, meta = load_checkpoint(checkpoint)
    return meta["step"], meta["config"]["train"]["steps"]


def prerequisite_run(folder: str, default: Path, recipe: str, key: str, what: str, progress: bool,
                     retrain: bool = False, resume: bool = False, evaluate_after: bool = False) -> tuple[Path, dict]:
    """The finished run another run builds on, as (its folder, its config).

    folder: the user's `key=FOLDER`, if given. Otherwise the part that ships with minidiff, or, with retrain (the
    `--retrain-parts` option) or where none ships, a run of `recipe` trained first in `default` (resumed there if
    resume and it was interrupted). A folder of another recipe, or a run stopped before its last step, is an error.
    """
    from minidiff.training.distributed import world_size

    if not folder:
        shipped = None if retrain else shipped_part(recipe)
        if shipped is not None:
            print(f"using the shipped {recipe} part ({shipped}); pass --retrain-parts to train it from scratch, "
                  f"or {key}=FOLDER for your own")
            folder = str(shipped)
        else:
            checkpoint = default / CHECKPOINT
            step, steps = _progress(checkpoint) if checkpoint.exists() else (0, 1)
            if not checkpoint.exists() or (step < steps and resume):
                if world_size() > 1:
                    raise ValueError(f"under torchrun, train the {recipe} part first (`torchrun ... -m minidiff "
                                     f"train {recipe} --out {default}`), then pass {key}={default}")
                run_training(recipe, default, progress=progress, evaluate_after=evaluate_after,
                             resume=checkpoint.exists())
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


# ---------------------------------------------------------------------------- minidiff train


# Settings that may change when a run is resumed: how long it trains, and what it writes on the way.
RESUMABLE_KEYS = ("steps", "sample_every", "checkpoint_every", "log_every", "device")


def check_output_folder(out: Path) -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written."""
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{parent} is a file, so {out} cannot be a folder; pass --out NEW_DIR")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{parent} is not writable, so nothing can be saved in {out}; pass --out to a "
                                 f"folder you can write")
            return


def _resumed_config(recipe_name: str | None, out: Path, preset: str | None, overrides: list[str]) -> dict:
    """The config of the run in `out`, with the overrides that may change on resume applied."""
    _, meta = load_checkpoint(out / CHECKPOINT)
    run_config = meta["config"]
    if recipe_name and recipe_name != run_config.get("recipe"):
        raise ValueError(f"{out} holds a {run_config.get('recipe')} run, not {recipe_name}; resume it with "
                         f"`minidiff train {run_config.get('recipe')} --out {out} --resume`, or pass --out NEW_DIR")
    if preset and preset != run_config["preset"]:
        raise ValueError(f"--resume continues a run with its own preset ({run_config['preset']}); drop --preset")
    if (out / CONFIG).exists():
        on_disk = read_json(out / CONFIG, "the run's config", "restore it, or delete it: the checkpoint holds the "
                                                              "config too")
        differ = sorted(k for k in set(on_disk) | set(run_config) if k != "train" and on_disk.get(k) != run_config.get(k))
        if differ:
            raise ValueError(f"{out / CONFIG} differs from the config saved in the checkpoint (in {', '.join(differ)}); "
                             f"minidiff does not read edits to config.json: restore it (or delete it) and change "
                             f"settings with key=value overrides")
    if overrides:
        before = load_sections(run_config)
        after = apply_overrides(before, list(overrides))
        changed = [f"{s}.{f.name}" for s in before for f in dataclasses.fields(before[s])
                   if getattr(before[s], f.name) != getattr(after[s], f.name)
                   and not (s == "train" and f.name in RESUMABLE_KEYS)]
        if changed:
            raise ValueError(f"--resume continues a run as it was configured; only {', '.join(RESUMABLE_KEYS)} "
                             f"may change (tried to change {', '.join(changed)}); for other settings start a new "
                             f"run with --out NEW_DIR")
        after["train"].validate()
        if after["train"].steps < meta["step"]:
            raise ValueError(f"steps={after['train'].steps} is behind the checkpoint (step {meta['step']}); "
                             f"give steps of at least {meta['step']}")
        run_config["train"] = to_dict(after["train"])
    return run_config


PREPARING = "preparing"            # config.json's status while the runs this one builds on are being trained


def run_training(recipe_name: str, out: str | Path, preset: str | None = None, overrides: list[str] = (),
                 resume: bool = False, progress: bool = True, evaluate_after: bool = True,
                 retrain_parts: bool = False) -> dict:
    """`minidiff train`: train, write samples.png and (optionally) metrics.json; returns the metrics (or {}).

    retrain_parts: train the runs this one builds on (an autoencoder, a CLIP) from scratch in subfolders of `out`
    instead of using the parts that ship with minidiff."""
    from minidiff.training.distributed import is_main

    out = Path(out)
    check_output_folder(out)
    if resume and not (out / CHECKPOINT).exists():
        plan = read_json(out / CONFIG, "the run's config", f"there is no run to resume in {out}; train one first "
                         f"with `minidiff train RECIPE --out {out}`") if (out / CONFIG).exists() else None
        if plan is None or plan.get("status") != PREPARING:
            raise ValueError(f"no checkpoint at {out / CHECKPOINT}; train first with "
                             f"`minidiff train {recipe_name or 'RECIPE'} --out {out}`")
        # interrupted while its prerequisites trained: prepare again (resuming them), then train from step 0
        return _train_new(plan["recipe"], out, plan, progress, evaluate_after, plan.get("retrain_parts", False),
                          resume_parts=True)
    if resume:
        run_config = _resumed_config(recipe_name, out, preset, overrides)
        if is_main():
            remove_stale_temporaries(out)
            atomic_write_json(out / CONFIG, run_config)
        return _train(run_config, out, True, progress, evaluate_after)
    run_config = make_run_config(recipe_name, preset, overrides)
    if (out / CHECKPOINT).exists() or (out / CONFIG).exists():
        raise ValueError(f"{out} already holds a run; continue it with --resume, or pass --out NEW_DIR")
    return _train_new(recipe_name, out, run_config, progress, evaluate_after, retrain_parts, resume_parts=False)


def _train_new(recipe_name: str, out: Path, run_config: dict, progress: bool, evaluate_after: bool,
               retrain_parts: bool, resume_parts: bool) -> dict:
    from minidiff.training.distributed import barrier, is_main

    kind = RUN_KINDS[get_recipe(recipe_name).kind]
    run_config = {k: v for k, v in run_config.items() if k not in ("status", "retrain_parts")}
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        atomic_write_json(out / CONFIG, {"status": PREPARING, "retrain_parts": retrain_parts, **run_config})
        run_config = kind.prepare(run_config, out, progress, retrain_parts, resume_parts)
        atomic_write_json(out / CONFIG, run_config)
    barrier()
    run_config = read_json(out / CONFIG, "the run's config")     # every rank trains what rank 0 prepared
    return _train(run_config, out, False, progress, evaluate_after)


def _train(run_config: dict, out: Path, resume: bool, progress: bool, evaluate_after: bool) -> dict:
    from minidiff.training.distributed import barrier, is_main

    sections = load_sections(run_config)
    torch.manual_seed(sections["train"].seed)
    kind_of(run_config).train(sections, run_config, out, resume, progress and is_main())
    barrier()
    return run_evaluation(out) if evaluate_after and is_main() else {}


# ---------------------------------------------------------------------------- loading, sampling, evaluating


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(EMA model in eval mode, config sections) from a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist; train one with `minidiff train RECIPE --out {run_dir}`")
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    config = meta["config"]
    if config.get("recipe") not in RECIPES:
        raise FileError(f"{run_dir} is a {config.get('recipe')!r} run, a recipe this minidiff does not have; "
                        f"it is from another version")
    sections = load_sections(config)
    model = kind_of(config).build(sections, run_dir)
    load_state_strict(model, unprefixed(tensors, "ema"), str(run_dir / CHECKPOINT),
                      "the checkpoint does not match its own config; restore it from a backup, or retrain")
    return model.to(device).eval(), sections


def sample_from_run(model: torch.nn.Module, sections: dict, n: int, seed: int = 0, **sampler_overrides):
    """Draw n samples from a trained model with the run's default sampler (overridable).

    Images come back in [-1, 1] (latent runs decode their samples), 2D points as they are."""
    kind = RUN_KINDS[get_recipe(sections.recipe).kind]
    if kind.prompts:
        raise ValueError("this run draws images from prompts; use `minidiff sample RUN --prompt TEXT`, or "
                         "minidiff.recipes.text.generate(model, sections, prompts)")
    return kind.sample(model, kind.sample_overrides(sections, sampler_overrides), n, seed)


def run_evaluation(run_dir: str | Path, model: torch.nn.Module | None = None, n: int | None = None,
                   seed: int = 0, **sampler_overrides) -> dict:
    """`minidiff eval`: sample the run's model (or reconstruct held-out images) and write metrics.json."""
    run_dir = Path(run_dir)
    if n is not None and n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    loaded, sections = load_run(run_dir)
    model = model or loaded
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    recipe = recipe_of(meta["config"])
    kind = RUN_KINDS[recipe.kind]
    metrics = kind.evaluate(model, kind.sample_overrides(sections, sampler_overrides), run_dir,
                            n or recipe.eval_samples, seed=seed)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
