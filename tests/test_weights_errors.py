"""Hostile or broken folders: each is refused with one line that names the file and the fix, before anything large
is built or loaded.

The folders are written with minidiff's own inverse converters (no diffusers needed): a tiny U-Net, autoencoder and
CLIP text encoder in the diffusers/transformers layout, and a tiny Stable Diffusion pipeline folder. Each test breaks
one thing: config.json (a list, null, a missing key, a string for a channel count, zero or negative sizes, widths
that would allocate ~68 GB), the weights (NaN, integers for float parameters), model_index.json and
scheduler_config.json.
"""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minidiff
import minidiff.weights
from minidiff.data.tokenizer import BPETokenizer
from minidiff.models import Autoencoder, AutoencoderConfig, CLIPTextConfig, CLIPTextEncoder, UNet, UNetConfig
from minidiff.models.autoencoder_diffusers import to_diffusers as autoencoder_to_diffusers
from minidiff.models.clip_transformers import to_transformers
from minidiff.models.unet_diffusers import to_diffusers as unet_to_diffusers
from minidiff.pipelines.text_to_image import TextToImage
from minidiff.weights import PretrainedError
from parity_helpers import write_folder

pytestmark = pytest.mark.usefixtures("one_thread")

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
CAPTIONS = ["a red circle", "a blue square left of a green triangle", "two yellow crosses", "a purple diamond"]
SCHEDULER = dict(_class_name="DDIMScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1)


def save_model(folder, model, to_reference, weights=UNET_WEIGHTS):
    state_dict, config = to_reference(model.state_dict(), model.config)
    return write_folder(folder, state_dict, config, weights)


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet(UNetConfig.toy(patch_size=1, block_channels=(8, 16), attention_levels=(1,), norm_groups=4))
    return save_model(tmp_path_factory.mktemp("unet"), model, unet_to_diffusers)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A tiny StableDiffusionPipeline folder, every part minidiff's own, written in the diffusers layout."""
    folder = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    tokenizer = BPETokenizer.train(CAPTIONS, vocab_size=600)
    text = CLIPTextEncoder(CLIPTextConfig.toy(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_id, width=16,
                                              heads=2, mlp_width=32, context_length=16))
    unet = UNet(UNetConfig.text_toy(block_channels=(8, 16), cross_attention_dim=16, norm_groups=4))
    vae = Autoencoder(AutoencoderConfig.toy(block_channels=(8, 16), norm_groups=4))
    save_model(folder / "unet", unet, unet_to_diffusers)
    save_model(folder / "vae", vae, autoencoder_to_diffusers)
    save_model(folder / "text_encoder", text, to_transformers, "model.safetensors")
    tokenizer.save(folder / "tokenizer")
    edit(folder / "tokenizer" / "tokenizer_config.json", model_max_length=16)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps(dict(
        _class_name="StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"],
        vae=["diffusers", "AutoencoderKL"], text_encoder=["transformers", "CLIPTextModel"],
        tokenizer=["transformers", "CLIPTokenizer"], scheduler=["diffusers", "DDIMScheduler"])))
    return folder


@pytest.fixture
def unet_copy(unet_folder, tmp_path):
    return shutil.copytree(unet_folder, tmp_path / "unet")


@pytest.fixture
def pipeline_copy(pipeline_folder, tmp_path):
    return shutil.copytree(pipeline_folder, tmp_path / "pipeline")


def edit(file, **changes):
    """Set keys of a JSON file; a value of `...` removes the key."""
    config = json.loads(file.read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del config[key]
    file.write_text(json.dumps(config))


def refused(folder, message: str, names: str) -> str:
    """load_pretrained(folder) fails with one line matching `message` (a regex) that names the file `names`."""
    with pytest.raises(PretrainedError, match=message) as error:
        minidiff.load_pretrained(folder)
    text = str(error.value)
    assert "\n" not in text and names in text, text
    return text


# ---------------------------------------------------------------------------- the folders themselves load


def test_the_unbroken_folders_load(unet_folder, pipeline_folder):
    assert isinstance(minidiff.load_pretrained(unet_folder), UNet)
    assert isinstance(minidiff.load_pretrained(pipeline_folder), TextToImage)


# ---------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", "holds a JSON list, not an object"),
    ("null", "holds a JSON NoneType, not an object"),
    ("{not json", "is not valid JSON"),
])
def test_config_that_is_not_an_object(unet_copy, content, message):
    (unet_copy / "config.json").write_text(content)
    refused(unet_copy, f"{message}.*; re-save the model with save_pretrained", "config.json")


