"""Load checkpoints saved in the diffusers (or transformers) layout into minidiff models, key by key.

A diffusers model folder holds `config.json` (the constructor's arguments, plus `_class_name`) and
`diffusion_pytorch_model.safetensors` (the weights); a transformers folder names its class in `architectures` and
keeps its weights in `model.safetensors`. `load_pretrained` reads the class name and looks it up in `CONVERTERS`,
the registry {class name -> Converter}; each family's converter lives beside its network in minidiff.models
(unet_diffusers.py, autoencoder_diffusers.py, clip_transformers.py) with its config translation, key map and
inverse. A later chapter adds a converter module there and one entry here.

Every step refuses bad input with one line that names the file and the fix, before anything large is built:

    1. config.json: a JSON object with a known class; every value the converter reads is type- and range-checked
    2. the weight file's header (names, shapes; nothing loaded) against the network built on the meta device
       (no memory): a config whose widths disagree with the file fails here, not by allocating gigabytes
    3. the tensors: strict loading (minidiff.io.load_state_strict) refuses missing or extra keys, integer values
       for float parameters, and NaN or Inf

Weights are read with safetensors only: nothing is unpickled. Whole pipeline folders (model_index.json) are loaded
part by part in minidiff.pipelines.pretrained, where minidiff.load_pretrained sends them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from minidiff.io import FileError, load_state_strict, read_json
from minidiff.models.autoencoder_diffusers import AUTOENCODER_KEY_MAP, AUTOENCODER_KL, autoencoder_config_from_diffusers
from minidiff.models.clip_transformers import (CLIP_TEXT, CLIP_TEXT_ARCHITECTURES, CLIP_TEXT_IGNORED_KEYS,
                                               CLIP_TEXT_KEY_MAP, CLIP_TEXT_WITH_PROJECTION,
                                               clip_text_config_from_transformers)
from minidiff.models.convert import Converter, PretrainedError, rename_keys
from minidiff.models.unet_diffusers import (UNET_2D, UNET_2D_CONDITION, UNET_KEY_MAP, cond_unet_config_from_diffusers,
                                            unet_config_from_diffusers)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")

# The registry: class name in config.json -> its converter, in the chapters' order.
CONVERTERS: dict[str, Converter] = {converter.reference: converter for converter in (
    UNET_2D,                        # Chapter 1: DDPM's U-Net
    AUTOENCODER_KL,                 # Chapter 2: the latent-diffusion VAE
    CLIP_TEXT,                      # Chapter 3: SD's text encoder
    CLIP_TEXT_WITH_PROJECTION,
    UNET_2D_CONDITION,              # Chapter 3: SD's U-Net
)}

# Names the chapters quote, kept here: the key maps and config translations live beside their models.
__all__ = ["AUTOENCODER_KEY_MAP", "CLIP_TEXT_ARCHITECTURES", "CLIP_TEXT_IGNORED_KEYS", "CLIP_TEXT_KEY_MAP",
           "CONVERTERS", "PretrainedError", "UNET_KEY_MAP", "WEIGHT_FILES", "autoencoder_config_from_diffusers",
           "clip_text_config_from_transformers", "cond_unet_config_from_diffusers", "load_pretrained",
           "load_state_dict_strict", "read_config", "rename_keys", "unet_config_from_diffusers"]


def read_config(path: Path) -> dict:
    """The model folder's config.json as a dict; a missing folder or file, bad JSON or a non-object is one line."""
    if not path.is_dir():
        raise PretrainedError(f"{path} is not a folder; pass the folder that holds config.json and the safetensors "
                              f"weights")
    config_file = path / "config.json"
    if not config_file.is_file() and (path / "model_index.json").is_file():
        raise PretrainedError(f"{path} is a whole pipeline (it has model_index.json); load it with "
                              f"minidiff.load_pretrained")
    if not config_file.is_file():
        raise PretrainedError(f"{path} has no config.json; save the model with diffusers' save_pretrained")
    try:
        return read_json(config_file, "the model's config", "re-save the model with save_pretrained")
    except FileError as e:
        raise PretrainedError(str(e)) from None


