"""The patch discriminator of VQGAN and latent diffusion's autoencoder: real or fake, judged patch by patch.

Paper: Isola et al. 2017, pix2pix (arXiv:1611.07004), section 3.2.2 (PatchGAN); used by VQGAN (Esser et al.
2021, arXiv:2012.09841) and the LDM autoencoders (Rombach et al. 2022, arXiv:2112.10752).

Instead of one real/fake score per image, the discriminator outputs a grid of scores, each looking at one
patch (its receptive field): it can only punish what is wrong *locally*, which is exactly the blur that an
L1 or L2 loss leaves at edges. The layout, for n_layers = 3 and width 64 (2,765,633 parameters):

    conv 4x4 stride 2, C_in -> 64, LeakyReLU(0.2)                     (B, 64, H/2, W/2)
    conv 4x4 stride 2, 64 -> 128, BatchNorm, LeakyReLU                (B, 128, H/4, W/4)
    conv 4x4 stride 2, 128 -> 256, BatchNorm, LeakyReLU               (B, 256, H/8, W/8)
    conv 4x4 stride 1, 256 -> 512, BatchNorm, LeakyReLU               (B, 512, H/8 - 1, W/8 - 1)
    conv 4x4 stride 1, 512 -> 1                                       (B, 1, H/8 - 2, W/8 - 2)  the patch scores
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    width: int = 64                 # channels of the first layer; doubled per layer, at most 8x
    n_layers: int = 3               # strided layers after the first (LDM: 3)

    @classmethod
    def toy(cls, **overrides) -> "DiscriminatorConfig":
        """For 32x32 Shapes: 2 strided layers of width 32, 167,841 parameters. Each of its 6x6 scores sees a
        34x34 window, i.e. the whole image at 32x32: at this size the patches overlap almost completely, while
        LDM's 3-layer discriminator scores 70x70 windows, a small part of a 256 or 512 pixel image."""
        return cls(**{**dict(width=32, n_layers=2), **overrides})

    @classmethod
    def ldm(cls, **overrides) -> "DiscriminatorConfig":
        """The discriminator of the LDM/SD autoencoder losses: 2,765,633 parameters."""
        return cls(**overrides)


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> (B, 1, h, w) real/fake logits, one per patch."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = c.width
        for i in range(1, c.n_layers + 1):
            stride = 2 if i < c.n_layers else 1
            out = c.width * min(2 ** i, 8)
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
