"""Load checkpoints saved in the diffusers layout into minidiff models, key by key.

A diffusers model folder holds `config.json` (the constructor's arguments, plus `_class_name`) and
`diffusion_pytorch_model.safetensors` (the weights). `load_pretrained` reads the config, builds the
equivalent minidiff config, renames the weight keys, and loads them strictly: a missing or unexpected
key is an error, never silently ignored. Weights are read with safetensors only: nothing is unpickled.

Chapter 1 supports `UNet2DModel`, Chapter 2 `AutoencoderKL`, Chapter 3 `UNet2DConditionModel` (SD's U-Net);
whole pipeline folders (model_index.json) are loaded part by part in minidiff.pipelines.pretrained.
A transformers folder names its class in `architectures` instead of `_class_name` and keeps its weights in
`model.safetensors`; Chapter 3 loads `CLIPTextModel` and `CLIPTextModelWithProjection` (SD's text encoders).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.clip import CLIPTextConfig, CLIPTextEncoder
from minidiff.models.unet import UNet, UNetConfig

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


class PretrainedError(ValueError):
    """A folder that cannot be loaded; the message says why and what to do."""


def _read_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not path.is_dir():
        raise PretrainedError(f"{path} is not a folder; pass the folder that holds config.json and the safetensors weights")
    config_file = path / "config.json"
    if not config_file.is_file() and (path / "model_index.json").is_file():
        raise PretrainedError(f"{path} is a whole pipeline (it has model_index.json); load it with "
                              f"minidiff.load_pretrained")
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


def _unet_fields(config: dict, attention_prefix: str) -> dict:
    """UNetConfig fields that UNet2DModel and UNet2DConditionModel configs spell alike; refuses options both lack.

    Down block i works at level i; diffusers' up_block_types[i] works at level n-1-i (the up path lists levels in
    reverse). A block type starting with `attention_prefix` ("Attn" or "CrossAttn") has attention."""
    for key, expected in [("time_embedding_type", "positional"), ("center_input_sample", False), ("act_fn", "silu"),
                          ("class_embed_type", None),
                          ("num_class_embeds", None), ("mid_block_scale_factor", 1), ("time_embedding_dim", None)]:
        _require(config, key, expected, expected)
    scale_shift = config.get("resnet_time_scale_shift", "default")
    if scale_shift not in ("default", "scale_shift"):
        raise PretrainedError(f"diffusers config has resnet_time_scale_shift={scale_shift!r}, which minidiff's U-Net "
                              f"does not support (it needs 'default' or 'scale_shift')")
    down, up, n = config["down_block_types"], config["up_block_types"], len(config["block_out_channels"])
    return dict(
        block_channels=tuple(config["block_out_channels"]),
        attention_levels=tuple(i for i, b in enumerate(down) if b.startswith(attention_prefix)),
        up_attention_levels=tuple(sorted(n - 1 - i for i, b in enumerate(up) if b.startswith(attention_prefix))),
        layers_per_block=config.get("layers_per_block", 2),
        norm_groups=config.get("norm_num_groups", 32),
        norm_eps=config.get("norm_eps", 1e-5),
        dropout=config.get("dropout", 0.0),
        time_scale_shift=scale_shift == "scale_shift",
        flip_sin_to_cos=config.get("flip_sin_to_cos", True),
        freq_shift=config.get("freq_shift", 0),
        downsample_padding=config.get("downsample_padding", 1),
    )


def unet_config_from_diffusers(config: dict) -> UNetConfig:
    """diffusers UNet2DModel config.json -> UNetConfig."""
    _require(config, "add_attention", True, True)
    _require(config, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")
    _require(config, "downsample_type", "conv", "conv")
    _require(config, "upsample_type", "conv", "conv")
    # The middle block's attention normalises with norm_num_groups groups, as minidiff's does, when
    # attn_norm_num_groups is None, except that with resnet_time_scale_shift="scale_shift" diffusers then leaves that
    # GroupNorm out. A different group count would load (GroupNorm weights have the same shape for any count) and
    # compute something else, so only norm_num_groups itself is taken, and it is required with scale_shift.
    groups = config.get("norm_num_groups", 32)
    if config.get("resnet_time_scale_shift") == "scale_shift":
        _require(config, "attn_norm_num_groups", groups, None)
    elif config.get("attn_norm_num_groups") not in (None, groups):
        _require(config, "attn_norm_num_groups", None, None)
    down, up = config["down_block_types"], config["up_block_types"]
    known_down, known_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
    if set(down) - known_down or set(up) - known_up:
        raise PretrainedError(f"unsupported block types {sorted(set(down) - known_down | set(up) - known_up)}; "
                              f"minidiff's U-Net has DownBlock2D/AttnDownBlock2D and UpBlock2D/AttnUpBlock2D")
    return UNetConfig(
        in_channels=config.get("in_channels", 3),
        out_channels=config.get("out_channels", 3),
        sample_size=config.get("sample_size") or 32,
        attention_head_dim=config.get("attention_head_dim"),
        **_unet_fields(config, "Attn"),
    )


def _one_value(config: dict, key: str, default):
    """A setting diffusers allows per level (int or list) that minidiff's U-Net takes once for every level."""
    value = config.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise PretrainedError(f"diffusers config has {key}={value!r}, different per level, which minidiff's U-Net "
                                  f"does not support (it needs one value for every level)")
        value = value[0]
    return value


