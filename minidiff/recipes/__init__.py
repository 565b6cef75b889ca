"""Recipes: what each chapter trains, on which data, with which preset and budget.

`sections.py` holds the config sections every chapter shares; `base.py` the recipe, run kinds, prerequisite runs,
the parts that ship with minidiff, and `minidiff train / sample / eval`. Each chapter's module defines its run kinds
and registers them, its sections and its recipes:

  Chapter 1  ddpm.py    `ddpm-digits` (the main job: real handwritten digits, 16x16), `ddpm-2d` (2D toys)
  Chapter 2  latent.py  `vae-shapes` (the autoencoder), `ldm-shapes` (diffusion in its latents), `ddpm-shapes`
                        (the same data in pixel space, the baseline latent diffusion is measured against)
  Chapter 3  text.py    `clip-shapes` (a CLIP on Shapes captions), `sd-shapes` (text-to-image in the latent space)

A new chapter adds a module here and one import line below; nothing in base.py or sections.py changes.
"""
from minidiff.recipes.base import (RECIPES, RUN_KINDS, Recipe, RunKind, get_recipe, load_data, load_run,
                                   load_sections, make_run_config, run_evaluation, run_training, sample_from_run,
                                   shipped_part)
from minidiff.recipes.sections import SECTIONS, DataConfig, DiffusionConfig, SampleConfig
from minidiff.recipes import ddpm, latent, text  # noqa: F401  (each registers its run kinds and recipes)
from minidiff.recipes.latent import (LatentConfig, attach_autoencoder, autoencoder_tensors, build_latent_model,
                                     heldout_scenes, reconstruction_metrics)
from minidiff.recipes.text import GuidanceConfig, TextConfig

__all__ = ["RECIPES", "RUN_KINDS", "SECTIONS", "DataConfig", "DiffusionConfig", "GuidanceConfig", "LatentConfig",
           "Recipe", "RunKind", "SampleConfig", "TextConfig", "attach_autoencoder", "autoencoder_tensors",
           "build_latent_model", "get_recipe", "heldout_scenes", "load_data", "load_run", "load_sections",
           "make_run_config", "reconstruction_metrics", "run_evaluation", "run_training", "sample_from_run",
           "shipped_part"]
