"""minidiff's Autoencoder <-> diffusers' AutoencoderKL (the VAE of SD 1.x/2.x, SDXL and SD3; Chapter 2).

minidiff's module names follow diffusers', so the key map is short:

    diffusers                                          minidiff
    encoder.down_blocks.i.downsamplers.0.conv          encoder.down_blocks.i.resample.conv
    decoder.up_blocks.i.upsamplers.0.conv              decoder.up_blocks.i.resample.conv
    {encoder,decoder}.mid_block.attentions.0.          {encoder,decoder}.mid_block.attention.
    ...to_out.0.                                       ...to_out.   (folders saved before diffusers 0.14:
                                                                     query/key/value/proj_attn)

The config carries the latent scaling: `scaling_factor` and (SD3) `shift_factor`. diffusers' AutoencoderKL fixes
every GroupNorm's eps at 1e-6; minidiff's AutoencoderConfig has it as a field, and only 1e-6 converts.
"""
from __future__ import annotations

import torch

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.convert import (MAX_REPEATS, Converter, PretrainedError, flag, integer, integers, number,
                                     rename_keys, require, texts)

# diffusers name -> minidiff name
AUTOENCODER_KEY_MAP = [
    (r"\.downsamplers\.0\.", ".resample."),
    (r"\.upsamplers\.0\.", ".resample."),
    (r"(^|\.)mid_block\.attentions\.0\.", r"\1mid_block.attention."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.query\.", ".to_q."), (r"\.key\.", ".to_k."), (r"\.value\.", ".to_v."), (r"\.proj_attn\.", ".to_out."),
]
# minidiff name -> diffusers name: AUTOENCODER_KEY_MAP backwards, writing today's attention names.
AUTOENCODER_INVERSE_KEY_MAP = [
    (r"(^|\.)down_blocks\.(\d+)\.resample\.", r"\1down_blocks.\2.downsamplers.0."),
    (r"(^|\.)up_blocks\.(\d+)\.resample\.", r"\1up_blocks.\2.upsamplers.0."),
    (r"(^|\.)mid_block\.attention\.", r"\1mid_block.attentions.0."),
    (r"\.to_out\.", ".to_out.0."),
]
DIFFUSERS_NORM_EPS = 1e-6


def autoencoder_config_from_diffusers(config: dict) -> AutoencoderConfig:
    """diffusers AutoencoderKL config.json -> AutoencoderConfig. Missing keys take diffusers' defaults, except the
    block layout, which every saved config has."""
    for key, expected in [("act_fn", "silu"), ("mid_block_add_attention", True)]:
        require(config, key, expected, "autoencoder")
    channels = integers(config, "block_out_channels")
    down, up = texts(config, "down_block_types"), texts(config, "up_block_types")
    if set(down) - {"DownEncoderBlock2D"} or set(up) - {"UpDecoderBlock2D"}:
        raise PretrainedError(f"unsupported block types {sorted(set(down) | set(up))}; minidiff's autoencoder has "
                              f"DownEncoderBlock2D and UpDecoderBlock2D")
    if not len(down) == len(up) == len(channels):
        raise PretrainedError(f"diffusers config has {len(channels)} block_out_channels, {len(down)} down_block_types "
                              f"and {len(up)} up_block_types; it needs one of each per level: re-save the model")
    size = config.get("sample_size", 32)
    return AutoencoderConfig(
        in_channels=integer(config, "in_channels", 3),
        out_channels=integer(config, "out_channels", 3),
        block_channels=channels,
        layers_per_block=integer(config, "layers_per_block", 1, maximum=MAX_REPEATS),
        latent_channels=integer(config, "latent_channels", 4),
        norm_groups=integer(config, "norm_num_groups", 32),
        use_quant_conv=flag(config, "use_quant_conv", True),
        use_post_quant_conv=flag(config, "use_post_quant_conv", True),
        scaling_factor=number(config, "scaling_factor", 0.18215, strictly_positive=True),
        shift_factor=number(config, "shift_factor", None) or 0.0,                # SD 1.x: null
        sample_size=integers(config, "sample_size")[0] if isinstance(size, (list, tuple))
        else integer(config, "sample_size", 32),
    )


def to_diffusers(state_dict: dict[str, torch.Tensor],
                 config: AutoencoderConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """A minidiff Autoencoder's state dict and config -> (AutoencoderKL's state dict, its config.json as a dict)."""
    c = config
    if c.norm_eps != DIFFUSERS_NORM_EPS:
        raise PretrainedError(f"AutoencoderConfig has norm_eps={c.norm_eps}, but diffusers' AutoencoderKL fixes it at "
                              f"{DIFFUSERS_NORM_EPS}; only an autoencoder with norm_eps={DIFFUSERS_NORM_EPS} converts")
    n = len(c.block_channels)
    reference = dict(
        _class_name="AutoencoderKL", in_channels=c.in_channels, out_channels=c.out_channels,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(c.block_channels), layers_per_block=c.layers_per_block, act_fn="silu",
        latent_channels=c.latent_channels, norm_num_groups=c.norm_groups, sample_size=c.sample_size,
        scaling_factor=c.scaling_factor, shift_factor=c.shift_factor or None,
        use_quant_conv=c.use_quant_conv, use_post_quant_conv=c.use_post_quant_conv, mid_block_add_attention=True,
    )
    return rename_keys(state_dict, AUTOENCODER_INVERSE_KEY_MAP), reference


def _keys_from_diffusers(state_dict: dict) -> dict:
    return rename_keys(state_dict, AUTOENCODER_KEY_MAP)


AUTOENCODER_KL = Converter("AutoencoderKL", Autoencoder, autoencoder_config_from_diffusers, _keys_from_diffusers,
                           to_diffusers)
CONVERTERS = (AUTOENCODER_KL,)
