"""minidiff's U-Net <-> diffusers' UNet2DModel (Chapter 1) and UNet2DConditionModel (Stable Diffusion's, Chapter 3).

minidiff's module names follow diffusers', so the key map is short:

    diffusers                                  minidiff
    down_blocks.i.downsamplers.0.conv          down_blocks.i.resample.conv
    up_blocks.i.upsamplers.0.conv              up_blocks.i.resample.conv
    mid_block.attentions.0.                    mid_block.attention.
    ...to_out.0.                               ...to_out.          (old folders: query/key/value/proj_attn)

The configs differ more. diffusers lists the up path's levels in reverse (up_block_types[i] works at level n-1-i),
marks attention by block type ("AttnDownBlock2D", "CrossAttnDownBlock2D"), and in UNet2DConditionModel's
`attention_head_dim` holds the NUMBER of heads per level (a legacy name; minidiff calls it `attention_heads`).
Options minidiff's U-Net does not implement (class embeddings, SDXL's added conditions, other block types) are
refused with a one-line PretrainedError rather than loaded into a network that computes something else.
"""
from __future__ import annotations

import torch

from minidiff.models.convert import (MAX_REPEATS, MAX_WIDTH, Converter, PretrainedError, flag, integer,
                                     integer_or_list, integers, number, rename_keys, require, text, texts)
from minidiff.models.unet import UNet, UNetConfig