@pytest.mark.parametrize("changes, message", [
    (dict(block_out_channels=...), "config has no block_out_channels; re-save the model"),
    (dict(down_block_types=...), "config has no down_block_types"),
    (dict(block_out_channels=["8", "16"]), r"block_out_channels=\['8', '16'\]; expected a list of integers"),
    (dict(in_channels="1"), "in_channels='1'; expected an integer from 1 to"),
    (dict(in_channels=True), "in_channels=True; expected an integer"),
    (dict(block_out_channels=[0, 16]), r"block_out_channels=\[0, 16\]; expected a list of integers from 1"),
    (dict(block_out_channels=[8, -16]), "expected a list of integers from 1"),
    (dict(block_out_channels=8), "block_out_channels=8; expected a list"),
    (dict(layers_per_block=0), "layers_per_block=0; expected an integer from 1 to 1000"),
    (dict(layers_per_block=10 ** 9), "layers_per_block=1000000000; expected an integer from 1 to 1000"),
    (dict(norm_num_groups=-4), "norm_num_groups=-4"),
    (dict(norm_eps=float("nan")), "norm_eps=nan; expected a positive number"),
    (dict(dropout=1.5), "dropout=1.5; expected a number from 0.0 to 0.999"),
    (dict(flip_sin_to_cos="yes"), "flip_sin_to_cos='yes'; expected true or false"),
    (dict(down_block_types=["DownBlock2D"]), "2 block_out_channels, 1 down_block_types and 2 up_block_types"),
    (dict(block_out_channels=[8, 10]), "not divisible by norm_groups=4"),   # the config dataclass's own check
    (dict(_class_name=["UNet2DModel"]), "names no class"),
])
def test_bad_config_values(unet_copy, changes, message):
    edit(unet_copy / "config.json", **changes)
    refused(unet_copy, message, "config.json")


def test_huge_widths_are_refused_from_the_header_before_anything_is_loaded(unet_copy, monkeypatch):
    """[65536, 65536] would be ~68 GB of float32 weights: the header's shapes disagree, and no tensor is read."""
    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the config was checked against their header")

    monkeypatch.setattr(minidiff.weights, "load_file", no_loading)
    edit(unet_copy / "config.json", block_out_channels=[65536, 65536], norm_num_groups=4)
    refused(unet_copy, "do not fit the model .*; the checkpoint and its config.json disagree", UNET_WEIGHTS)


@pytest.mark.parametrize("architecture, changes, message", [
    ("CLIPTextModel", dict(num_hidden_layers="2"), "num_hidden_layers='2'; expected an integer"),
    ("CLIPTextModel", dict(vocab_size=0), "vocab_size=0; expected an integer from 1"),
    ("CLIPTextModel", dict(hidden_size=...), "config has no hidden_size"),
    ("CLIPTextModel", dict(layer_norm_eps=-1e-5), "layer_norm_eps=-1e-05; expected a positive number"),
    ("AutoencoderKL", dict(latent_channels=-4), "latent_channels=-4; expected an integer from 1"),
    ("AutoencoderKL", dict(scaling_factor=0), "scaling_factor=0; expected a positive number"),
    ("AutoencoderKL", dict(use_quant_conv="false"), "use_quant_conv='false'; expected true or false"),
])
def test_bad_values_in_other_families(pipeline_copy, architecture, changes, message):
    part = {"CLIPTextModel": "text_encoder", "AutoencoderKL": "vae"}[architecture]
    edit(pipeline_copy / part / "config.json", **changes)
    refused(pipeline_copy / part, message, "config.json")


# ---------------------------------------------------------------------------- the weights


def break_one_tensor(folder, change):
    file = folder / UNET_WEIGHTS
    weights = load_file(str(file))
    name = "conv_in.weight"
    weights[name] = change(weights[name])
    save_file(weights, str(file))


