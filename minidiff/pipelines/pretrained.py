"""A diffusers pipeline folder (model_index.json) -> a minidiff pipeline, part by part; and `load_pretrained`, the
one entry point for a model folder or a pipeline folder (re-exported as minidiff.load_pretrained).

`PIPELINES` is the registry {pipeline class in model_index.json -> PipelineSpec}: the parts its folder needs, the
parts minidiff ignores, and the function that assembles the checked folder into a minidiff pipeline. A later
chapter (SDXL, SD3, Wuerstchen, IF) adds a spec and its assembly function, never a branch. Chapter 3 has one entry,
Stable Diffusion 1.x/2.x. Its folder (what diffusers' `StableDiffusionPipeline.save_pretrained` writes) holds one
subfolder per part, named in model_index.json:

    model_index.json   {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], ...}
    unet/              config.json, diffusion_pytorch_model.safetensors  -> models.unet.UNet
    vae/               config.json, diffusion_pytorch_model.safetensors  -> models.autoencoder.Autoencoder
    text_encoder/      config.json, model.safetensors                    -> models.clip.CLIPTextEncoder
    tokenizer/         vocab.json + merges.txt or tokenizer.json, tokenizer_config.json -> data.tokenizer.BPETokenizer
    scheduler/         scheduler_config.json                             -> process.GaussianDiffusion + sampler settings
    safety_checker/, feature_extractor/, image_encoder/                  ignored: minidiff has no safety checker

The networks go through `minidiff.weights.load_pretrained` (safetensors only, the header checked against the
config before anything is loaded, then strict key-by-key loading). The scheduler's class (SD 1.5 ships a
PNDMScheduler) is not used: minidiff samples with its own DDIM or DDPM. From scheduler_config.json it takes what
defines the noise process, T and the betas and what the network predicts,

    beta_schedule "scaled_linear":  beta_t = (sqrt(beta_start) + t / (T - 1) (sqrt(beta_end) - sqrt(beta_start)))^2
    beta_schedule "linear":         beta_t = beta_start + t / (T - 1) (beta_end - beta_start)
    prediction_type "epsilon" -> "eps", "v_prediction" -> "v"

and `sampler_options`: the spacing, steps_offset and final alpha_bar with which minidiff's DDIM visits the same
timesteps as diffusers' `DDIMScheduler.from_config(scheduler_config)` (SD 1.5: 'leading', offset 1, ending at
alpha_bar_0 because set_alpha_to_one is false). So

    pipeline = load_pipeline(folder)
    images = pipeline.generate(prompts, pipeline.diffusion, **pipeline.sampler_options)

samples as diffusers' StableDiffusionPipeline does with that DDIM scheduler (and clip_sample=False), from the same
initial latents (tests/test_parity_sd_pipeline.py; docs/sd15-on-a-gpu.md for real weights on a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from minidiff.data.tokenizer import BPETokenizer
from minidiff.io import FileError, read_json
from minidiff.models.convert import MAX_WIDTH, flag, integer, number, text
from minidiff.pipelines.text_to_image import TextToImage
from minidiff.process import GaussianDiffusion, NoiseSchedule, linear_betas, scaled_linear_betas
from minidiff.weights import PretrainedError
from minidiff.weights import load_pretrained as load_model

BETA_SCHEDULES = {"scaled_linear": scaled_linear_betas, "linear": linear_betas}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v"}


@dataclass(frozen=True)
class PipelineSpec:
    """What one pipeline class's folder holds, and how it becomes a minidiff pipeline."""
    parts: tuple[str, ...]              # subfolders it needs, each named in model_index.json as [library, class]
    ignored: tuple[str, ...]            # parts minidiff leaves alone (safety checkers, image processors)
    assemble: Callable[[Path, torch.dtype], torch.nn.Module]   # (checked folder, dtype) -> the pipeline


def is_pipeline_folder(path: str | Path) -> bool:
    """A folder with model_index.json: a whole pipeline rather than one model."""
    return (Path(path) / "model_index.json").is_file()


