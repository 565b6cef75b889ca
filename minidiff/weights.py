"""Load checkpoints saved in the diffusers layout into minidiff models, key by key.

A diffusers model folder holds `config.json` (the constructor's arguments, plus `_class_name`) and
`diffusion_pytorch_model.safetensors` (the weights). `load_pretrained` reads the config, builds the
equivalent minidiff config, renames the weight keys, and loads them strictly: a missing or unexpected
key is an error, never silently ignored. Weights are read with safetensors only: nothing is unpickled.

Chapter 1 supports `UNet2DModel`, Chapter 2 `AutoencoderKL`; later chapters add text encoders and pipelines.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.unet import UNet, UNetConfig

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


class PretrainedError(ValueError):
    """A folder that cannot be loaded; the message says why and what to do."""


def _read_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not path.is_dir():
        raise PretrainedError(f"{path} is not a folder; pass the folder that holds config.json and the safetensors weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PretrainedError(f"{path} has no config.json; save the model with diffusers' save_pretrained")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{config_file} is not valid JSON ({e}); re-save the model") from None
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            try:
                return config, load_file(str(path / name))
            except Exception as e:  # safetensors raises its own error types for truncated files
                raise PretrainedError(f"{path / name} is corrupt ({e}); re-download or re-save it") from None
    if list(path.glob("*.bin")):
        raise PretrainedError(f"{path} has only pickled .bin weights, which minidiff never loads; "
                              f"convert them with diffusers: save_pretrained(..., safe_serialization=True)")
    raise PretrainedError(f"{path} has no {' or '.join(WEIGHT_FILES)}; save the model with safe_serialization=True")


def _require(config: dict, key: str, expected, default, network: str = "U-Net") -> None:
    value = config.get(key, default)
    if value != expected:
        raise PretrainedError(f"diffusers config has {key}={value!r}, which minidiff's {network} does not support "
                              f"(it needs {expected!r})")


def unet_config_from_diffusers(config: dict) -> UNetConfig:
    """diffusers UNet2DModel config.json -> UNetConfig."""
    _require(config, "time_embedding_type", "positional", "positional")
    _require(config, "center_input_sample", False, False)
    _require(config, "act_fn", "silu", "silu")
    _require(config, "resnet_time_scale_shift", "default", "default")
    _require(config, "class_embed_type", None, None)
    _require(config, "num_class_embeds", None, None)
    _require(config, "add_attention", True, True)
    _require(config, "mid_block_scale_factor", 1, 1)
    _require(config, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")
    _require(config, "downsample_type", "conv", "conv")
    _require(config, "upsample_type", "conv", "conv")
    _require(config, "time_embedding_dim", None, None)
    _require(config, "attn_norm_num_groups", None, None)  # GroupNorm weights have the same shape for any groups
    down, up = config["down_block_types"], config["up_block_types"]
    known_down, known_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
    if set(down) - known_down or set(up) - known_up:
        raise PretrainedError(f"unsupported block types {sorted(set(down) - known_down | set(up) - known_up)}; "
                              f"minidiff's U-Net has DownBlock2D/AttnDownBlock2D and UpBlock2D/AttnUpBlock2D")
    n = len(config["block_out_channels"])
    return UNetConfig(
        in_channels=config.get("in_channels", 3),
        out_channels=config.get("out_channels", 3),
        sample_size=config.get("sample_size") or 32,
        block_channels=tuple(config["block_out_channels"]),
        attention_levels=tuple(i for i, b in enumerate(down) if b.startswith("Attn")),
        up_attention_levels=tuple(n - 1 - i for i, b in enumerate(up) if b.startswith("Attn")),  # up block i is level n-1-i
        layers_per_block=config.get("layers_per_block", 2),
        attention_head_dim=config.get("attention_head_dim"),
        norm_groups=config.get("norm_num_groups", 32),
        norm_eps=config.get("norm_eps", 1e-5),
        dropout=config.get("dropout", 0.0),
        flip_sin_to_cos=config.get("flip_sin_to_cos", True),
        freq_shift=config.get("freq_shift", 0),
        downsample_padding=config.get("downsample_padding", 1),
    )


def autoencoder_config_from_diffusers(config: dict) -> AutoencoderConfig:
    """diffusers AutoencoderKL config.json -> AutoencoderConfig."""
    for key, expected, default in [("act_fn", "silu", "silu"), ("mid_block_add_attention", True, True)]:
        _require(config, key, expected, default, "autoencoder")
    down, up = set(config.get("down_block_types", [])), set(config.get("up_block_types", []))
    if down - {"DownEncoderBlock2D"} or up - {"UpDecoderBlock2D"}:
        raise PretrainedError(f"unsupported block types {sorted(down | up)}; minidiff's autoencoder has "
                              f"DownEncoderBlock2D and UpDecoderBlock2D")
    return AutoencoderConfig(
        in_channels=config.get("in_channels", 3),
        out_channels=config.get("out_channels", 3),
        block_channels=tuple(config.get("block_out_channels", (64,))),
        layers_per_block=config.get("layers_per_block", 1),
        latent_channels=config.get("latent_channels", 4),
        norm_groups=config.get("norm_num_groups", 32),
        use_quant_conv=config.get("use_quant_conv", True),
        use_post_quant_conv=config.get("use_post_quant_conv", True),
        scaling_factor=config.get("scaling_factor", 0.18215),
        shift_factor=config.get("shift_factor") or 0.0,
        sample_size=config.get("sample_size", 32),
    )


# diffusers name -> minidiff name (the U-Net's, and the autoencoder's encoder. and decoder.). Old diffusers checkpoints use query/key/value/proj_attn for attention.
UNET_KEY_MAP = [
    (r"\.downsamplers\.0\.", ".resample."),
    (r"\.upsamplers\.0\.", ".resample."),
    (r"(^|\.)mid_block\.attentions\.0\.", r"\1mid_block.attention."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.query\.", ".to_q."), (r"\.key\.", ".to_k."), (r"\.value\.", ".to_v."), (r"\.proj_attn\.", ".to_out."),
]


def rename_keys(state_dict: dict[str, torch.Tensor], key_map: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in key_map:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning torch's multi-line key/shape report into one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(state_dict[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
        raise PretrainedError(f"weights in {source} do not fit the model ({detail}); "
                              f"the checkpoint and its config.json disagree")
    model.load_state_dict(state_dict)


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build the minidiff model equivalent to a diffusers model folder and load its weights.

    UNet2DModel -> minidiff.models.unet.UNet, whose forward(x_t, t) takes what diffusers' takes as
    (sample, timestep) and returns the tensor diffusers returns as `.sample`.
    AutoencoderKL -> minidiff.models.autoencoder.Autoencoder: encode(x).mean / .logvar are diffusers'
    latent_dist.mean / .logvar, and decode(z) is its decode(z).sample; scaling and shift factors come along.
    """
    path = Path(path)
    config, state_dict = _read_folder(path)
    class_name = config.get("_class_name")
    if class_name == "UNet2DModel":
        model = UNet(unet_config_from_diffusers(config))
        load_state_dict_strict(model, rename_keys(state_dict, UNET_KEY_MAP), str(path))
        return model.to(dtype).eval()
    if class_name == "AutoencoderKL":
        model = Autoencoder(autoencoder_config_from_diffusers(config))
        load_state_dict_strict(model, rename_keys(state_dict, UNET_KEY_MAP), str(path))
        return model.to(dtype).eval()
    raise PretrainedError(f"{path} holds a {class_name!r}, which load_pretrained does not support yet "
                          f"(supported: UNet2DModel, AutoencoderKL)")
