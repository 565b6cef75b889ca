"""Chapter 2 exercises: the autoencoder of latent diffusion, built one part at a time.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/02-latent-diffusion/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure, and exits with a non-zero status
until all eight pass. A hint states the formula once you have tried: work each one out from the paper first.
Use torch only: do not call `minidiff.models.autoencoder`, `minidiff.blocks` or `minidiff.training.autoencoder`
here (the checks compare your results with them).

Exercises 1 to 6 are single formulas. Exercises 7 and 8 are build-along: the check puts your code into minidiff's
real autoencoder and trains it for 100 steps on Shapes scenes (a few seconds on a CPU), then holds the result to a
reconstruction floor, so passing means your code trains. Exercise 8 uses your exercises 1 and 2.

Conventions (the same as minidiff's):
- the encoder outputs a posterior q(z | x), a diagonal Gaussian per latent element, as a mean and a log-variance
  (logvar = log sigma^2); `mean` and `logvar` are (B, L, h, w): L latent channels on an h x w grid (8 x 8 x 4 for
  a 32 x 32 image and the toy VAE);
- images are (B, C, H, W) with pixels in [-1, 1];
- the discriminator is a PatchGAN: it outputs a grid of logits, one per image patch, e.g. (B, 1, h, w).

Papers: VAE, Kingma & Welling 2013 (arXiv:1312.6114); latent diffusion, Rombach et al. 2022 (arXiv:2112.10752);
VQGAN, Esser et al. 2021 (arXiv:2012.09841); hinge GAN loss, Lim & Ye 2017 (arXiv:1705.02894);
PatchGAN, Isola et al. 2017 (pix2pix, arXiv:1611.07004); pre-activation residual blocks, He et al. 2016
(arXiv:1603.05027); GroupNorm, Wu & He 2018 (arXiv:1803.08494).
"""
from __future__ import annotations

import math  # noqa: F401 (you may want math.log10)

import torch
import torch.nn.functional as F  # noqa: F401 (you may want F.relu, F.silu)
from torch import nn

LOGVAR_RANGE = (-30.0, 20.0)  # the range LDM (and minidiff) clamps the posterior's log-variance to


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exercise 1. Sample the posterior so that gradients flow into the encoder (the reparameterisation trick).

    Kingma & Welling 2013, section 2.4, and section 3 for the Gaussian case: a draw z ~ N(mean, sigma^2) made by
    a random number generator has no gradient. Instead, take standard normal noise `eps`, drawn outside the
    network, and write z as a differentiable function of mean, logvar and eps, so that z has the posterior's
    distribution. Remember that logvar is the log of the variance, not the standard deviation.

    First clamp logvar to LOGVAR_RANGE, as LDM does: it keeps exp() from overflowing or underflowing.

    Args:
        mean, logvar: the encoder's posterior, (B, L, h, w) each.
        eps: standard normal noise, (B, L, h, w). Use it: do not draw your own.
    Returns:
        z, (B, L, h, w). Gradients must reach `mean` and `logvar` (no .detach(), no torch.no_grad()).
    """
    raise NotImplementedError("Exercise 1: write z as a differentiable function of mean, logvar and eps")


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Exercise 2. How far the posterior is from the prior: the KL term of the VAE loss.

    Kingma & Welling 2013, section 3 (eq. 10) and appendix B: the KL divergence KL(q || p) from the posterior
    q = N(mean, sigma^2) to the prior p = N(0, 1) has a closed form per latent element; derive it (appendix B
    does) and compute it from mean and logvar. The latent elements are independent, so the KL of the whole latent
    is the sum over its elements. It is zero exactly when q is the prior, and positive otherwise.

    LDM weights this term by a tiny 1e-6: just enough to keep the latents near N(0, I) in scale, not to make
    them Gaussian.

    Args:
        mean, logvar: the posterior, (B, L, h, w) each; logvar = log sigma^2, already inside LOGVAR_RANGE
            (no need to clamp it again).
    Returns:
        (B,): one KL per example, summed (not averaged) over L, h, w.
    """
    raise NotImplementedError("Exercise 2: write the KL from the posterior to N(0, I), summed over the latent")


