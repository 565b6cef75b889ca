"""Networks, one per file, each with a config dataclass and named presets.

`PRESETS` lists every preset the command line knows: name -> (network class, config constructor,
published parameter count or None). Counts are computed on the meta device, without memory.
"""
from __future__ import annotations

import torch

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.clip import (CLIP, CLIPConfig, CLIPImageConfig, CLIPImageEncoder, CLIPTextConfig,
                                 CLIPTextEncoder, contrastive_loss, retrieval_accuracy)
from minidiff.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from minidiff.models.mlp import MLPConfig, MLPDenoiser
from minidiff.models.unet import UNet, UNetConfig

PRESETS = {
    "unet-toy": (UNet, UNetConfig.toy, None),
    "ddpm-cifar10": (UNet, UNetConfig.ddpm_cifar10, 35_746_307),
    "unet-shapes-toy": (UNet, UNetConfig.shapes_toy, None),
    "unet-latent-toy": (UNet, UNetConfig.latent_toy, None),
    "unet-text-toy": (UNet, UNetConfig.text_toy, None),
    "sd15-unet": (UNet, UNetConfig.sd15, 859_520_964),
    "mlp-toy": (MLPDenoiser, MLPConfig.toy, None),
    "vae-toy": (Autoencoder, AutoencoderConfig.toy, None),
    "sd-vae": (Autoencoder, AutoencoderConfig.sd_vae, 83_653_863),
    "sd3-vae": (Autoencoder, AutoencoderConfig.sd3_vae, 83_819_683),
    "patchgan-toy": (PatchDiscriminator, DiscriminatorConfig.toy, None),
    "patchgan-ldm": (PatchDiscriminator, DiscriminatorConfig.ldm, None),
    "clip-toy": (CLIP, CLIPConfig.toy, None),
    "clip-vit-l-text": (CLIPTextEncoder, CLIPTextConfig.clip_vit_l_text, 123_060_480),
}


def build_model(config) -> torch.nn.Module:
    """The network for a config dataclass instance."""
    for network, make_config, _ in PRESETS.values():
        if isinstance(config, type(make_config())):
            return network(config)
    raise ValueError(f"no network takes a {type(config).__name__}")


def count_parameters(name: str) -> int:
    """Parameters of a preset, built on the meta device (no memory is allocated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; run `minidiff presets` to list them")
    network, make_config, _ = PRESETS[name]
    with torch.device("meta"):
        model = network(make_config())
    return sum(p.numel() for p in model.parameters())


__all__ = ["Autoencoder", "AutoencoderConfig", "CLIP", "CLIPConfig", "CLIPImageConfig", "CLIPImageEncoder", "CLIPTextConfig",
           "CLIPTextEncoder", "MLPConfig", "MLPDenoiser", "PRESETS", "UNet", "UNetConfig", "build_model", "contrastive_loss",
           "count_parameters", "retrieval_accuracy"]
