"""Latent diffusion: the Chapter 1 denoiser, run in the latent space of a frozen autoencoder.

Paper: Rombach et al. 2022 (arXiv:2112.10752), section 3.2: train the diffusion model on z = E(x) instead of x,

    L_LDM = E_{z = E(x), eps, t} || eps - eps_theta(z_t, t) ||^2          (eq. 2, with z scaled to unit variance)

and sample z_0 with any sampler, then decode x = D(z_0). The denoiser never sees pixels: at f = 4 it works on
16x fewer positions, which is where the savings in training compute come from.

    images ─ autoencoder.encode ─ scale ─► z (what the U-Net is trained on)
    noise ─ sampler + U-Net ─► z_0 ─ unscale ─ autoencoder.decode ─► images
"""
from __future__ import annotations

import torch
from torch import nn

from minidiff.models.autoencoder import Autoencoder


class LatentDiffusion(nn.Module):
    """A denoiser over scaled latents plus the frozen autoencoder that defines them.

    forward(z_t (B, L, h, w), t) -> the denoiser's prediction (B, L, h, w): to a sampler or the diffusion loss
    this is just a network. decode(z_0) -> images (B, C, h*f, w*f) in [-1, 1]. The autoencoder's weights never
    train (requires_grad False) and travel in the same checkpoint, so a run folder is self-contained.
    """

    def __init__(self, denoiser: nn.Module, autoencoder: Autoencoder):
        super().__init__()
        self.denoiser = denoiser
        self.autoencoder = autoencoder.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()                     # frozen: its layers stay in inference mode
        return self

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        return self.denoiser(z_t, t)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> scaled latents (N, L, H/f, W/f), the diffusion model's data."""
        return self.autoencoder.encode_for_diffusion(images)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.autoencoder.decode_from_diffusion(z)