def _converter(config: dict, config_file: Path) -> Converter:
    """The registry's converter for the class that config.json names (`_class_name`, or `architectures[0]`)."""
    class_name = config.get("_class_name")
    if class_name is None:
        architectures = config.get("architectures")
        class_name = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(class_name, str):
        raise PretrainedError(f"{config_file} names no class (no _class_name, no architectures); re-save the model "
                              f"with diffusers' or transformers' save_pretrained")
    if class_name not in CONVERTERS:
        raise PretrainedError(f"{config_file.parent} holds a {class_name!r}, which load_pretrained does not support "
                              f"yet (supported: {', '.join(CONVERTERS)})")
    return CONVERTERS[class_name]


def _weight_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if list(path.glob("*.bin")):
        raise PretrainedError(f"{path} has only pickled .bin weights, which minidiff never loads; "
                              f"convert them with diffusers: save_pretrained(..., safe_serialization=True)")
    raise PretrainedError(f"{path} has no {' or '.join(WEIGHT_FILES)}; save the model with safe_serialization=True")


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor in a safetensors file, read from its header alone (no tensor is loaded)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise PretrainedError(f"{file} is corrupt ({type(e).__name__}: {e}); re-download or re-save it") from None


def _check_shapes(network: torch.nn.Module, shapes: dict[str, tuple[int, ...]], source: Path) -> None:
    """The file's names and shapes (already renamed to minidiff's) against a network's, before any tensor is read."""
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [name for name in expected if name in shapes and shapes[name] != expected[name]]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {shapes[wrong[0]]}, expected {expected[wrong[0]]}")
        raise PretrainedError(f"weights in {source} do not fit the model ({detail}); the checkpoint and its "
                              f"config.json disagree")


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights strictly (minidiff.io.load_state_strict: keys, shapes, float values, NaN/Inf), as one
    PretrainedError line."""
    try:
        load_state_strict(model, state_dict, source, fix="the checkpoint and its config.json disagree")
    except FileError as e:
        raise PretrainedError(str(e)) from None


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build the minidiff model equivalent to a diffusers (or transformers) model folder and load its weights.

    UNet2DModel -> minidiff.models.unet.UNet, whose forward(x_t, t) takes what diffusers' takes as
    (sample, timestep) and returns the tensor diffusers returns as `.sample`.
    UNet2DConditionModel (Stable Diffusion 1.x/2.x) -> the same UNet with cross-attention, whose
    forward(x_t, t, context) takes diffusers' (sample, timestep, encoder_hidden_states).
    AutoencoderKL -> minidiff.models.autoencoder.Autoencoder: encode(x).mean / .logvar are diffusers'
    latent_dist.mean / .logvar, and decode(z) is its decode(z).sample; scaling and shift factors come along.
    transformers CLIPTextModel (and ...WithProjection) -> minidiff.models.clip.CLIPTextEncoder, whose
    forward(input_ids) returns (last_hidden_state, pooled): transformers' last_hidden_state and pooler_output
    (text_embeds with the projection).
    The model comes back in eval mode, its parameters in `dtype` (a floating-point torch dtype).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise PretrainedError(f"dtype={dtype!r} is not a floating-point torch dtype; pass torch.float32, "
                              f"torch.float16 or torch.bfloat16")
    path = Path(path)
    config = read_config(path)
    config_file = path / "config.json"
    weight_file = _weight_file(path)
    converter = _converter(config, config_file)
    try:
        model_config = converter.config_from(config)
        with torch.device("meta"):                     # shapes only: a hostile config allocates nothing here
            skeleton = converter.network(model_config)
    except ValueError as e:                            # PretrainedError, and the config dataclasses' own checks
        raise PretrainedError(f"{config_file}: {e}") from None
    _check_shapes(skeleton, converter.keys_from(_header_shapes(weight_file)), weight_file)

    try:
        state_dict = converter.keys_from(load_file(str(weight_file)))
    except Exception as e:  # safetensors raises its own error types for files damaged past the header
        raise PretrainedError(f"{weight_file} is corrupt ({type(e).__name__}: {e}); re-download or re-save "
                              f"it") from None
    model = converter.network(model_config)
    load_state_dict_strict(model, state_dict, str(weight_file))
    return model.to(dtype).eval()
