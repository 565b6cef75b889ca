"""Chapter 2 exercises: reference solutions (for instructors).

Each function is written from the paper's equations, not by calling minidiff, so that the checks in
`minidiff.exercises.ch02` compare two independent implementations. Same signatures as exercises.py.

    python instructors/solutions/02-latent-diffusion.py        # every check passes: exit status 0

Papers: VAE (arXiv:1312.6114), latent diffusion (arXiv:2112.10752), VQGAN (arXiv:2012.09841),
hinge GAN loss (arXiv:1705.02894).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch02 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
