"""Training the autoencoder of latent diffusion: reconstruction, perceptual, KL and adversarial terms.

Paper: Rombach et al. 2022 (arXiv:2112.10752), section 3.1 and appendix G, with the loss of VQGAN (Esser et al.
2021, arXiv:2012.09841, eq. 4-7) and its code (`LPIPSWithDiscriminator`). Per image, with x_hat = D(z), z ~ q(z|x):

    rec      = mean_pixels |x - x_hat|  (or squared)  +  perceptual_weight * d_perceptual(x, x_hat)
    kl       = KL(q(z|x) || N(0, I)) / num_pixels                     (summed over the latent, see below)
    g_loss   = -mean D(x_hat)                                          (the generator's adversarial term)
    lambda   = disc_weight * ||grad_W rec|| / (||grad_W g_loss|| + 1e-4),   W = decoder.conv_out.weight  (eq. 7)
    loss     = rec + kl_weight * kl + lambda * g_loss                  (g_loss from step disc_start on)
    loss_D   = 1/2 [ mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)) ]   (hinge loss, the discriminator's)

LDM sums the reconstruction over pixels and the KL over the latent and weights the KL by 1e-6; minidiff averages
the reconstruction over pixels, so it divides the KL by the pixel count: the balance is the same and kl_weight
keeps LDM's meaning. LDM also learns a scalar log-variance s that rescales the reconstruction (NLL = rec / e^s + s),
which shifts its balance against the KL and adversarial terms as training goes; minidiff leaves it out, so its
loss is the plain weighted sum above. The adaptive lambda keeps the adversarial gradient
at the decoder's last layer a fixed fraction of the reconstruction gradient, whatever their scales.

Training runs in the one loop of minidiff.training.loop (batches and noise seeded by step, so --resume is exact;
AdamW with warmup and cosine decay; EMA; atomic checkpoints): AutoencoderObjective is its objective, whose
discriminator the loop trains with a second optimizer right after each step of the autoencoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from minidiff.models.autoencoder import Autoencoder
from minidiff.models.discriminator import PatchDiscriminator
from minidiff.models.perceptual import PerceptualConfig, PerceptualNet, perceptual_distance
from minidiff.training.classifier import fit_classifier
from minidiff.training.loop import TrainConfig, train

PIXEL_LOSSES = ("l1", "l2")
ADAPTIVE_WEIGHT_MAX = 1e4


@dataclass
class AutoencoderLossConfig:
    pixel_loss: str = "l1"            # 'l1' (LDM) or 'l2'
    perceptual_weight: float = 1.0    # weight of the perceptual distance (0: off)
    kl_weight: float = 1e-6           # LDM's kl-f8 value
    disc_weight: float = 0.5          # scales the adaptive weight of the adversarial term (0: no discriminator)
    disc_start: int = 50001           # step at which the discriminator starts (LDM: 50001)
    disc_lr: float = 0.0              # the discriminator's learning rate (0: the generator's lr)


def pixel_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean over pixels and batch of |x - x_hat| or (x - x_hat)^2."""
    if kind not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel_loss {kind!r}; choose one of {', '.join(PIXEL_LOSSES)}")
    diff = x - x_hat
    return diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """1/2 [mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat))]: zero once real patches score >= 1 and fakes <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5) -> torch.Tensor:
    """VQGAN eq. 7: disc_weight * ||grad rec|| / (||grad g_loss|| + 1e-4) at the decoder's last layer, detached."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return disc_weight * weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2): (B,) one value per image."""
    mse = (x - x_hat.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, loss: AutoencoderLossConfig,
                     perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                     discriminator: PatchDiscriminator | None, generator: torch.Generator,
                     use_gan: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The generator's total loss, the reconstructions (for the discriminator) and the terms to log."""
    x_hat, posterior = model(x, sample_posterior=True, generator=generator)   # (B, C, H, W)
    rec = pixel_loss(x, x_hat, loss.pixel_loss)
    terms = {"pixel": rec.item()}
    if perceptual is not None and loss.perceptual_weight > 0:
        p = perceptual(x_hat, x).mean()
        rec = rec + loss.perceptual_weight * p
        terms["perceptual"] = p.item()
    kl = posterior.kl().mean() / x[0].numel()
    total = rec + loss.kl_weight * kl
    terms["kl"] = kl.item()
    if use_gan:
        g_loss = -discriminator(x_hat).mean()
        weight = adaptive_weight(rec, g_loss, model.decoder.conv_out.weight, loss.disc_weight)
        total = total + weight * g_loss
        terms.update(g_loss=g_loss.item(), adaptive_weight=weight.item())
    return total, x_hat, terms


class AutoencoderObjective:
    """The autoencoder's objective for minidiff.training.loop.train: the generator's loss (autoencoder_loss) and the
    discriminator's hinge loss, with LDM/VQGAN's Adam betas (0.5, 0.9) for both players.

    perceptual: minidiff's PerceptualNet (anything with a `features` method: its LPIPS-style distance is used and
    its weights are stored in the checkpoint as `perceptual.*`), or any callable distance(x_hat, x) -> (B,), e.g. the
    `lpips` package's LPIPS module where it is installed (not stored: pass it again on resume). discriminator:
    trained from loss.disc_start on, if loss.disc_weight > 0 (stored as `discriminator.*`, its AdamW as
    `d_optimizer.*`); without one, or with disc_weight=0, training is reconstruction, perceptual and KL only.
    """
    betas = (0.5, 0.9)

    def __init__(self, loss: AutoencoderLossConfig, perceptual: torch.nn.Module | Callable | None = None,
                 discriminator: PatchDiscriminator | None = None):
        self.config = loss
        self.discriminator = discriminator if discriminator is not None and loss.disc_weight > 0 else None
        self.discriminator_lr = loss.disc_lr
        self.perceptual = perceptual
        network = perceptual if hasattr(perceptual, "features") else None     # minidiff's own: stored
        if isinstance(perceptual, torch.nn.Module):
            perceptual.eval().requires_grad_(False)
        self.distance = (lambda a, b: perceptual_distance(network, a, b)) if network is not None else perceptual
        self.networks = {name: module for name, module in [("discriminator", self.discriminator),
                                                            ("perceptual", network)] if module is not None}

    def to(self, device: torch.device) -> "AutoencoderObjective":
        for module in (self.discriminator, self.perceptual):
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    def adversarial_at(self, step: int) -> bool:
        """Whether the discriminator plays at this step: from disc_start on (LDM: 50001)."""
        return self.discriminator is not None and step >= self.config.disc_start

    def loss(self, model: Autoencoder, x: torch.Tensor, generator: torch.Generator,
             adversarial: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The generator's total loss, the reconstructions x_hat (B, C, H, W) and the terms to log."""
        return autoencoder_loss(model, x, self.config, self.distance, self.discriminator, generator, adversarial)

    def discriminator_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """The hinge loss on real images x and reconstructions x_hat (detached: no gradient to the autoencoder)."""
        return hinge_discriminator_loss(self.discriminator(x), self.discriminator(x_hat))


def train_autoencoder(model: Autoencoder, data: torch.Tensor, loss: AutoencoderLossConfig, config: TrainConfig,
                      run_dir: str | Path, run_config: dict, resume: bool = False,
                      perceptual: torch.nn.Module | Callable | None = None,
                      discriminator: PatchDiscriminator | None = None,
                      on_sample: Callable[[torch.nn.Module, int], None] | None = None, progress: bool = True):
    """Train `model` on images `data` (N, C, H, W) in [-1, 1]: train(model, AutoencoderObjective(loss, perceptual,
    discriminator), data, ...). Returns (model, ema_model, logs) where logs are this call's records."""
    objective = AutoencoderObjective(loss, perceptual, discriminator)
    return train(model, objective, data, config, run_dir, run_config, resume=resume, on_sample=on_sample,
                 progress=progress)


def train_perceptual_net(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, batch_size: int = 64,
                         lr: float = 3e-3, seed: int = 0):
    """Fit minidiff.models.perceptual.PerceptualNet to multi-label attributes (B, num_labels) of the images."""
    config = PerceptualConfig(in_channels=images.shape[1], num_labels=labels.shape[1])
    return fit_classifier(lambda: PerceptualNet(config), images, labels, F.binary_cross_entropy_with_logits,
                          epochs, batch_size, lr, seed)