def cond_unet_config_from_diffusers(config: dict) -> UNetConfig:
    """diffusers UNet2DConditionModel config.json (the Stable Diffusion 1.x/2.x layout) -> UNetConfig.

    Naming trap: in these configs `attention_head_dim` is the NUMBER of heads per level (diffusers'
    legacy name; its `num_attention_heads` must stay None); it becomes UNetConfig.attention_heads."""
    for key, expected in [("mid_block_type", "UNetMidBlock2DCrossAttn"), ("num_attention_heads", None),
                          ("mid_block_only_cross_attention", None), ("dual_cross_attention", False),
                          ("upcast_attention", False), ("encoder_hid_dim", None), ("encoder_hid_dim_type", None),
                          ("addition_embed_type", None), ("addition_time_embed_dim", None),
                          ("projection_class_embeddings_input_dim", None), ("class_embeddings_concat", False),
                          ("time_cond_proj_dim", None), ("time_embedding_act_fn", None), ("timestep_post_act", None),
                          ("resnet_skip_time_act", False), ("resnet_out_scale_factor", 1.0),
                          ("cross_attention_norm", None), ("attention_type", "default"), ("conv_in_kernel", 3),
                          ("conv_out_kernel", 3), ("reverse_transformer_layers_per_block", None)]:
        _require(config, key, expected, expected)
    if _one_value(config, "only_cross_attention", False):
        raise PretrainedError("diffusers config has only_cross_attention=True, which minidiff's U-Net does not support "
                              "(it needs False: self-attention, then cross-attention)")
    if config.get("norm_num_groups", 32) is None:
        raise PretrainedError("diffusers config has norm_num_groups=None (no output GroupNorm), which minidiff's U-Net "
                              "does not support (it needs a number of groups)")
    down, up = config["down_block_types"], config["up_block_types"]
    known_down, known_up = {"DownBlock2D", "CrossAttnDownBlock2D"}, {"UpBlock2D", "CrossAttnUpBlock2D"}
    if set(down) - known_down or set(up) - known_up:
        raise PretrainedError(f"unsupported block types {sorted(set(down) - known_down | set(up) - known_up)}; "
                              f"minidiff's text-conditional U-Net has DownBlock2D/CrossAttnDownBlock2D and "
                              f"UpBlock2D/CrossAttnUpBlock2D")
    depth = config.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)) and any(isinstance(d, (list, tuple)) for d in depth):
        raise PretrainedError(f"diffusers config has transformer_layers_per_block={depth!r}, a depth per layer, "
                              f"which minidiff's U-Net does not support (it needs one depth per level)")
    heads = config.get("attention_head_dim", 8)   # the number of heads, despite the name
    size = config.get("sample_size") or 64
    return UNetConfig(
        in_channels=config.get("in_channels", 4),
        out_channels=config.get("out_channels", 4),
        sample_size=size[0] if isinstance(size, (list, tuple)) else size,
        cross_attention_dim=_one_value(config, "cross_attention_dim", 1280),
        attention_heads=tuple(heads) if isinstance(heads, (list, tuple)) else (heads,),
        transformer_depth=tuple(depth) if isinstance(depth, (list, tuple)) else (depth,),
        use_linear_projection=config.get("use_linear_projection", False),
        **{**_unet_fields(config, "CrossAttn"), "layers_per_block": _one_value(config, "layers_per_block", 2)},
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


CLIP_TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")


def _refuse_clip_option(key: str, value, fix: str) -> None:
    raise PretrainedError(f"transformers config has {key}={value!r}, which minidiff's CLIP text encoder does not "
                          f"support; {fix}")


def clip_text_config_from_transformers(config: dict) -> CLIPTextConfig:
    """transformers CLIPTextModel / CLIPTextModelWithProjection config.json -> CLIPTextConfig.

    Missing keys take transformers' CLIPTextConfig defaults. An eos_token_id of 2 marks a config written before
    transformers fixed it (SD 1.x's): the pooled row is then the position of the largest token id, as in OpenAI's
    CLIP, whose end-of-text token has the largest id; otherwise it is the first position holding eos_token_id.
    """
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        _refuse_clip_option("hidden_act", activation, "it has quick_gelu and gelu (the exact, erf-based GELU)")
    for key in ("attention_dropout", "dropout"):
        if config.get(key) not in (None, 0, 0.0):
            _refuse_clip_option(key, config[key], f"set {key} to 0.0 in config.json (minidiff's encoder has no dropout)")
    eos_token_id = config.get("eos_token_id", 49407)
    if not isinstance(eos_token_id, int):
        _refuse_clip_option("eos_token_id", eos_token_id, "set it to the tokenizer's one end-of-text id")
    with_projection = (config.get("architectures") or [None])[0] == "CLIPTextModelWithProjection"
    return CLIPTextConfig(
        vocab_size=config.get("vocab_size", 49408),
        context_length=config.get("max_position_embeddings", 77),
        width=config.get("hidden_size", 512),
        layers=config.get("num_hidden_layers", 12),
        heads=config.get("num_attention_heads", 8),
        mlp_width=config.get("intermediate_size", 2048),
        activation=activation,
        layer_norm_eps=config.get("layer_norm_eps") or 1e-5,
        eos_token_id=eos_token_id,
        pooling="argmax" if eos_token_id == 2 else "first_eos",
        projection_dim=config.get("projection_dim", 512) if with_projection else None,
    )


# transformers name -> minidiff name: the same, but CLIPTextModelWithProjection, and CLIPTextModel folders saved
# before transformers 5 (SD 1.x's text_encoder), prefix the tower's keys with text_model.
CLIP_TEXT_KEY_MAP = [(r"^text_model\.", "")]
# Older folders also store the constant buffer embeddings.position_ids (0..L-1), which minidiff computes.
CLIP_TEXT_IGNORED_KEYS = ("embeddings.position_ids",)


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
    """
    path = Path(path)
    config, state_dict = _read_folder(path)
    class_name = config.get("_class_name")
    if class_name == "UNet2DModel":
        model = UNet(unet_config_from_diffusers(config))
        load_state_dict_strict(model, rename_keys(state_dict, UNET_KEY_MAP), str(path))
        return model.to(dtype).eval()
    if class_name == "UNet2DConditionModel":
        model = UNet(cond_unet_config_from_diffusers(config))
        load_state_dict_strict(model, rename_keys(state_dict, UNET_KEY_MAP), str(path))
        return model.to(dtype).eval()
    if class_name == "AutoencoderKL":
        model = Autoencoder(autoencoder_config_from_diffusers(config))
        load_state_dict_strict(model, rename_keys(state_dict, UNET_KEY_MAP), str(path))
        return model.to(dtype).eval()
    architecture = (config.get("architectures") or [None])[0]
    if class_name is None and architecture in CLIP_TEXT_ARCHITECTURES:
        model = CLIPTextEncoder(clip_text_config_from_transformers(config))
        state_dict = {k: v for k, v in rename_keys(state_dict, CLIP_TEXT_KEY_MAP).items()
                      if k not in CLIP_TEXT_IGNORED_KEYS}
        load_state_dict_strict(model, state_dict, str(path))
        return model.to(dtype).eval()
    class_name = class_name or architecture
    raise PretrainedError(f"{path} holds a {class_name!r}, which load_pretrained does not support yet "
                          f"(supported: UNet2DModel, AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, "
                          f"UNet2DConditionModel)")
