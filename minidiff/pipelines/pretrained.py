"""A diffusers Stable Diffusion pipeline folder (model_index.json) -> minidiff's TextToImage, part by part.

Such a folder (what diffusers' `StableDiffusionPipeline.save_pretrained` writes) holds one subfolder per part,
named in model_index.json:

    model_index.json   {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], ...}
    unet/              config.json, diffusion_pytorch_model.safetensors  -> models.unet.UNet
    vae/               config.json, diffusion_pytorch_model.safetensors  -> models.autoencoder.Autoencoder
    text_encoder/      config.json, model.safetensors                    -> models.clip.CLIPTextEncoder
    tokenizer/         vocab.json + merges.txt or tokenizer.json, tokenizer_config.json -> data.tokenizer.BPETokenizer
    scheduler/         scheduler_config.json                             -> process.GaussianDiffusion + sampler settings
    safety_checker/, feature_extractor/, image_encoder/                  ignored: minidiff has no safety checker

The networks go through `minidiff.weights.load_pretrained` (safetensors only, strict key-by-key loading). The
scheduler's class (SD 1.5 ships a PNDMScheduler) is not used: minidiff samples with its own DDIM or DDPM. From
scheduler_config.json it takes what defines the noise process, T and the betas and what the network predicts,

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

import json
from pathlib import Path

import torch

from minidiff.data.tokenizer import BPETokenizer
from minidiff.pipelines.text_to_image import TextToImage
from minidiff.process import GaussianDiffusion, NoiseSchedule, linear_betas, scaled_linear_betas
from minidiff.weights import PretrainedError, load_pretrained

PIPELINE_CLASSES = ("StableDiffusionPipeline",)
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
IGNORED_PARTS = ("safety_checker", "feature_extractor", "image_encoder")
BETA_SCHEDULES = {"scaled_linear": scaled_linear_betas, "linear": linear_betas}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v"}


def is_pipeline_folder(path: str | Path) -> bool:
    """A folder with model_index.json: a whole pipeline rather than one model."""
    return (Path(path) / "model_index.json").is_file()


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{file} is not valid JSON ({e}); re-save the pipeline") from None


def _refuse(key: str, value, fix: str) -> None:
    raise PretrainedError(f"scheduler_config.json has {key}={value!r}, which minidiff's samplers do not support; {fix}")


def diffusion_from_scheduler_config(config: dict) -> GaussianDiffusion:
    """diffusers scheduler_config.json -> the GaussianDiffusion (T, betas, prediction) it describes.

    Missing keys take the defaults of diffusers' scheduler classes (T = 1000, linear 1e-4 -> 0.02, epsilon)."""
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        _refuse("beta_schedule", beta_schedule, f"it has {' and '.join(BETA_SCHEDULES)}")
    if config.get("trained_betas") is not None:
        _refuse("trained_betas", "[...]", "set it to null and give beta_schedule, beta_start and beta_end")
    if config.get("rescale_betas_zero_snr", False):
        _refuse("rescale_betas_zero_snr", True, "set it to false (zero terminal SNR is not implemented)")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        _refuse("prediction_type", prediction, f"it has {' and '.join(PREDICTION_TYPES)}")
    betas = BETA_SCHEDULES[beta_schedule](config.get("num_train_timesteps", 1000),
                                          config.get("beta_start", 0.0001), config.get("beta_end", 0.02))   # (T,)
    return GaussianDiffusion(NoiseSchedule(betas), PREDICTION_TYPES[prediction])


def sampler_options_from_scheduler_config(config: dict) -> dict:
    """The `sample` settings under which minidiff's DDIM takes the steps diffusers' DDIMScheduler.from_config(config)
    takes: timestep_spacing ('leading' by default), steps_offset (leading only), and set_alpha_to_one (true by
    default; false makes the last step land on alpha_bar_0, final_timestep=0). diffusers' StableDiffusionPipeline
    rewrites any steps_offset other than 1 to 1, so folders it saved hold 1; x0 clipping stays off, as that
    pipeline also forces clip_sample to false."""
    if config.get("thresholding", False):
        _refuse("thresholding", True, "set it to false (dynamic thresholding is not implemented)")
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        _refuse("timestep_spacing", spacing, "set it to 'leading' or 'trailing'")
    return dict(spacing=spacing, steps_offset=config.get("steps_offset", 0) if spacing == "leading" else 0,
                final_timestep=-1 if config.get("set_alpha_to_one", True) else 0)


def _context_length(tokenizer_folder: Path, positions: int) -> int:
    """The tokenizer's model_max_length (77 for SD), which must fit the text encoder's positions."""
    config_file = tokenizer_folder / "tokenizer_config.json"
    length = _read_json(config_file).get("model_max_length") if config_file.is_file() else None
    if length is None:
        return positions
    if not isinstance(length, int) or not 2 <= length <= positions:
        raise PretrainedError(f"{config_file} has model_max_length={length!r}, but the text encoder has {positions} "
                              f"positions; set it to {positions}")
    return length


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> TextToImage:
    """Build minidiff's TextToImage from a diffusers StableDiffusionPipeline folder, loading every part's weights.

    Returns the pipeline in eval mode with two more attributes: `diffusion` (the GaussianDiffusion of the
    scheduler config) and `sampler_options` (a dict for `generate`; see sampler_options_from_scheduler_config).
    The parts are in `dtype`; move them with `.to(device)`.
    """
    path = Path(path)
    index = _read_json(path / "model_index.json")
    class_name = index.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise PretrainedError(f"{path} holds a {class_name!r}, which minidiff cannot load yet "
                              f"(supported: {', '.join(PIPELINE_CLASSES)})")
    unknown = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
               and k not in PARTS + IGNORED_PARTS]
    if unknown:
        raise PretrainedError(f"model_index.json in {path} names parts minidiff does not know ({', '.join(unknown)}); "
                              f"a Stable Diffusion pipeline has {', '.join(PARTS)}")
    for part in PARTS:
        if not index.get(part) or index[part][0] is None or not (path / part).is_dir():
            raise PretrainedError(f"{path} has no {part}/ (or model_index.json has none); a Stable Diffusion "
                                  f"pipeline folder needs {', '.join(p + '/' for p in PARTS)}: save the whole pipeline")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise PretrainedError(f"{path / 'scheduler'} has no scheduler_config.json; save the whole pipeline")
    scheduler_config = _read_json(scheduler_file)
    diffusion = diffusion_from_scheduler_config(scheduler_config)              # refused settings fail before
    sampler_options = sampler_options_from_scheduler_config(scheduler_config)  # the weights are read

    unet = load_pretrained(path / "unet", dtype)
    vae = load_pretrained(path / "vae", dtype)
    text_encoder = load_pretrained(path / "text_encoder", dtype)
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