# diffusers name -> minidiff name (for the U-Net; the autoencoder has its own map in autoencoder_diffusers.py).
UNET_KEY_MAP = [
    (r"\.downsamplers\.0\.", ".resample."),
    (r"\.upsamplers\.0\.", ".resample."),
    (r"(^|\.)mid_block\.attentions\.0\.", r"\1mid_block.attention."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.query\.", ".to_q."), (r"\.key\.", ".to_k."), (r"\.value\.", ".to_v."), (r"\.proj_attn\.", ".to_out."),
]
# minidiff name -> diffusers name: UNET_KEY_MAP backwards, writing today's attention names.
UNET_INVERSE_KEY_MAP = [
    (r"(^|\.)down_blocks\.(\d+)\.resample\.", r"\1down_blocks.\2.downsamplers.0."),
    (r"(^|\.)up_blocks\.(\d+)\.resample\.", r"\1up_blocks.\2.upsamplers.0."),
    (r"(^|\.)mid_block\.attention\.", r"\1mid_block.attentions.0."),
    (r"\.to_out\.", ".to_out.0."),
]


def _block_levels(config: dict, attention_prefix: str, known_down: set[str], known_up: set[str],
                  network: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(block_out_channels, attention levels down, attention levels up) from the block types.

    Down block i works at level i; up_block_types[i] at level n-1-i. A block type starting with `attention_prefix`
    ("Attn" or "CrossAttn") has attention."""
    channels = integers(config, "block_out_channels")
    down, up = texts(config, "down_block_types"), texts(config, "up_block_types")
    if not len(down) == len(up) == len(channels):
        raise PretrainedError(f"diffusers config has {len(channels)} block_out_channels, {len(down)} down_block_types "
                              f"and {len(up)} up_block_types; it needs one of each per level: re-save the model")
    if set(down) - known_down or set(up) - known_up:
        raise PretrainedError(f"unsupported block types {sorted(set(down) - known_down | set(up) - known_up)}; "
                              f"minidiff's {network} has {'/'.join(sorted(known_down))} and "
                              f"{'/'.join(sorted(known_up))}")
    n = len(channels)
    down_levels = tuple(i for i, b in enumerate(down) if b.startswith(attention_prefix))
    up_levels = tuple(sorted(n - 1 - i for i, b in enumerate(up) if b.startswith(attention_prefix)))
    return channels, down_levels, up_levels


def _sample_size(config: dict, default: int) -> int:
    """sample_size may be absent, null, one int, or [height, width] (the height is kept)."""
    size = config.get("sample_size")
    if size is None:
        return default
    return integers(config, "sample_size")[0] if isinstance(size, (list, tuple)) else integer(config, "sample_size")


def _unet_fields(config: dict, attention_prefix: str, known_down: set[str], known_up: set[str],
                 network: str) -> dict:
    """UNetConfig fields that UNet2DModel and UNet2DConditionModel configs spell alike; refuses options both lack.

    Missing keys take diffusers' defaults, except the block layout, which every saved config has."""
    for key, expected in [("time_embedding_type", "positional"), ("center_input_sample", False), ("act_fn", "silu"),
                          ("class_embed_type", None),
                          ("num_class_embeds", None), ("mid_block_scale_factor", 1), ("time_embedding_dim", None)]:
        require(config, key, expected, "U-Net")
    scale_shift = text(config, "resnet_time_scale_shift", "default")
    if scale_shift not in ("default", "scale_shift"):
        raise PretrainedError(f"diffusers config has resnet_time_scale_shift={scale_shift!r}, which minidiff's U-Net "
                              f"does not support (it needs 'default' or 'scale_shift')")
    channels, down_levels, up_levels = _block_levels(config, attention_prefix, known_down, known_up, network)
    return dict(
        in_channels=integer(config, "in_channels", 4 if attention_prefix == "CrossAttn" else 3),
        out_channels=integer(config, "out_channels", 4 if attention_prefix == "CrossAttn" else 3),
        block_channels=channels,
        attention_levels=down_levels,
        up_attention_levels=None if up_levels == down_levels else up_levels,   # None: as on the way down
        norm_eps=number(config, "norm_eps", 1e-5, strictly_positive=True),
        dropout=number(config, "dropout", 0.0, minimum=0.0, maximum=0.999),
        time_scale_shift=scale_shift == "scale_shift",
        flip_sin_to_cos=flag(config, "flip_sin_to_cos", True),
        freq_shift=number(config, "freq_shift", 0),
        downsample_padding=integer(config, "downsample_padding", 1, minimum=0, maximum=MAX_REPEATS),
    )


def unet_config_from_diffusers(config: dict) -> UNetConfig:
    """diffusers UNet2DModel config.json -> UNetConfig."""
    require(config, "add_attention", True, "U-Net")
    require(config, "mid_block_type", "UNetMidBlock2D", "U-Net")
    require(config, "downsample_type", "conv", "U-Net")
    require(config, "upsample_type", "conv", "U-Net")
    # The middle block's attention normalises with norm_num_groups groups, as minidiff's does, when
    # attn_norm_num_groups is None, except that with resnet_time_scale_shift="scale_shift" diffusers then leaves that
    # GroupNorm out. A different group count would load (GroupNorm weights have the same shape for any count) and
    # compute something else, so only norm_num_groups itself is taken, and it is required with scale_shift.
    groups = integer(config, "norm_num_groups", 32)
    if config.get("resnet_time_scale_shift") == "scale_shift":
        require({"attn_norm_num_groups": None, **config}, "attn_norm_num_groups", groups, "U-Net")
    elif config.get("attn_norm_num_groups") not in (None, groups):
        require(config, "attn_norm_num_groups", None, "U-Net")
    return UNetConfig(
        sample_size=_sample_size(config, 32),
        attention_head_dim=None if config.get("attention_head_dim", 8) is None   # None: one head per level
        else integer(config, "attention_head_dim", 8),
        layers_per_block=integer(config, "layers_per_block", 2, maximum=MAX_REPEATS),
        norm_groups=groups,
        **_unet_fields(config, "Attn", {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}, "U-Net"),
    )


def _one_value(config: dict, key: str, default, maximum: int):
    """A setting diffusers allows per level (int or list) that minidiff's U-Net takes once for every level."""
    value = integer_or_list(config, key, default, maximum=maximum)
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise PretrainedError(f"diffusers config has {key}={list(value)!r}, different per level, which minidiff's "
                                  f"U-Net does not support (it needs one value for every level)")
        value = value[0]
    return value


def _per_level(config: dict, key: str, default, maximum: int) -> tuple[int, ...]:
    """An int for every level, or a list with one per level: minidiff's (value,) or (v0, v1, ...)."""
    value = integer_or_list(config, key, default, maximum=maximum)
    return value if isinstance(value, tuple) else (value,)


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
        require(config, key, expected, "U-Net")
    only_cross = config.get("only_cross_attention", False)
    if only_cross not in (False, True) and not (isinstance(only_cross, list) and all(v in (False, True)
                                                                                     for v in only_cross)):
        raise PretrainedError(f"config has only_cross_attention={only_cross!r}; expected true, false or a list of "
                              f"them: fix the file or re-save the model")
    if only_cross is True or (isinstance(only_cross, list) and any(only_cross)):
        raise PretrainedError("diffusers config has only_cross_attention=True, which minidiff's U-Net does not support "
                              "(it needs False: self-attention, then cross-attention)")
    if "norm_num_groups" in config and config["norm_num_groups"] is None:
        raise PretrainedError("diffusers config has norm_num_groups=None (no output GroupNorm), which minidiff's U-Net "
                              "does not support (it needs a number of groups)")
    depth = config.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)) and any(isinstance(d, (list, tuple)) for d in depth):
        raise PretrainedError(f"diffusers config has transformer_layers_per_block={depth!r}, a depth per layer, "
                              f"which minidiff's U-Net does not support (it needs one depth per level)")
    return UNetConfig(
        sample_size=_sample_size(config, 64),
        layers_per_block=_one_value(config, "layers_per_block", 2, MAX_REPEATS),
        norm_groups=integer(config, "norm_num_groups", 32),
        cross_attention_dim=_one_value(config, "cross_attention_dim", 1280, MAX_WIDTH),
        attention_heads=_per_level(config, "attention_head_dim", 8, MAX_REPEATS),   # the number of heads
        transformer_depth=_per_level(config, "transformer_layers_per_block", 1, MAX_REPEATS),
        use_linear_projection=flag(config, "use_linear_projection", False),
        **_unet_fields(config, "CrossAttn", {"DownBlock2D", "CrossAttnDownBlock2D"},
                       {"UpBlock2D", "CrossAttnUpBlock2D"}, "text-conditional U-Net"),
    )


