"""Chapter 2 exercises: reference solutions (for instructors).

Each function is written from the paper's equations, not by calling minidiff, so that the checks in
`minidiff.exercises.ch02` compare two independent implementations. Same signatures as exercises.py.

    python instructors/solutions/02-latent-diffusion.py        # every check passes: exit status 0

Exercises 7 and 8 are build-along: the checks put them into minidiff's real autoencoder and train it.

Papers: VAE (arXiv:1312.6114), latent diffusion (arXiv:2112.10752), VQGAN (arXiv:2012.09841),
hinge GAN loss (arXiv:1705.02894), pre-activation residual blocks (arXiv:1603.05027), GroupNorm (arXiv:1803.08494).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_RANGE = (-30.0, 20.0)  # the range LDM (and minidiff) clamps the posterior's log-variance to


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exercise 1: z = mean + exp(0.5 logvar) eps, logvar clamped to LOGVAR_RANGE   (VAE section 2.4)."""
    sigma = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))      # (B, L, h, w): logvar = log sigma^2
    return mean + sigma * eps                                 # (B, L, h, w)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Exercise 2: KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar)
    over L, h, w   (VAE appendix B)."""
    per_element = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)   # (B, L, h, w)
    return per_element.sum(dim=(1, 2, 3))                        # (B,)


def latent_scale(latents: torch.Tensor, shift: bool = False) -> tuple[float, float]:
    """Exercise 3: scaling_factor = 1 / std(latents) (unbiased), shift_factor = mean(latents) or 0
    (LDM section 4.3.2 and appendix G)."""
    latents = latents.detach().double()                       # float64: one number from many values
    return 1.0 / latents.std().item(), latents.mean().item() if shift else 0.0


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Exercise 4: 1/2 [mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat))]   (Lim & Ye 2017; VQGAN's code)."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5) -> torch.Tensor:
    """Exercise 5: disc_weight * clamp(||grad_W rec|| / (||grad_W g|| + 1e-4), 0, 1e4), detached   (VQGAN eq. 7)."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)   # like last_layer
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)       # like last_layer
    ratio = rec_grad.norm() / (g_grad.norm() + 1e-4)                           # 0-d
    return disc_weight * ratio.clamp(0.0, 1e4).detach()


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Exercise 6: 10 log10(2^2 / MSE) per image, for pixels in [-1, 1], x_hat clamped to [-1, 1] first."""
    mse = (x - x_hat.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))   # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))         # (B,)


class ResBlock(nn.Module):
    """Exercise 7: the autoencoder's residual block, pre-activation order (He et al. 2016, arXiv:1603.05027):

        h   = conv1(SiLU(norm1(x)))          norm: GroupNorm (arXiv:1803.08494); conv: 3x3, padding 1
        h   = conv2(SiLU(norm2(h)))
        out = shortcut(x) + h                shortcut: a 1x1 conv when the channels change, else x itself

    (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                            # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))                            # (B, C_out, H, W)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h                                              # (B, C_out, H, W)


def vae_training_loss(model: nn.Module, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1e-6) -> torch.Tensor:
    """Exercise 8: the loss of one training step of the KL-regularised autoencoder (LDM section 3.1, appendix G),
    without the perceptual and adversarial terms, built from exercises 1 and 2:

        mean, logvar = split(quant_conv(encoder(x)))        logvar clamped to LOGVAR_RANGE
        z     = reparameterize(mean, logvar, eps)
        x_hat = decode(z)
        loss  = mean |x - x_hat|  +  kl_weight * mean_over_batch(KL) / (C H W)

    (the KL is divided by the number of values in one image, since the reconstruction is a mean over them)."""
    moments = model.encoder(x)                                           # (B, 2L, h, w)
    if model.quant_conv is not None:
        moments = model.quant_conv(moments)
    mean, logvar = moments.chunk(2, dim=1)                               # (B, L, h, w) each
    logvar = logvar.clamp(*LOGVAR_RANGE)
    z = reparameterize(mean, logvar, eps)                                # (B, L, h, w)
    x_hat = model.decode(z)                                              # (B, C, H, W)
    reconstruction = (x - x_hat).abs().mean()                            # 0-d: L1, mean over every value
    kl = gaussian_kl(mean, logvar).mean() / x[0].numel()                 # 0-d: per value of one image
    return reconstruction + kl_weight * kl


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch02 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
