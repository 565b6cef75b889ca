"""Chapter 2's exercise cases for tests/test_exercises.py: the autoencoder of latent diffusion.

WRONG lists (exercise, plausible but wrong implementation, a phrase the failure message must contain);
RIGHT (optional) lists other correct implementations the checks must accept; BROKEN lists, for the build-along
exercises, deliberately broken versions that pass the quick unit comparisons (or fail them on purpose) and that the
check must fail in training: a block whose output is right but that stops gradients, a loss whose value is right
but that trains nothing.
"""

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.exercises.checking import load_exercise_file
from exercise_paths import solutions_path

solutions_ch02 = load_exercise_file(solutions_path("ch02"))


def reparameterize_variance_as_std(mean, logvar, eps):
    return mean + logvar.clamp(-30, 20).exp() * eps


def reparameterize_without_clamp(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps


def reparameterize_detached(mean, logvar, eps):
    return solutions_ch02.reparameterize(mean.detach(), logvar.detach(), eps)


def reparameterize_own_noise(mean, logvar, eps):
    return solutions_ch02.reparameterize(mean, logvar, torch.randn_like(eps))


def gaussian_kl_without_minus_one(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - logvar).sum(dim=(1, 2, 3))


def gaussian_kl_averaged(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean(dim=(1, 2, 3))


def gaussian_kl_without_half(mean, logvar):
    return 2 * solutions_ch02.gaussian_kl(mean, logvar)


def gaussian_kl_batch_mean(mean, logvar):
    return solutions_ch02.gaussian_kl(mean, logvar).mean()


def latent_scale_std_not_inverse(latents, shift=False):
    return latents.std().item(), latents.mean().item() if shift else 0.0


def latent_scale_biased_std(latents, shift=False):
    return 1 / latents.std(correction=0).item(), latents.mean().item() if shift else 0.0


def latent_scale_root_mean_square(latents, shift=False):
    return 1 / latents.pow(2).mean().sqrt().item(), latents.mean().item() if shift else 0.0


def latent_scale_tensors(latents, shift=False):
    return 1 / latents.std(), latents.mean() if shift else torch.tensor(0.0)


def latent_scale_always_shifting(latents, shift=False):
    return 1 / latents.std().item(), latents.mean().item()


def hinge_without_half(logits_real, logits_fake):
    return 2 * solutions_ch02.hinge_discriminator_loss(logits_real, logits_fake)


def hinge_fake_sign_flipped(logits_real, logits_fake):
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 - logits_fake).mean())


def hinge_without_relu(logits_real, logits_fake):
    return 0.5 * ((1 - logits_real).mean() + (1 + logits_fake).mean())


def _gradient_norms(rec_loss, g_loss, last_layer, **kwargs):
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True, **kwargs)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True, **kwargs)
    return rec_grad.norm(), g_grad.norm()


def adaptive_weight_not_detached(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer, create_graph=True)
    return disc_weight * (rec_norm / (g_norm + 1e-4)).clamp(0, 1e4)