def _read_json(file: Path, what: str) -> dict:
    try:
        return read_json(file, what, "re-save the pipeline with save_pretrained")
    except FileError as e:
        raise PretrainedError(str(e)) from None


# ---------------------------------------------------------------------------- the scheduler


def _refuse(key: str, value, fix: str) -> None:
    raise PretrainedError(f"scheduler_config.json has {key}={value!r}, which minidiff's samplers do not support; {fix}")


def diffusion_from_scheduler_config(config: dict) -> GaussianDiffusion:
    """diffusers scheduler_config.json -> the GaussianDiffusion (T, betas, prediction) it describes.

    Missing keys take the defaults of diffusers' scheduler classes (T = 1000, linear 1e-4 -> 0.02, epsilon)."""
    beta_schedule = text(config, "beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        _refuse("beta_schedule", beta_schedule, f"it has {' and '.join(BETA_SCHEDULES)}")
    if config.get("trained_betas") is not None:
        _refuse("trained_betas", "[...]", "set it to null and give beta_schedule, beta_start and beta_end")
    if flag(config, "rescale_betas_zero_snr", False):
        _refuse("rescale_betas_zero_snr", True, "set it to false (zero terminal SNR is not implemented)")
    prediction = text(config, "prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        _refuse("prediction_type", prediction, f"it has {' and '.join(PREDICTION_TYPES)}")
    steps = integer(config, "num_train_timesteps", 1000, minimum=2, maximum=MAX_WIDTH)
    beta_start = number(config, "beta_start", 0.0001, maximum=0.999, strictly_positive=True)
    beta_end = number(config, "beta_end", 0.02, minimum=beta_start, maximum=0.999)
    betas = BETA_SCHEDULES[beta_schedule](steps, beta_start, beta_end)                    # (T,)
    return GaussianDiffusion(NoiseSchedule(betas), PREDICTION_TYPES[prediction])


def sampler_options_from_scheduler_config(config: dict) -> dict:
    """The `sample` settings under which minidiff's DDIM takes the steps diffusers' DDIMScheduler.from_config(config)
    takes: timestep_spacing ('leading' by default), steps_offset (leading only), and set_alpha_to_one (true by
    default; false makes the last step land on alpha_bar_0, final_timestep=0). diffusers' StableDiffusionPipeline
    rewrites any steps_offset other than 1 to 1, so folders it saved hold 1; x0 clipping stays off, as that
    pipeline also forces clip_sample to false."""
    if flag(config, "thresholding", False):
        _refuse("thresholding", True, "set it to false (dynamic thresholding is not implemented)")
    spacing = text(config, "timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        _refuse("timestep_spacing", spacing, "set it to 'leading' or 'trailing'")
    steps_offset = integer(config, "steps_offset", 0, minimum=0, maximum=integer(config, "num_train_timesteps", 1000,
                                                                                  minimum=2) - 1)
    return dict(spacing=spacing, steps_offset=steps_offset if spacing == "leading" else 0,
                final_timestep=-1 if flag(config, "set_alpha_to_one", True) else 0)


def read_scheduler(folder: Path) -> tuple[GaussianDiffusion, dict]:
    """scheduler/scheduler_config.json -> (the GaussianDiffusion, the sampler options); one line for a bad file."""
    file = folder / "scheduler_config.json"
    if not file.is_file():
        raise PretrainedError(f"{folder} has no scheduler_config.json; save the whole pipeline")
    config = _read_json(file, "the scheduler's config")
    try:
        return diffusion_from_scheduler_config(config), sampler_options_from_scheduler_config(config)
    except ValueError as e:
        raise PretrainedError(f"{file}: {e}") from None


# ---------------------------------------------------------------------------- Stable Diffusion 1.x/2.x


def _context_length(tokenizer_folder: Path, positions: int) -> int:
    """The tokenizer's model_max_length (77 for SD), which must fit the text encoder's positions."""
    config_file = tokenizer_folder / "tokenizer_config.json"
    if not config_file.is_file():
        return positions
    length = _read_json(config_file, "the tokenizer's config").get("model_max_length")
    if length is None:
        return positions
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= positions:
        raise PretrainedError(f"{config_file} has model_max_length={length!r}, but the text encoder has {positions} "
                              f"positions; set it to {positions}")
    return length


def stable_diffusion(path: Path, dtype: torch.dtype) -> TextToImage:
    """A checked StableDiffusionPipeline folder -> TextToImage, with `diffusion` and `sampler_options` attached."""
    diffusion, sampler_options = read_scheduler(path / "scheduler")      # refused settings fail before any weights
    unet = load_model(path / "unet", dtype)
    vae = load_model(path / "vae", dtype)
    text_encoder = load_model(path / "text_encoder", dtype)
    try:
        tokenizer = BPETokenizer.from_folder(path / "tokenizer")
    except ValueError as e:
        raise PretrainedError(f"tokenizer: {e}") from None
    context_length = _context_length(path / "tokenizer", text_encoder.config.context_length)
    if unet.config.cross_attention_dim != text_encoder.config.width:
        raise PretrainedError(f"the U-Net reads text of width {unet.config.cross_attention_dim} but the text "
                              f"encoder writes width {text_encoder.config.width}: unet/ and text_encoder/ do not "
                              f"belong together")
    pipeline = TextToImage(unet, vae, text_encoder, tokenizer, context_length).eval()
    pipeline.diffusion = diffusion
    pipeline.sampler_options = sampler_options
    return pipeline


# The registry: pipeline class in model_index.json -> its spec, in the chapters' order.
PIPELINES: dict[str, PipelineSpec] = {
    "StableDiffusionPipeline": PipelineSpec(                                           # Chapter 3
        parts=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
        ignored=("safety_checker", "feature_extractor", "image_encoder"),
        assemble=stable_diffusion),
}


# ---------------------------------------------------------------------------- entry points


def _check_index(path: Path, index: dict) -> PipelineSpec:
    """model_index.json's class and parts against the registry; every part it needs present, as a folder."""
    file = path / "model_index.json"
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or class_name not in PIPELINES:
        raise PretrainedError(f"{file} names a {class_name!r} pipeline, which minidiff cannot load yet "
                              f"(supported: {', '.join(PIPELINES)})")
    spec = PIPELINES[class_name]
    parts = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    unknown = [k for k in parts if k not in spec.parts + spec.ignored]
    if unknown:
        raise PretrainedError(f"model_index.json in {path} names parts minidiff does not know ({', '.join(unknown)}); "
                              f"a {class_name} has {', '.join(spec.parts)}")
    for part in spec.parts:
        entry = index.get(part)
        if entry is not None and not (isinstance(entry, list) and len(entry) == 2
                                      and all(v is None or isinstance(v, str) for v in entry)):
            raise PretrainedError(f"{file} has {part}={entry!r}; expected [library, class] such as "
                                  f"[\"diffusers\", \"UNet2DConditionModel\"]: re-save the pipeline")
        if not entry or entry[0] is None or not (path / part).is_dir():
            raise PretrainedError(f"{path} has no {part}/ (or model_index.json has none); a {class_name} folder "
                                  f"needs {', '.join(p + '/' for p in spec.parts)}: save the whole pipeline")
    return spec


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build the minidiff pipeline of a diffusers pipeline folder (model_index.json), loading every part's weights.

    StableDiffusionPipeline -> TextToImage in eval mode with two more attributes: `diffusion` (the GaussianDiffusion
    of the scheduler config) and `sampler_options` (a dict for `generate`; see sampler_options_from_scheduler_config).
    The parts are in `dtype`; move them with `.to(device)`.
    """
    path = Path(path)
    spec = _check_index(path, _read_json(path / "model_index.json", "the pipeline's index"))
    return spec.assemble(path, dtype)


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """minidiff.load_pretrained: a pipeline folder (model_index.json) through PIPELINES, a model folder
    (config.json) through minidiff.weights' CONVERTERS. dtype: a floating-point torch dtype, float32 by default."""
    dtype = torch.float32 if dtype is None else dtype
    return (load_pipeline if is_pipeline_folder(path) else load_model)(path, dtype)
