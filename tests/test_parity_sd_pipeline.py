"""Loading a diffusers StableDiffusionPipeline folder with minidiff.load_pretrained: the same text embeddings and
the same images as diffusers' pipeline, and clear errors for folders minidiff cannot load.

A tiny random pipeline stands in for SD 1.5's weights: a UNet2DConditionModel, an AutoencoderKL with 4 latent
channels, a CLIPTextModel and a CLIPTokenizer on a tiny CLIP-layout vocabulary (model_max_length 16), every weight
perturbed so that no mapping error can hide behind a default initialisation. It is saved with save_pretrained
(safetensors) and loaded by both libraries. diffusers samples with `DDIMScheduler.from_config(scheduler config,
clip_sample=False)`, the recipe docs/sd15-on-a-gpu.md gives; minidiff with `generate(..., **sampler_options)`.

Tolerance on images in [0, 1]: 1e-4. The two pipelines run the same float32 arithmetic through different code (and
minidiff builds alpha_bar in float64, diffusers in float32); measured, they differ by at most 4e-6 after 10 steps
(guidance 7.5 amplifies round-off in the two noise predictions). A real difference in the sampler is far larger:
ending at alpha_bar = 1 instead of alpha_bar_0 moves these images by 1.7e-3, a steps_offset of 0 instead of 1 by
1.9e-2 (test_wrong_sampler_settings_would_be_caught).
"""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,  # noqa: E402
                       UNet2DConditionModel)

import minidiff  # noqa: E402
from minidiff.data.tokenizer import BPETokenizer  # noqa: E402
from minidiff.models import Autoencoder, CLIPTextEncoder, UNet  # noqa: E402
from minidiff.pipelines.text_to_image import TextToImage  # noqa: E402
from minidiff.process import timesteps  # noqa: E402
from minidiff.weights import PretrainedError  # noqa: E402
from minidiff.weights import load_pretrained as load_one_model  # noqa: E402
from parity_helpers import randomized  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:prompt")]

CAPTIONS = ["a red circle above a blue square", "two yellow crosses", "a purple diamond left of a green triangle"]
PROMPTS = ["a red circle above a blue square", "two yellow crosses and a purple diamond"]
NEGATIVE = "a green triangle"
LONG = "a red circle " * 8            # 24 tokens: cut to the 14 that fit between BOS and EOS
CONTEXT = 16                          # the tokenizer's model_max_length = the text encoder's positions
STEPS = 10
TOLERANCE = 1e-4
SD15_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SCHEDULERS = {
    # SD 1.5's own scheduler_config.json: PNDM, leading spacing with steps_offset 1, set_alpha_to_one false
    "sd15-pndm": lambda: PNDMScheduler(**SD15_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1),
    # SD 2-768-style v-prediction, with trailing spacing and alpha_bar = 1 after the last step
    "ddim-v-trailing": lambda: DDIMScheduler(**SD15_BETAS, prediction_type="v_prediction", clip_sample=False,
                                             timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=1),
    # DDPM's linear betas, leading spacing with steps_offset 1, alpha_bar = 1 after the last step
    "ddim-linear-leading": lambda: DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                                 clip_sample=False, set_alpha_to_one=True, steps_offset=1),
}



@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The four networks of a tiny SD 1.5-layout pipeline, in diffusers/transformers classes."""
    vocabulary = BPETokenizer.train(CAPTIONS * 2, vocab_size=600, min_frequency=1)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(vocabulary.save(tmp_path_factory.mktemp("vocabulary")),
                                                           model_max_length=CONTEXT)
    torch.manual_seed(0)
    # eos_token_id=2 as in SD 1.5's text_encoder/config.json (the legacy value: pooling at the largest id)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=2, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    return dict(tokenizer=tokenizer, text_encoder=randomized(text_encoder, 1), unet=randomized(unet, 2),
                vae=randomized(vae, 3))


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    """scheduler name -> (folder saved by diffusers, diffusers' pipeline loaded from it and sampling with DDIM)."""
    out = {}
    for name, scheduler in SCHEDULERS.items():
        folder = tmp_path_factory.mktemp(name)
        StableDiffusionPipeline(**parts, scheduler=scheduler(), safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
        reference = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config, clip_sample=False)
        reference.set_progress_bar_config(disable=True)
        out[name] = folder, reference
    return out


@pytest.fixture
def copy(saved, tmp_path):
    """A fresh copy of the SD 1.5-layout folder, to edit."""
    return shutil.copytree(saved["sd15-pndm"][0], tmp_path / "pipeline")


def latents() -> torch.Tensor:
    return torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(7))   # (B, 4, h, w)


