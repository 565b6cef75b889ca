"""Chapter 2's exercise cases for tests/test_exercises.py: the autoencoder of latent diffusion.

WRONG lists (exercise, plausible but wrong implementation, a phrase the failure message must contain);
RIGHT (optional) lists other correct implementations the checks must accept.
"""

import torch
import torch.nn.functional as F

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
]
