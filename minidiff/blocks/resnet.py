"""Residual blocks and resampling layers of a U-Net.

Paper: Ho et al. 2020, DDPM (arXiv:2006.11239), appendix B: a Wide-ResNet block with GroupNorm,
the timestep embedding added between the two convolutions.

    h = conv1(SiLU(GroupNorm(x)))
    h = h + Linear(SiLU(temb))[:, :, None, None]     (only in a network that has a timestep)
    h = conv2(dropout(SiLU(GroupNorm(h))))
    out = shortcut(x) + h          (shortcut is a 1x1 conv when channels change)

With scale_shift=True (Dhariwal & Nichol 2021, arXiv:2105.05233, "AdaGN"; diffusers' resnet_time_scale_shift=
"scale_shift") the timestep modulates the second normalisation instead of being added before it:

    scale, shift = Linear(SiLU(temb)).chunk(2)       (each (B, C_out))
    h = conv2(dropout(SiLU(GroupNorm(h) * (1 + scale) + shift)))

The same block without the timestep line builds the autoencoder of latent diffusion (Rombach et al. 2022,
arXiv:2112.10752), and MidBlock (ResBlock, self-attention, ResBlock) is the bottleneck of both networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks.attention import SpatialSelfAttention


def check_images(x: torch.Tensor, channels: int, levels: int, network: str, patch: int = 1) -> None:
    """A clear ValueError for a batch a network cannot take: it folds `patch` x `patch` pixel patches into channels
    (1: none), then halves the resolution `levels` times."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected images of shape (B, {channels}, H, W), got {tuple(x.shape)}; "
                         f"this {network} was configured with in_channels={channels}")
    factor, (H, W) = patch * 2 ** levels, x.shape[-2:]
    if H % factor or W % factor:
        folds = f"folds {patch}x{patch} patches and " if patch > 1 else ""
        raise ValueError(f"image size {H}x{W} is not divisible by {factor}: the {network} {folds}halves the "
                         f"resolution {levels} times (factor f={factor}); crop or resize to a multiple of {factor}")


class ResBlock(nn.Module):
    """(B, C_in, H, W), temb (B, D) or None -> (B, C_out, H, W). temb_dim=None: a block with no timestep input."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int | None, groups: int = 32,
                 eps: float = 1e-6, dropout: float = 0.0, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        temb_out = 2 * out_channels if scale_shift else out_channels
        self.time_emb_proj = nn.Linear(temb_dim, temb_out) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                            # (B, C_out, H, W)
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif self.scale_shift:
            scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C_out, 1, 1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.time_emb_proj(F.silu(temb))[:, :, None, None])  # broadcast (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class MidBlock(nn.Module):
    """The bottleneck: ResBlock, self-attention, ResBlock. (B, C, H, W), temb (B, D) or None -> (B, C, H, W)."""

    def __init__(self, channels: int, temb_dim: int | None, groups: int = 32, eps: float = 1e-6,
                 dropout: float = 0.0, head_dim: int | None = None, scale_shift: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(channels, channels, temb_dim, groups, eps, dropout, scale_shift)
                                     for _ in range(2))
        self.attention = SpatialSelfAttention(channels, head_dim, groups, eps)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.resnets[1](self.attention(self.resnets[0](h, temb)), temb)


class Downsample(nn.Module):
    """Strided 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2).

    padding=0 pads only right and bottom by one pixel first (the DDPM/LDM convention);
    padding=1 pads symmetrically (Stable Diffusion's U-Net).
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