def diffusers_images(reference, guidance_scale: float) -> torch.Tensor:
    """diffusers' images in [0, 1], (B, 3, H, W)."""
    return reference(PROMPTS, negative_prompt=[NEGATIVE] * len(PROMPTS), guidance_scale=guidance_scale,
                     num_inference_steps=STEPS, latents=latents(), output_type="pt").images


def minidiff_images(pipeline, guidance_scale: float, **overrides) -> torch.Tensor:
    """minidiff's images mapped from [-1, 1] to diffusers' [0, 1]."""
    images = pipeline.generate(PROMPTS, pipeline.diffusion, guidance_scale=guidance_scale, negative_prompt=NEGATIVE,
                               steps=STEPS, latents=latents(), **{**pipeline.sampler_options, **overrides})
    return images / 2 + 0.5


# ---------------------------------------------------------------------------- what the folder becomes


def test_loads_the_four_parts_the_process_and_the_sampler_settings(saved):
    folder, reference = saved["sd15-pndm"]
    pipeline = minidiff.load_pretrained(folder)
    assert isinstance(pipeline, TextToImage) and not pipeline.training
    assert isinstance(pipeline.denoiser, UNet) and isinstance(pipeline.autoencoder, Autoencoder)
    assert isinstance(pipeline.text_encoder, CLIPTextEncoder) and isinstance(pipeline.tokenizer, BPETokenizer)
    assert pipeline.context_length == CONTEXT
    assert pipeline.autoencoder.config.scaling_factor == reference.vae.config.scaling_factor
    assert pipeline.diffusion.prediction == "eps" and pipeline.diffusion.num_steps == 1000
    torch.testing.assert_close(pipeline.diffusion.schedule.betas, reference.scheduler.betas, rtol=1e-6, atol=0)
    assert pipeline.sampler_options == dict(spacing="leading", steps_offset=1, final_timestep=0)
    reference.scheduler.set_timesteps(STEPS)
    assert timesteps(1000, STEPS, "leading", 1) == reference.scheduler.timesteps.tolist()   # 901, 801, ..., 1
    # a part's own folder still loads as that one model
    assert isinstance(minidiff.load_pretrained(folder / "unet"), UNet)


def test_v_prediction_and_trailing_spacing_are_read(saved):
    pipeline = minidiff.load_pretrained(saved["ddim-v-trailing"][0])
    assert pipeline.diffusion.prediction == "v"
    assert pipeline.sampler_options == dict(spacing="trailing", steps_offset=0, final_timestep=-1)


def test_text_embeddings_match_exactly(saved):
    """Same token ids (padded with EOS to model_max_length, a long prompt cut), same last hidden states."""
    folder, reference = saved["sd15-pndm"]
    pipeline = minidiff.load_pretrained(folder)
    prompts = [*PROMPTS, LONG, ""]
    expected_ids = reference.tokenizer(prompts, padding="max_length", max_length=CONTEXT, truncation=True,
                                       return_tensors="pt").input_ids                         # (B, L)
    assert torch.equal(pipeline.tokenizer(prompts, context_length=pipeline.context_length), expected_ids)
    with torch.no_grad():
        context, null_context = reference.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[NEGATIVE] * 4)
    assert torch.equal(pipeline.encode_prompts(prompts), context)                             # (B, L, D)
    assert torch.equal(pipeline.encode_prompts([NEGATIVE] * 4), null_context)


# ---------------------------------------------------------------------------- the same images


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_same_images_as_diffusers(saved, name, guidance_scale):
    folder, reference = saved[name]
    expected = diffusers_images(reference, guidance_scale)                                   # (B, 3, 16, 16)
    images = minidiff_images(minidiff.load_pretrained(folder), guidance_scale)
    assert images.shape == expected.shape == (2, 3, 16, 16)
    assert (images - expected).abs().max().item() <= TOLERANCE