def adaptive_weight_without_clamp(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return disc_weight * rec_norm / (g_norm + 1e-4)


def adaptive_weight_clamped_after_scaling(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return (disc_weight * rec_norm / (g_norm + 1e-4)).clamp(0, 1e4)


def adaptive_weight_without_epsilon(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return disc_weight * (rec_norm / g_norm).clamp(0, 1e4)


def adaptive_weight_with_backward(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_loss.backward(retain_graph=True)
    rec_grad = last_layer.grad.clone()
    last_layer.grad = None
    g_loss.backward(retain_graph=True)  # leaves its gradient in last_layer.grad
    return disc_weight * (rec_grad.norm() / (last_layer.grad.norm() + 1e-4)).clamp(0, 1e4)


def adaptive_weight_graph_freed(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer)  # frees the graph the training step still needs
    return disc_weight * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4)


def psnr_peak_one(x, x_hat):
    return solutions_ch02.psnr(x, x_hat) - 10 * torch.log10(torch.tensor(4.0))


def psnr_without_clamp(x, x_hat):
    mse = (x - x_hat).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(4 / mse)


def psnr_twenty_log(x, x_hat):
    return 2 * solutions_ch02.psnr(x, x_hat)


def psnr_without_floor(x, x_hat):
    mse = (x - x_hat.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4 / mse)


class ResBlockWithReLU(solutions_ch02.ResBlock):
    def forward(self, x):
        h = self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class ResBlockWithoutResidual(solutions_ch02.ResBlock):
    def forward(self, x):
        return self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ResBlockWithOwnNames(nn.Module):
    """Right computation, other names (skip, and the layers in a Sequential): minidiff's weights cannot be copied."""

    def __init__(self, in_channels, out_channels, groups=32, eps=1e-6):
        super().__init__()
        self.main = nn.Sequential(nn.GroupNorm(groups, in_channels, eps=eps), nn.SiLU(),
                                  nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                  nn.GroupNorm(groups, out_channels, eps=eps), nn.SiLU(),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.main(x)


class ResBlockInputDetached(solutions_ch02.ResBlock):
    """Right values everywhere, but no gradient flows back through the block's input: only the last block and the
    layers after it learn, and the encoder not at all."""

    def forward(self, x):
        return super().forward(x.detach())


class ResBlockMainBranchDetached(solutions_ch02.ResBlock):
    """Right values everywhere, but the main branch never learns (the shortcut and the other layers still do)."""

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h.detach()


def _posterior_of(model, x):
    moments = model.encoder(x)
    if model.quant_conv is not None:
        moments = model.quant_conv(moments)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def vae_loss_squared_error(model, x, eps, kl_weight=1e-6):
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(solutions_ch02.reparameterize(mean, logvar, eps))
    return (x - x_hat).pow(2).mean() + kl_weight * solutions_ch02.gaussian_kl(mean, logvar).mean() / x[0].numel()


def vae_loss_kl_not_per_pixel(model, x, eps, kl_weight=1e-6):
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(solutions_ch02.reparameterize(mean, logvar, eps))
    return (x - x_hat).abs().mean() + kl_weight * solutions_ch02.gaussian_kl(mean, logvar).mean()


def vae_loss_posterior_mean(model, x, eps, kl_weight=1e-6):
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(mean)
    return (x - x_hat).abs().mean() + kl_weight * solutions_ch02.gaussian_kl(mean, logvar).mean() / x[0].numel()


def vae_loss_kl_summed_over_batch(model, x, eps, kl_weight=1e-6):
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(solutions_ch02.reparameterize(mean, logvar, eps))
    return (x - x_hat).abs().mean() + kl_weight * solutions_ch02.gaussian_kl(mean, logvar).sum() / x[0].numel()


def vae_loss_as_float(model, x, eps, kl_weight=1e-6):
    return solutions_ch02.vae_training_loss(model, x, eps, kl_weight).item()


def vae_loss_reconstruction_detached(model, x, eps, kl_weight=1e-6):
    """The right value, but the reconstruction term sends no gradient: only the KL trains (the encoder, towards the
    prior) and the decoder never learns."""
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(solutions_ch02.reparameterize(mean, logvar, eps)).detach()
    return (x - x_hat).abs().mean() + kl_weight * solutions_ch02.gaussian_kl(mean, logvar).mean() / x[0].numel()


def vae_loss_kl_detached(model, x, eps, kl_weight=1e-6):
    """The right value, but the KL term sends no gradient: the posterior drifts away from the prior."""
    mean, logvar = _posterior_of(model, x)
    x_hat = model.decode(solutions_ch02.reparameterize(mean, logvar, eps))
    kl = solutions_ch02.gaussian_kl(mean.detach(), logvar.detach())
    return (x - x_hat).abs().mean() + kl_weight * kl.mean() / x[0].numel()


class ResBlockSpelledOut(nn.Module):
    """Right, spelled differently: SiLU as x * sigmoid(x), the shortcut applied in place of x, h + x."""

    def __init__(self, in_channels, out_channels, groups=32, eps=1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        h = self.norm1(x)
        h = self.conv1(h * torch.sigmoid(h))
        h = self.norm2(h)
        h = self.conv2(h * torch.sigmoid(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x


def vae_loss_spelled_out(model, x, eps, kl_weight=1e-6):
    """Right, without exercises 1 and 2: slices for the split, F.l1_loss, the KL written inline."""
    moments = model.encoder(x)
    if model.quant_conv is not None:
        moments = model.quant_conv(moments)
    latent_channels = moments.shape[1] // 2
    mean, logvar = moments[:, :latent_channels], torch.clamp(moments[:, latent_channels:], -30.0, 20.0)
    x_hat = model.decode(mean + torch.exp(logvar / 2) * eps)
    kl = 0.5 * torch.sum(mean.pow(2) + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3])
    return F.l1_loss(x_hat, x) + kl_weight * kl.mean() / (x.shape[1] * x.shape[2] * x.shape[3])


WRONG = [
    ("reparameterize", reparameterize_variance_as_std, "the variance, as the standard deviation"),
    ("reparameterize", reparameterize_without_clamp, "forget to clamp logvar"),
    ("reparameterize", reparameterize_detached, "does not depend differentiably"),
    ("reparameterize", reparameterize_own_noise, "values differ"),
    ("gaussian_kl", gaussian_kl_without_minus_one, "leave out the -1"),
    ("gaussian_kl", gaussian_kl_averaged, "average over L, h, w"),
    ("gaussian_kl", gaussian_kl_without_half, "forget the factor 1/2"),
    ("gaussian_kl", gaussian_kl_batch_mean, "expected shape"),
    ("latent_scale", latent_scale_std_not_inverse, "return the std itself"),
    ("latent_scale", latent_scale_biased_std, "biased std"),
    ("latent_scale", latent_scale_root_mean_square, "root mean square"),
    ("latent_scale", latent_scale_tensors, "expected a Python float"),
    ("latent_scale", latent_scale_always_shifting, "even though shift is False"),
    ("hinge_discriminator_loss", hinge_without_half, "leave out the factor 1/2"),
    ("hinge_discriminator_loss", hinge_fake_sign_flipped, "flip the sign on the fakes"),
    ("hinge_discriminator_loss", hinge_without_relu, "forget the ReLU"),
    ("adaptive_weight", adaptive_weight_not_detached, "still requires grad"),
    ("adaptive_weight", adaptive_weight_without_clamp, "forget the clamp"),
    ("adaptive_weight", adaptive_weight_clamped_after_scaling, "clamp after multiplying"),
    ("adaptive_weight", adaptive_weight_without_epsilon, "forget the 1e-4"),
    ("adaptive_weight", adaptive_weight_with_backward, "last_layer.grad was written"),
    ("adaptive_weight", adaptive_weight_graph_freed, "retain_graph=True"),
    ("psnr", psnr_peak_one, "peak of 1"),
    ("psnr", psnr_without_clamp, "forget to clamp"),
    ("psnr", psnr_twenty_log, "20 log10"),
    ("psnr", psnr_without_floor, "NaN or inf"),
    ("ResBlock", ResBlockWithReLU, "use ReLU where SiLU belongs"),
    ("ResBlock", ResBlockWithoutResidual, "leave out the residual connection"),
    ("ResBlock", ResBlockWithOwnNames, "parameter names or shapes differ"),
    ("vae_training_loss", vae_loss_squared_error, "squared error"),
    ("vae_training_loss", vae_loss_kl_not_per_pixel, "forget to divide the KL"),
    ("vae_training_loss", vae_loss_posterior_mean, "decode the posterior mean"),
    ("vae_training_loss", vae_loss_kl_summed_over_batch, "sum the KL over the batch"),
    ("vae_training_loss", vae_loss_as_float, "expected a torch.Tensor"),
]

RIGHT = [
    ("ResBlock", ResBlockSpelledOut),
    ("vae_training_loss", vae_loss_spelled_out),
]

# Each passes the unit comparisons and fails in training, except the one with its own names, which fails at once.
BROKEN = [
    ("ResBlock", ResBlockInputDetached, "reconstruction PSNR"),
    ("ResBlock", ResBlockMainBranchDetached, "some weights did not learn"),
    ("ResBlock", ResBlockWithOwnNames, "cannot be copied"),
    ("vae_training_loss", vae_loss_reconstruction_detached, "the loss did not fall"),
    ("vae_training_loss", vae_loss_kl_detached, "the KL term did not pull"),
]