def latent_scale(latents: torch.Tensor, shift: bool = False) -> tuple[float, float]:
    """Exercise 3. The numbers that bring the autoencoder's latents to unit variance for diffusion.

    The noise schedule assumes data of about unit variance; a KL-regularised VAE's latents have whatever scale
    training gave them. Rombach et al. 2022 (section 4.3.2, appendix G) therefore rescale them with a factor
    measured once on a batch of encoded images. The diffusion model sees (z - shift_factor) * scaling_factor.

    Return the scaling_factor that gives these latents a standard deviation of exactly 1, measured over all
    their values (around their mean), with torch's default std, the unbiased one (dividing by N - 1), as
    minidiff does. With shift=True also return the shift_factor that centres them (SD3 does this); with
    shift=False the shift_factor is 0.0 (SD 1.x). For Stable Diffusion 1.x this gave scaling_factor = 0.18215
    (its latents have a std of about 5.5); SD3's 16-channel VAE has scaling_factor = 1.5305, shift_factor = 0.0609.

    Args:
        latents: (N, L, h, w), unscaled latents of N encoded images.
        shift: whether to measure a shift (SD3) or not (SD 1.x).
    Returns:
        (scaling_factor, shift_factor) as Python floats (`.item()`), the way they are stored in a config.
    """
    raise NotImplementedError("Exercise 3: measure the scaling factor (and the shift, if shift) of the latents")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Exercise 4. The discriminator's loss: the hinge loss (Lim & Ye 2017), as in VQGAN and LDM.

    The discriminator wants real patches to score at least +1 and reconstructed ones at most -1. A patch past
    its margin costs nothing and gives no gradient; one short of it costs how far short it is. Average the cost
    over every patch logit of the batch, separately for the real and the fake logits, and return the average of
    those two means (VQGAN's and LDM's code weight the two halves equally this way).

    Args:
        logits_real: D(x), the discriminator's patch logits on real images, e.g. (B, 1, h, w).
        logits_fake: D(x_hat), on the reconstructions, the same shape.
    Returns:
        loss_D, a 0-d tensor.
    """
    raise NotImplementedError("Exercise 4: write the hinge loss of the discriminator")


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5) -> torch.Tensor:
    """Exercise 5. Balance the adversarial term against the reconstruction (VQGAN, Esser et al. 2021, eq. 7).

    The autoencoder's loss is rec_loss + lambda * g_loss. Rather than tune lambda by hand, VQGAN compares the
    norms of the two losses' gradients at the decoder's last layer W and chooses lambda so that the adversarial
    gradient is a fixed fraction (disc_weight) of the reconstruction gradient. As in VQGAN's code:
    - add 1e-4 to the denominator's norm (a zero adversarial gradient must not divide by zero);
    - clamp the ratio of the norms to [0, 1e4] before multiplying it by disc_weight.
    lambda is a weight, not something to train: return it detached from the graph.

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
    """Exercise 6. Peak signal-to-noise ratio of a reconstruction, in decibels: one number per image.

    PSNR compares the mean squared error over an image's values (C, H, W) with the square of the largest
    possible difference between two pixel values (the peak-to-peak range of the pixels). minidiff's pixels live
    in [-1, 1]: mind what the peak is for that range (a peak meant for [0, 1] would understate every score by
    about 6 dB). As minidiff does:
    - clamp x_hat to [-1, 1] first (the decoder's output is unbounded; the image you would look at is clipped);
    - floor the MSE at 1e-12, so that a perfect reconstruction scores a finite 126.02 dB instead of inf.

    Args:
        x: the original images, (B, C, H, W) in [-1, 1]. x_hat: the reconstructions, the same shape.
    Returns:
        (B,): one PSNR per image.
    """
    raise NotImplementedError("Exercise 6: write the PSNR for images in [-1, 1]")


class ResBlock(nn.Module):
    """Exercise 7 (build-along). The residual block that the autoencoder's encoder and decoder are built from.

    A residual block adds a learnt correction to its input. Its main branch is "pre-activation" (He et al. 2016,
    arXiv:1603.05027): twice, normalise, then SiLU, then a 3 x 3 convolution (padding 1). The normalisation is
    GroupNorm (Wu & He 2018) with `groups` groups and `eps`. The block returns the main branch plus the input;
    when in_channels != out_channels the input first goes through a 1 x 1 convolution to out_channels.
    It is DDPM's residual block without the timestep (Rombach et al. 2022 reuse it in the autoencoder).

    Name the layers as minidiff does, so that the check can copy minidiff's weights into your block:
    `norm1` (on in_channels), `conv1` (in -> out channels), `norm2`, `conv2` (out -> out), and `conv_shortcut`
    (the 1 x 1 conv, or None when the channels do not change). Use torch.nn layers.

    The check compares your block with minidiff's on the same weights, then replaces every residual block of a
    small autoencoder with yours and trains it for 100 steps: its reconstructions must reach a PSNR floor.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        raise NotImplementedError("Exercise 7: create norm1, conv1, norm2, conv2 and conv_shortcut")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 7: the main branch plus the (projected) input")


def vae_training_loss(model: nn.Module, x: torch.Tensor, eps: torch.Tensor, kl_weight: float = 1e-6) -> torch.Tensor:
    """Exercise 8 (build-along). The loss of one training step of the KL-regularised autoencoder (Rombach et al.
    2022, section 3.1 and appendix G), without the perceptual and adversarial terms. Use exercises 1 and 2.

    `model` is minidiff's Autoencoder. Its encoder's output, passed through `model.quant_conv` when that is not
    None, holds the posterior's mean and log-variance stacked on the channels, mean first: (B, 2L, h, w). Clamp
    the log-variance to LOGVAR_RANGE. Sample z with your `reparameterize` and the noise `eps` you are given, and
    reconstruct x_hat with `model.decode(z)` (it applies `post_quant_conv` and the decoder). Do not call
    `model.encode` or `model(x)`: they use minidiff's own sampling, which this exercise replaces.

    The loss has two terms:
    - reconstruction: the absolute error between x and x_hat (L1, as LDM), averaged over every value of the batch;
    - KL: your `gaussian_kl`, averaged over the batch and divided by the number of values in one image (C * H * W),
      weighted by kl_weight. LDM sums the reconstruction over the pixels; minidiff averages it, so it divides the
      KL by the pixel count to keep the balance (and LDM's kl_weight = 1e-6) the same.

    The check compares your loss with minidiff's on the same model and noise, then trains a small autoencoder for
    100 steps with your loss (and a kl_weight of 0.05, large enough for the KL to act within those steps): the
    reconstructions must reach a PSNR floor and the posterior must stay near the prior.

    Args:
        model: an Autoencoder. x: images (B, C, H, W) in [-1, 1]. eps: standard normal noise (B, L, h, w).
        kl_weight: the weight of the KL term.
    Returns:
        the loss, a 0-d tensor that gradients flow back from into the encoder and the decoder.
    """
    raise NotImplementedError("Exercise 8: encode, sample with your reparameterize, decode, add the two terms")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch02 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