def test_wrong_sampler_settings_would_be_caught(saved):
    """The tolerance is far below what a wrong sampler setting or a dropped negative prompt does to the images."""
    folder, reference = saved["sd15-pndm"]
    pipeline = minidiff.load_pretrained(folder)
    expected = diffusers_images(reference, 7.5)
    for wrong in (dict(final_timestep=-1), dict(steps_offset=0), dict(spacing="trailing", steps_offset=0)):
        assert (minidiff_images(pipeline, 7.5, **wrong) - expected).abs().max().item() > 10 * TOLERANCE, wrong
    without_negative = pipeline.generate(PROMPTS, pipeline.diffusion, steps=STEPS, latents=latents(),
                                         **pipeline.sampler_options) / 2 + 0.5
    assert (without_negative - expected).abs().max().item() > 10 * TOLERANCE


def test_half_precision_runs_and_stays_close(saved):
    """dtype=torch.float16 (the GPU choice; here on the CPU): the U-Net reads float16 latents, the sampler keeps
    float32, images come back float32. Half precision keeps ~3 significant digits, so only closeness is checked."""
    folder, _ = saved["sd15-pndm"]
    full = minidiff_images(minidiff.load_pretrained(folder), 7.5)
    half_pipeline = minidiff.load_pretrained(folder, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half_pipeline.parameters())
    half = minidiff_images(half_pipeline, 7.5)
    assert half.dtype == torch.float32 and (half - full).abs().max().item() < 0.05


# ---------------------------------------------------------------------------- what is ignored, what is refused


def edit_json(file, **changes):
    config = json.loads(file.read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    file.write_text(json.dumps(config))


def test_safety_checker_and_feature_extractor_are_ignored(copy):
    """SD 1.5's model_index.json names a safety checker and its image processor; minidiff has neither."""
    edit_json(copy / "model_index.json", safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
              feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (copy / "safety_checker").mkdir()
    (copy / "safety_checker" / "pytorch_model.bin").write_bytes(b"never read")
    assert isinstance(minidiff.load_pretrained(copy), TextToImage)


def remove_vae(folder):
    shutil.rmtree(folder / "vae")


def drop_tokenizer_entry(folder):
    edit_json(folder / "model_index.json", tokenizer=None)


def pickled_unet_only(folder):
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")


def scheduler(**changes):
    return lambda folder: edit_json(folder / "scheduler" / "scheduler_config.json", **changes)


REFUSED = {
    "missing-vae": (remove_vae, "has no vae/"),
    "tokenizer-not-in-index": (drop_tokenizer_entry, "has no tokenizer/"),
    "bin-only-weights": (pickled_unet_only, "only pickled .bin weights"),
    "cosine-betas": (scheduler(beta_schedule="squaredcos_cap_v2"), "beta_schedule='squaredcos_cap_v2'"),
    "x0-prediction": (scheduler(prediction_type="sample"), "prediction_type='sample'"),
    "zero-snr": (scheduler(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
    "linspace": (scheduler(timestep_spacing="linspace"), "timestep_spacing='linspace'"),
    "sdxl": (lambda f: edit_json(f / "model_index.json", _class_name="StableDiffusionXLPipeline"),
             "'StableDiffusionXLPipeline'"),
    "unknown-part": (lambda f: edit_json(f / "model_index.json", controlnet=["diffusers", "ControlNetModel"]),
                     "controlnet"),
    "context-too-long": (lambda f: edit_json(f / "tokenizer" / "tokenizer_config.json", model_max_length=77),
                         "model_max_length=77"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_folders_give_one_line_errors(copy, case):
    edit, message = REFUSED[case]
    edit(copy)
    with pytest.raises(PretrainedError, match=re.escape(message)) as error:
        minidiff.load_pretrained(copy)
    assert "\n" not in str(error.value)


def test_the_single_model_loader_points_to_the_pipeline_loader(copy):
    with pytest.raises(PretrainedError, match="is a whole pipeline.*minidiff.load_pretrained"):
        load_one_model(copy)
