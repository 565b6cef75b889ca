"""Chapter 2 exercises: the autoencoder of latent diffusion, one formula at a time.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/02-latent-diffusion/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure, and exits with a non-zero status
until all six pass. Use torch only: the point is to write each formula yourself, so do not call
`minidiff.models.autoencoder` or `minidiff.training.autoencoder` here (the checks compare your result with them).

Conventions (the same as minidiff's):
- the encoder outputs a posterior q(z | x) = N(mean, diag(exp(logvar))) per latent element; `mean` and `logvar`
  are (B, L, h, w): L latent channels on an h x w grid (8 x 8 x 4 for a 32 x 32 image and the toy VAE);
- images are (B, C, H, W) with pixels in [-1, 1];
- the discriminator is a PatchGAN: it outputs a grid of logits, one per image patch, e.g. (B, 1, h, w).

Papers: VAE, Kingma & Welling 2013 (arXiv:1312.6114); latent diffusion, Rombach et al. 2022 (arXiv:2112.10752);
VQGAN, Esser et al. 2021 (arXiv:2012.09841); hinge GAN loss, Lim & Ye 2017 (arXiv:1705.02894);
PatchGAN, Isola et al. 2017 (pix2pix, arXiv:1611.07004).
"""
from __future__ import annotations

import math  # noqa: F401 (you may want math.log10)

import torch
import torch.nn.functional as F  # noqa: F401 (you may want F.relu)

LOGVAR_RANGE = (-30.0, 20.0)  # the range LDM (and minidiff) clamps the posterior's log-variance to


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exercise 1. Sample the posterior so that gradients flow into the encoder (the reparameterisation trick).

    Kingma & Welling 2013, section 2.4: instead of drawing z ~ N(mean, sigma^2) directly (a draw that no gradient
    passes through), draw eps ~ N(0, I) outside the network and write z as a differentiable function of it:

        logvar = clamp(logvar, -30, 20)        (LOGVAR_RANGE: LDM's guard against exp() over- or underflowing)
        sigma  = exp(0.5 * logvar)             (the standard deviation: logvar is log sigma^2)
        z      = mean + sigma * eps

    Args:
        mean, logvar: the encoder's posterior, (B, L, h, w) each.
        eps: standard normal noise, (B, L, h, w).
    Returns:
        z, (B, L, h, w). Gradients must reach `mean` and `logvar` (no .detach(), no torch.no_grad()).
    """
    raise NotImplementedError("Exercise 1: write z = mean + exp(0.5 logvar) eps, with logvar clamped")


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Exercise 2. How far the posterior is from the prior: the KL term of the VAE loss.

    Kingma & Welling 2013, appendix B: for q = N(mu, sigma^2) and p = N(0, 1), per latent element,

        KL(q || p) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)

    and the KL of the whole latent, its elements being independent, is the sum over them. LDM weights this term
    by a tiny 1e-6: just enough to keep the latents near N(0, I) in scale, not to make them Gaussian.

    Args:
        mean, logvar: the posterior, (B, L, h, w) each; logvar = log sigma^2, already inside LOGVAR_RANGE
            (no need to clamp it again).
    Returns:
        (B,): one KL per example, summed (not averaged) over L, h, w.
    """
    raise NotImplementedError("Exercise 2: write the KL to N(0, I), summed over the latent (VAE appendix B)")


def latent_scale(latents: torch.Tensor, shift: bool = False) -> tuple[float, float]:
    """Exercise 3. The numbers that bring the autoencoder's latents to unit variance for diffusion.

    The noise schedule assumes data of about unit variance; a KL-regularised VAE's latents have whatever scale
    training gave them. Rombach et al. 2022 (section 4.3.2, appendix G) therefore rescale them, with a factor
    measured once on a batch of encoded images:

        scaling_factor = 1 / std(latents)                  (std over all values, around their mean)
        shift_factor   = mean(latents) if shift else 0.0
        the diffusion model sees  (z - shift_factor) * scaling_factor

    For Stable Diffusion 1.x this gave scaling_factor = 0.18215 (its latents have std about 5.5, and no shift is
    used). SD3's 16-channel VAE also removes the mean: scaling_factor = 1.5305, shift_factor = 0.0609.

    Use torch's default std, the unbiased one (dividing by N - 1), as minidiff does.

    Args:
        latents: (N, L, h, w), unscaled latents of N encoded images.
        shift: whether to measure a shift (SD3) or not (SD 1.x).
    Returns:
        (scaling_factor, shift_factor) as Python floats (`.item()`), the way they are stored in a config.
    """
    raise NotImplementedError("Exercise 3: measure 1 / std (and the mean, if shift) of the latents")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Exercise 4. The discriminator's loss: the hinge loss (Lim & Ye 2017), as in VQGAN and LDM.

        loss_D = 1/2 [ mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)) ]

    The discriminator wants real patches to score above +1 and reconstructed ones below -1; past that margin a
    patch costs nothing and gives no gradient. Each mean is over every patch logit of the batch.

    Args:
        logits_real: D(x), the discriminator's patch logits on real images, e.g. (B, 1, h, w).
        logits_fake: D(x_hat), on the reconstructions, the same shape.
    Returns:
        loss_D, a 0-d tensor.
    """
    raise NotImplementedError("Exercise 4: write the hinge loss of the discriminator")


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5) -> torch.Tensor:
    """Exercise 5. Balance the adversarial term against the reconstruction (VQGAN eq. 7).

    The autoencoder's loss is rec + lambda * g_loss. Rather than tune lambda by hand, VQGAN compares the two
    gradients at the decoder's last layer W and rescales the adversarial one to a fixed fraction of the other:

        lambda = disc_weight * clamp( ||grad_W rec_loss|| / (||grad_W g_loss|| + 1e-4), 0, 1e4 )

    (clamp the ratio, then multiply by disc_weight). lambda is a weight, not something to train: return it
    detached from the graph.

    Use torch.autograd.grad(loss, last_layer, retain_graph=True) for each gradient: it returns the gradient
    without writing last_layer.grad, and retain_graph=True keeps the graph alive, since the training step
    backpropagates through rec_loss + lambda * g_loss afterwards.

    Args:
        rec_loss: the reconstruction loss, a 0-d tensor. g_loss: the generator's adversarial loss, 0-d.
        last_layer: the decoder's last weight (minidiff passes `decoder.conv_out.weight`); both losses depend on it.
        disc_weight: the fixed fraction.
    Returns:
        lambda, a 0-d tensor that does not require grad.
    """
    raise NotImplementedError("Exercise 5: write VQGAN's adaptive weight (eq. 7)")


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Exercise 6. Peak signal-to-noise ratio of a reconstruction, in decibels.

        PSNR = 10 log10( peak^2 / MSE ),   MSE = mean over C, H, W of (x - x_hat)^2

    minidiff's pixels live in [-1, 1], so the peak-to-peak range is 2 and peak^2 = 4. (With pixels in [0, 1] the
    peak is 1: PSNR does not depend on the pixel range as long as the peak matches it, and a peak of 1 here would
    understate every score by 10 log10(4) = 6.02 dB.) As minidiff does:
    - clamp x_hat to [-1, 1] first (the decoder's output is unbounded; the image you would look at is clipped);
    - floor the MSE at 1e-12, so a perfect reconstruction scores a finite 126.02 dB instead of inf.

    Args:
        x: the original images, (B, C, H, W) in [-1, 1]. x_hat: the reconstructions, the same shape.
    Returns:
        (B,): one PSNR per image.
    """
    raise NotImplementedError("Exercise 6: write the PSNR for images in [-1, 1]")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch02 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