def test_nan_weights(unet_copy):
    break_one_tensor(unet_copy, lambda w: w.index_fill(0, torch.tensor([0]), float("nan")))
    refused(unet_copy, "conv_in.weight holds NaN or Inf values; the file is damaged", UNET_WEIGHTS)


def test_inf_weights(unet_copy):
    break_one_tensor(unet_copy, lambda w: w.index_fill(0, torch.tensor([1]), float("inf")))
    refused(unet_copy, "holds NaN or Inf values", UNET_WEIGHTS)


def test_integer_weights_for_a_float_parameter(unet_copy):
    break_one_tensor(unet_copy, lambda w: (100 * w).to(torch.int64))
    refused(unet_copy, "conv_in.weight holds torch.int64 values where the model has a float parameter", UNET_WEIGHTS)


def test_garbled_header(unet_copy):
    (unet_copy / UNET_WEIGHTS).write_bytes(b"\xff" * 64)
    refused(unet_copy, "is corrupt.*re-download or re-save it", UNET_WEIGHTS)


def test_a_dtype_that_is_not_floating_point(unet_folder):
    with pytest.raises(PretrainedError, match="dtype=torch.int64 is not a floating-point torch dtype"):
        minidiff.load_pretrained(unet_folder, dtype=torch.int64)


# ---------------------------------------------------------------------------- model_index.json


def write(file, text):
    file.write_text(text)


@pytest.mark.parametrize("break_index, message", [
    (lambda f: write(f, "{not json"), "is not valid JSON"),
    (lambda f: write(f, '["unet", "vae"]'), "holds a JSON list, not an object"),
    (lambda f: edit(f, vae=...), "has no vae/"),
    (lambda f: edit(f, unet="diffusers"), "has unet='diffusers'; expected [library, class]"),
    (lambda f: edit(f, unet=["diffusers", "UNet2DConditionModel", "extra"]), "expected [library, class]"),
    (lambda f: edit(f, _class_name="StableCascadePriorPipeline"), "names a 'StableCascadePriorPipeline' pipeline"),
    (lambda f: edit(f, _class_name=...), "names a None pipeline, which minidiff cannot load yet (supported: "),
    (lambda f: edit(f, controlnet=["diffusers", "ControlNetModel"]), "names parts minidiff does not know"),
])
def test_bad_model_index(pipeline_copy, break_index, message):
    break_index(pipeline_copy / "model_index.json")
    refused(pipeline_copy, re.escape(message), "model_index.json" if "vae/" not in message else "pipeline")


# ---------------------------------------------------------------------------- scheduler_config.json


@pytest.mark.parametrize("break_scheduler, message", [
    (lambda f: write(f, "{not json"), "is not valid JSON"),
    (lambda f: write(f, "[]"), "holds a JSON list, not an object"),
    (lambda f: edit(f, beta_start="0.00085"), "beta_start='0.00085'; expected a positive number"),
    (lambda f: edit(f, beta_end=0.0001), "beta_end=0.0001; expected a number from 0.00085"),
    (lambda f: edit(f, beta_end=2.0), "beta_end=2.0; expected a number from"),
    (lambda f: edit(f, num_train_timesteps=0), "num_train_timesteps=0; expected an integer from 2"),
    (lambda f: edit(f, steps_offset=-1), "steps_offset=-1; expected an integer from 0 to 999"),
    (lambda f: edit(f, set_alpha_to_one="no"), "set_alpha_to_one='no'; expected true or false"),
    (lambda f: edit(f, prediction_type=3), "prediction_type=3; expected a string"),
])
def test_bad_scheduler_config(pipeline_copy, break_scheduler, message):
    break_scheduler(pipeline_copy / "scheduler" / "scheduler_config.json")
    refused(pipeline_copy, re.escape(message), "scheduler_config.json")


def test_bad_tokenizer_length(pipeline_copy):
    edit(pipeline_copy / "tokenizer" / "tokenizer_config.json", model_max_length=True)
    refused(pipeline_copy, "model_max_length=True, but the text encoder has 16 positions; set it to 16",
            "tokenizer_config.json")