def _number(value: float) -> int | float:
    """1.0 -> 1 (diffusers types freq_shift as an int), 0.5 stays 0.5."""
    return int(value) if float(value).is_integer() else value


def to_diffusers(state_dict: dict[str, torch.Tensor], config: UNetConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """A minidiff U-Net's state dict and config -> (diffusers' state dict, its config.json as a dict).

    Without cross_attention_dim: a UNet2DModel; with it: a UNet2DConditionModel. `UNet2DModel.from_config(cfg)` (or
    UNet2DConditionModel's) then `load_state_dict(sd)` rebuilds the same network in diffusers, and the two,
    saved with save_pretrained, load back into the same minidiff U-Net."""
    c = config
    if c.patch_size != 1:
        raise PretrainedError(f"UNetConfig has patch_size={c.patch_size}, which diffusers' U-Nets do not have; "
                              f"convert the network inside the fold (patch_size=1, channels x patch_size^2, "
                              f"sample_size / patch_size) and fold the pixels around it")
    if c.position_embedding:
        raise PretrainedError("UNetConfig has position_embedding=True, which diffusers' UNet2DConditionModel does not "
                              "have; train with position_embedding=False to export the network")
    n = len(c.block_channels)
    text_conditional = c.cross_attention_dim is not None
    prefix = "CrossAttn" if text_conditional else "Attn"
    reference = dict(
        sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=list(c.block_channels), layers_per_block=c.layers_per_block,
        down_block_types=[f"{prefix}DownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in range(n)],
        up_block_types=[f"{prefix}UpBlock2D" if n - 1 - i in c.up_levels else "UpBlock2D" for i in range(n)],
        norm_num_groups=c.norm_groups, norm_eps=c.norm_eps, dropout=c.dropout, act_fn="silu",
        flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=_number(c.freq_shift), downsample_padding=c.downsample_padding,
        resnet_time_scale_shift="scale_shift" if c.time_scale_shift else "default", time_embedding_type="positional",
    )
    if text_conditional:
        single = lambda values: values[0] if len(values) == 1 else list(values)  # noqa: E731
        reference = {"_class_name": "UNet2DConditionModel", **reference, "cross_attention_dim": c.cross_attention_dim,
                     "attention_head_dim": single(c.attention_heads),            # diffusers' name for the head count
                     "transformer_layers_per_block": single(c.transformer_depth),
                     "use_linear_projection": c.use_linear_projection, "mid_block_type": "UNetMidBlock2DCrossAttn"}
    else:
        reference = {"_class_name": "UNet2DModel", **reference, "attention_head_dim": c.attention_head_dim,
                     "attn_norm_num_groups": c.norm_groups if c.time_scale_shift else None,
                     "mid_block_type": "UNetMidBlock2D", "add_attention": True}
    return rename_keys(state_dict, UNET_INVERSE_KEY_MAP), reference


def _keys_from_diffusers(state_dict: dict) -> dict:
    return rename_keys(state_dict, UNET_KEY_MAP)


UNET_2D = Converter("UNet2DModel", UNet, unet_config_from_diffusers, _keys_from_diffusers, to_diffusers)
UNET_2D_CONDITION = Converter("UNet2DConditionModel", UNet, cond_unet_config_from_diffusers, _keys_from_diffusers,
                              to_diffusers)
CONVERTERS = (UNET_2D, UNET_2D_CONDITION)

