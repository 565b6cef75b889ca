"""Checks for Chapter 2's exercises (chapters/02-latent-diffusion/exercises.py): the autoencoder of latent diffusion.

Each `check_<name>(fn)` calls a learner's function on several inputs and compares the result with minidiff's
own implementation in `minidiff.models.autoencoder` and `minidiff.training.autoencoder`, and with closed-form
properties of the maths. It returns quietly when everything agrees and raises AssertionError otherwise, saying
what was expected, what came back, and giving a hint. A function that still raises NotImplementedError fails
with `NotImplementedYet`, a kind of AssertionError. `run_checks(module)` runs them all. The helpers that call
the learner's function and compare tensors are minidiff.exercises.checking's.

| exercise                   | paper                                       | minidiff reference          |
|----------------------------|---------------------------------------------|-----------------------------|
| `reparameterize`           | VAE (arXiv:1312.6114) sec. 2.4              | `DiagonalGaussian.sample`   |
| `gaussian_kl`              | VAE appendix B                              | `DiagonalGaussian.kl`       |
| `latent_scale`             | LDM (arXiv:2112.10752) sec. 4.3.2, app. G   | `fit_latent_scaling`        |
| `hinge_discriminator_loss` | Lim & Ye (arXiv:1705.02894), as in VQGAN    | `hinge_discriminator_loss`  |
| `adaptive_weight`          | VQGAN (arXiv:2012.09841) eq. 7              | `adaptive_weight`           |
| `psnr`                     | 10 log10(peak^2 / MSE), pixels in [-1, 1]   | `psnr`                      |
| `ResBlock` (build-along)   | pre-activation ResNet (arXiv:1603.05027)    | `minidiff.blocks.ResBlock`  |
| `vae_training_loss` (b.-a.)| LDM sec. 3.1, app. G; VAE sec. 3            | `autoencoder_loss`          |

The first three references live in `minidiff.models.autoencoder`, the next three in `minidiff.training.autoencoder`.

Exercises 7 and 8 are build-along (`checking.build_along`): after quick unit comparisons (shapes, names, values
with minidiff's weights copied in), the check puts the learner's code into minidiff's real autoencoder and trains
it with minidiff's loop for 100 steps on Shapes scenes (minidiff.exercises.buildalong_autoencoder), then holds the
result to floors: the loss falls, the held-out reconstruction PSNR clears a floor, and (exercise 7) every block of
the learner's learnt or (exercise 8) the posterior stays near the prior. A docstring in the learner's file says
what to compute; the formula is in the hint of a failure.
"""
from __future__ import annotations

import copy
import math
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks import ResBlock
from minidiff.exercises import buildalong_autoencoder as run
from minidiff.exercises.checking import (Check, NotImplementedYet, build_along, call, command_line, expect_close,
                                          expect_float, expect_floor, expect_pair, preview, replace_modules, report,
                                          snapshot, unmoved_weights)
from minidiff.models.autoencoder import LOGVAR_RANGE, Autoencoder, DiagonalGaussian, fit_latent_scaling
from minidiff.training.autoencoder import (ADAPTIVE_WEIGHT_MAX, AutoencoderLossConfig, AutoencoderObjective,
                                           adaptive_weight, hinge_discriminator_loss, pixel_loss, psnr)


# ---------------------------------------------------------------------------------------------------------
# Helpers: a made-up posterior.
# ---------------------------------------------------------------------------------------------------------

def _posterior(seed: int, shape: tuple[int, ...] = (3, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of a made-up posterior, (B, L, h, w) each, with sigma from about e^-3 to e^3."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), 2 * torch.randn(shape, generator=g).clamp(-3, 3)


# ---------------------------------------------------------------------------------------------------------
# Exercise 1: the reparameterisation trick, Kingma & Welling section 2.4.
# ---------------------------------------------------------------------------------------------------------

def check_reparameterize(fn: Callable) -> None:
    """fn(mean, logvar, eps) -> z = mean + exp(0.5 clamp(logvar, -30, 20)) eps."""
    hint = "sigma = exp(0.5 * logvar), the standard deviation (logvar = log sigma^2); z = mean + sigma * eps."
    mean, logvar = _posterior(seed=21)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))                  # moments: (B, 2L, h, w)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(22))
    zeros = torch.zeros(mean.shape)
    where = f"z for mean and logvar of shape {tuple(mean.shape)}"

    expect_close(call(fn, mean, logvar, zeros), mean, f"{where}, eps = 0",
                 "with eps = 0 the sample is the mean itself: z = mean + sigma * 0. Use the eps you are given; "
                 "drawing your own noise makes z impossible to check.")
    expect_close(call(fn, zeros, logvar, eps), posterior.std * eps, f"{where}, mean = 0 (the noise part)", hint,
                 mistakes={"use exp(logvar), the variance, as the standard deviation": logvar.exp() * eps})
    # The same eps as DiagonalGaussian.sample draws from this generator.
    expect_close(call(fn, mean, logvar, eps), posterior.sample(generator=torch.Generator().manual_seed(22)),
                 where, hint)

    # The clamp: outside [-30, 20] the log-variance is held at the boundary.
    low, high = LOGVAR_RANGE
    wild = torch.tensor([low - 10, low, 0.0, high, high + 5, high + 30]).reshape(1, 1, 2, 3)   # (1, 1, 2, 3)
    ones = torch.ones(wild.shape)
    expect_close(call(fn, torch.zeros(wild.shape), wild, ones), DiagonalGaussian(torch.cat([0 * wild, wild], 1)).std,
                 f"z for logvar = {wild.flatten().tolist()}, mean = 0, eps = 1", rtol=1e-5, atol=0,
                 hint=f"clamp logvar to LOGVAR_RANGE = {LOGVAR_RANGE} before the exponential, as LDM does: "
                      f"logvar.clamp(-30.0, 20.0).",
                 mistakes={"forget to clamp logvar to [-30, 20]": torch.exp(0.5 * wild)})

    # The point of the trick: z is a differentiable function of mean and logvar, so gradients reach the encoder.
    mean, logvar = mean.clone().requires_grad_(), logvar.clone().requires_grad_()
    z = call(fn, mean, logvar, eps)
    hint_grad = ("the trick exists so that gradients reach the encoder: compute z from mean and logvar with plain "
                 "torch operations, without .detach(), torch.no_grad() or a fresh random draw.")
    if not z.requires_grad:
        raise AssertionError(f"gradient of z: z does not depend differentiably on mean and logvar.\n"
                             f"  Hint: {hint_grad}")
    z.sum().backward()
    for name, grad, expected in (("mean", mean.grad, torch.ones(mean.shape)),
                                 ("logvar", logvar.grad, 0.5 * posterior.std * eps)):
        if grad is None:
            raise AssertionError(f"gradient of z with respect to {name}: none reached it.\n  Hint: {hint_grad}")
        expect_close(grad, expected, f"gradient of sum(z) with respect to {name}",
                     "dz/dmean = 1 and dz/dlogvar = 0.5 * sigma * eps. " + hint_grad)


# ---------------------------------------------------------------------------------------------------------
# Exercise 2: the KL to the prior, Kingma & Welling appendix B.
# ---------------------------------------------------------------------------------------------------------

def check_gaussian_kl(fn: Callable) -> None:
    """fn(mean, logvar) -> (B,) 1/2 sum over L, h, w of (mean^2 + exp(logvar) - 1 - logvar)."""
    hint = ("KL = 1/2 * sum(mean^2 + exp(logvar) - 1 - logvar), summed over dims 1, 2, 3 (L, h, w): one value "
            "per example, shape (B,).")
    mean, logvar = _posterior(seed=23)
    batch, numel = mean.shape[0], mean[0].numel()
    where = f"KL for mean and logvar of shape {tuple(mean.shape)}"

    # Closed form: zero exactly when the posterior is the prior.
    zeros = torch.zeros(mean.shape)
    expect_close(call(fn, zeros, zeros), torch.zeros(batch), f"{where}, mean = 0 and logvar = 0 (q = p)", hint,
                 mistakes={"leave out the -1": torch.full((batch,), 0.5 * numel),
                           "average over L, h, w instead of summing": torch.full((batch,), 0.5)})

    per_element = mean**2 + logvar.exp() - 1 - logvar                                  # (B, L, h, w)
    expect_close(call(fn, mean, logvar), DiagonalGaussian(torch.cat([mean, logvar], dim=1)).kl(), where, hint,
                 mistakes={"leave out the -1": 0.5 * (per_element + 1).sum(dim=(1, 2, 3)),
                           "average over L, h, w instead of summing": 0.5 * per_element.mean(dim=(1, 2, 3)),
                           "forget the factor 1/2": per_element.sum(dim=(1, 2, 3)),
                           "use sigma = exp(0.5 logvar) where sigma^2 = exp(logvar) belongs":
                           0.5 * (mean**2 + (0.5 * logvar).exp() - 1 - logvar).sum(dim=(1, 2, 3)),
                           "add logvar instead of subtracting it":
                           0.5 * (mean**2 + logvar.exp() - 1 + logvar).sum(dim=(1, 2, 3))})

    # Golden values, one latent element each: N(1, 1) costs 1/2 nat; N(0, 2) costs (1 - ln 2) / 2.
    got = call(fn, torch.tensor([1.0, 0.0]).reshape(2, 1, 1, 1), torch.tensor([0.0, math.log(2)]).reshape(2, 1, 1, 1))
    expect_close(got, torch.tensor([0.5, (1 - math.log(2)) / 2]), "KL of N(1, 1) and of N(0, 2) to N(0, 1)", hint,
                 rtol=1e-5, atol=1e-6)

    # Any other posterior costs something: the KL is positive.
    got = call(fn, zeros, logvar)
    if not bool((got > 0).all()):
        raise AssertionError(f"KL with mean = 0 and logvar != 0: expected positive values, got {preview(got)}.\n"
                             f"  Hint: sigma^2 - 1 - log sigma^2 >= 0, with equality only at sigma = 1. {hint}")

    # What the formula is: the expectation under q of log q(z) - log p(z), estimated from samples.
    mean, logvar = torch.tensor([0.5, -1.0]).reshape(1, 2, 1, 1), torch.tensor([-0.5, 0.7]).reshape(1, 2, 1, 1)
    eps = torch.randn(100_000, 2, 1, 1, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    z = mean + (0.5 * logvar).exp() * eps                                             # (N, 2, 1, 1) samples of q
    log_ratio = (-0.5 * logvar - 0.5 * eps**2 + 0.5 * z**2).sum(dim=(1, 2, 3))        # (N,) log q(z) - log p(z)
    estimate, error = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    got = call(fn, mean, logvar)
    if abs(got.item() - estimate.item()) > 4 * error.item():
        raise AssertionError(f"KL against a Monte-Carlo estimate E_q[log q(z) - log p(z)] from 100,000 samples: "
                             f"expected {estimate.item():.4f} +- {4 * error.item():.4f}, got {got.item():.4f}.\n"
                             f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# Exercise 3: the latent scaling of LDM, section 4.3.2 and appendix G.
# ---------------------------------------------------------------------------------------------------------

def check_latent_scale(fn: Callable) -> None:
    """fn(latents, shift=False) -> (scaling_factor, shift_factor): 1 / std(latents), and their mean if shift."""
    hint = ("scaling_factor = 1 / latents.std() over all values (torch's default, unbiased std); "
            "shift_factor = latents.mean() if shift else 0.0; both as Python floats.")
    g = torch.Generator().manual_seed(25)
    cases = [("a batch like SD 1.x's latents (std 5.5)", 5.5 * torch.randn(16, 4, 8, 8, generator=g) + 0.3),
             ("a small batch (32 values)", 5.5 * torch.randn(2, 4, 2, 2, generator=g) + 0.8),
             ("a batch like SD3's latents (std 0.65, mean 0.06)", 0.65 * torch.randn(8, 16, 4, 4, generator=g) + 0.06)]
    for description, latents in cases:
        values = latents.double()
        mistakes = {"use the biased std (dividing by N, not N - 1); minidiff uses torch.std's default":
                    1 / values.std(correction=0).item(),
                    "return the std itself instead of 1 / std": values.std().item(),
                    "divide by the variance instead of the std": 1 / values.var().item(),
                    "take the root mean square (the std around 0) instead of the std around the mean":
                    1 / values.pow(2).mean().sqrt().item()}
        for shift in (False, True):
            where = f"latent_scale on {description}, shift={shift}"
            result = call(fn, latents, shift=True) if shift else call(fn, latents)
            got = expect_pair(result, where, "a pair of floats", "end with `return scaling_factor, shift_factor`.")
            expected_scale, expected_shift = fit_latent_scaling(latents, shift=shift)
            expect_float(got[0], expected_scale, f"{where}: scaling_factor", hint, mistakes=mistakes)
            expect_float(got[1], expected_shift, f"{where}: shift_factor", hint,
                         mistakes={"return the mean even though shift is False": values.mean().item()})
            # What the numbers are for: the latents the diffusion model sees have unit std (and zero mean if shift).
            scaled = (values - got[1]) * got[0]
            expect_float(scaled.std().item(), 1.0, f"{where}: std of (latents - shift_factor) * scaling_factor",
                         hint)


# ---------------------------------------------------------------------------------------------------------
# Exercise 4: the discriminator's hinge loss (Lim & Ye 2017), as in VQGAN and LDM.
# ---------------------------------------------------------------------------------------------------------

def check_hinge_discriminator_loss(fn: Callable) -> None:
    """fn(logits_real, logits_fake) -> 1/2 [mean ReLU(1 - real) + mean ReLU(1 + fake)], a 0-d tensor."""
    hint = ("loss_D = 0.5 * (relu(1 - logits_real).mean() + relu(1 + logits_fake).mean()): real patches are "
            "pushed above +1, fake ones below -1. Return a 0-d tensor.")
    g = torch.Generator().manual_seed(26)
    shape = (4, 1, 6, 6)                                          # a PatchGAN's logits: one per image patch
    real = 1.5 * torch.randn(shape, generator=g) + 0.5
    fake = 1.5 * torch.randn(shape, generator=g) - 0.5
    where = f"hinge loss for logits of shape {shape}"
    expect_close(call(fn, real, fake), hinge_discriminator_loss(real, fake), where, hint,
                 mistakes={"leave out the factor 1/2": F.relu(1 - real).mean() + F.relu(1 + fake).mean(),
                           "flip the sign on the fakes: ReLU(1 - D(x_hat))":
                           0.5 * (F.relu(1 - real).mean() + F.relu(1 - fake).mean()),
                           "forget the ReLU (then there is no margin: the loss has no floor)":
                           0.5 * ((1 - real).mean() + (1 + fake).mean()),
                           "sum over patches instead of averaging":
                           0.5 * (F.relu(1 - real).sum() + F.relu(1 + fake).sum())})

    # Closed forms: an undecided discriminator (all logits 0) pays 1; one past the margin pays nothing.
    zeros = torch.zeros(shape)
    expect_close(call(fn, zeros, zeros), torch.tensor(1.0), f"{where}, all logits 0", hint)
    margin = torch.rand(shape, generator=g)
    expect_close(call(fn, 1 + margin, -1 - margin), torch.tensor(0.0),
                 f"{where}, real logits >= 1 and fake logits <= -1", "past the margin a patch costs nothing: " + hint)


# ---------------------------------------------------------------------------------------------------------
# Exercise 5: VQGAN's adaptive weight of the adversarial term, eq. 7.
# ---------------------------------------------------------------------------------------------------------

def _tiny_decoder_losses(seed: int, rec_scale: float = 1.0,
                         g_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rec_loss, g_loss, last_layer) from a fresh graph: a one-layer "decoder" whose weight plays the part of
    `decoder.conv_out.weight`, an L1 reconstruction loss, and a linear "discriminator" scoring the output."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 8, generator=g)                     # (B, D): the decoder's last features
    last_layer = torch.randn(3, 8, generator=g).requires_grad_()  # (C, D): W
    target, critic = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    x_hat = torch.tanh(features @ last_layer.T)                   # (B, C): the reconstruction
    rec_loss = rec_scale * (x_hat - target).abs().mean()
    g_loss = -g_scale * (critic * x_hat).mean()                   # minus the discriminator's score
    return rec_loss, g_loss, last_layer


def check_adaptive_weight(fn: Callable) -> None:
    """fn(rec_loss, g_loss, last_layer, disc_weight=0.5) -> disc_weight * clamp(||grad rec|| / (||grad g|| + 1e-4),
    0, 1e4), detached."""
    hint = ("lambda = disc_weight * clamp(||grad_W rec_loss|| / (||grad_W g_loss|| + 1e-4), 0, 1e4), with both "
            "gradients from torch.autograd.grad(loss, last_layer, retain_graph=True), returned .detach()ed.")
    cases = [("a typical pair of losses", dict(), ()),
             ("disc_weight = 0.8", dict(), (0.8,)),
             ("a huge reconstruction gradient against a tiny adversarial one (the clamp at 1e4)",
              dict(rec_scale=100.0, g_scale=1e-6), ()),
             ("an adversarial loss whose gradient is zero (the 1e-4 in the denominator)", dict(g_scale=0.0), ())]
    for seed, (where, scales, disc_weight_arg) in enumerate(cases, start=27):   # () tests the default, 0.5
        where = f"adaptive weight for {where}"
        rec_loss, g_loss, last_layer = _tiny_decoder_losses(seed, **scales)
        rec_norm = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0].norm()
        g_norm = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].norm()
        weight = disc_weight_arg[0] if disc_weight_arg else 0.5
        expected = adaptive_weight(rec_loss, g_loss, last_layer, *disc_weight_arg)

        rec_loss, g_loss, last_layer = _tiny_decoder_losses(seed, **scales)       # a fresh graph for the learner
        got = call(fn, rec_loss, g_loss, last_layer, *disc_weight_arg)
        expect_close(got, expected, where, hint, rtol=1e-5,
                     mistakes={"forget the clamp at 1e4": weight * rec_norm / (g_norm + 1e-4),
                               "clamp after multiplying by disc_weight (clamp the ratio, then scale it)":
                               (weight * rec_norm / (g_norm + 1e-4)).clamp(0, ADAPTIVE_WEIGHT_MAX),
                               "forget the 1e-4 in the denominator":
                               weight * (rec_norm / g_norm).clamp(0, ADAPTIVE_WEIGHT_MAX),
                               "divide the other way round (||grad g_loss|| / ||grad rec_loss||)":
                               weight * (g_norm / (rec_norm + 1e-4)).clamp(0, ADAPTIVE_WEIGHT_MAX),
                               "use squared norms":
                               weight * (rec_norm**2 / (g_norm**2 + 1e-4)).clamp(0, ADAPTIVE_WEIGHT_MAX)})
        if got.requires_grad:
            raise AssertionError(f"{where}: the weight still requires grad, so the training step would "
                                 f"backpropagate through it.\n  Hint: return the weight .detach()ed; it is a "
                                 f"number that balances two losses, not something to train.")
        if last_layer.grad is not None:
            raise AssertionError(f"{where}: last_layer.grad was written ({preview(last_layer.grad)}), so the "
                                 f"optimizer would see these gradients too.\n  Hint: use torch.autograd.grad, which "
                                 f"returns the gradient instead of accumulating it into .grad as .backward() does.")
        try:
            (rec_loss + got * g_loss).backward()
        except RuntimeError as e:
            raise AssertionError(f"{where}: after your function, backpropagating through rec_loss + lambda * g_loss "
                                 f"failed: {e}\n  Hint: pass retain_graph=True to both torch.autograd.grad calls; "
                                 f"the training step still needs the graph.") from None


# ---------------------------------------------------------------------------------------------------------
# Exercise 6: PSNR for pixels in [-1, 1].
# ---------------------------------------------------------------------------------------------------------

def check_psnr(fn: Callable) -> None:
    """fn(x, x_hat) -> (B,) 10 log10(4 / MSE), x_hat clamped to [-1, 1] and the MSE floored at 1e-12."""
    hint = ("PSNR = 10 * log10(4 / MSE) per image: the peak-to-peak range of [-1, 1] is 2, so peak^2 = 4; "
            "MSE = mean over C, H, W of (x - x_hat.clamp(-1, 1))^2, floored at 1e-12. Shape (B,).")
    g = torch.Generator().manual_seed(31)
    x = 2 * torch.rand(4, 3, 8, 8, generator=g) - 1                                  # (B, C, H, W) in [-1, 1]
    noise_levels = [0.01, 0.1, 0.3, 1.0]                                             # one quality per image
    sigma = torch.tensor(noise_levels).reshape(4, 1, 1, 1)                           # (B, 1, 1, 1)
    x_hat = x + sigma * torch.randn(x.shape, generator=g)                            # partly outside [-1, 1]
    mse = (x - x_hat.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))                        # (B,)
    mse_unclamped = (x - x_hat).pow(2).mean(dim=(1, 2, 3))                           # (B,)
    where = f"PSNR of images of shape {tuple(x.shape)} at noise levels {noise_levels}"
    expect_close(call(fn, x, x_hat), psnr(x, x_hat), where, hint, atol=1e-3,
                 mistakes={"use a peak of 1 (pixels in [0, 1]) instead of [-1, 1]'s 2": 10 * torch.log10(1 / mse),
                           "forget to clamp x_hat to [-1, 1]": 10 * torch.log10(4 / mse_unclamped),
                           "take 20 log10 of peak^2 / MSE (20 log10 goes with peak / RMSE)":
                           20 * torch.log10(4 / mse),
                           "use the natural logarithm instead of log10": 10 * torch.log(4 / mse),
                           "average the MSE over the whole batch": (10 * torch.log10(4 / mse.mean())).expand(4)})

    # Golden values on a mid-grey image (all pixels 0): an error of 0.1 everywhere, a value of 2 clipped to 1, no error.
    grey = torch.zeros(3, 1, 4, 4)
    x_hat = torch.tensor([0.1, 2.0, 0.0]).reshape(3, 1, 1, 1).expand(grey.shape)
    expected = torch.tensor([10 * math.log10(400), 10 * math.log10(4), 10 * math.log10(4e12)])   # dB
    expect_close(call(fn, grey, x_hat), expected,
                 "PSNR of a grey image (all 0) reconstructed as 0.1, as 2.0 (clipped to 1) and exactly",
                 "MSE 0.01 gives 10 log10(4 / 0.01) = 26.02 dB; x_hat = 2 is clipped to 1, giving 6.02 dB; a perfect "
                 "reconstruction has its MSE floored at 1e-12 and gives 126.02 dB. " + hint, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# Build-along exercises 7 and 8: the learner's residual block and training loss inside a real autoencoder.
# ---------------------------------------------------------------------------------------------------------

# Floors and bands, measured with buildalong_autoencoder's run (100 steps) at seeds 0, 1, 2 (the check uses 0):
# exercise 7 (L2 pixel loss): the reference block reaches 19.81 / 19.92 / 19.85 dB, a block that detaches its
#   input 15.56 / 15.43 dB; a decoder that outputs black scores 15.17 dB on these scenes.
# exercise 8 (L1, kl_weight 0.05): the reference loss reaches 17.90 / 18.27 / 17.88 dB with 0.21 / 0.20 / 0.21
#   nats of KL per latent element; with the KL term detached (so it regularises nothing) 2.26 / 4.02 nats;
#   with the reconstruction detached the decoder never learns (6.6 dB) and the loss does not fall.
RESBLOCK_PSNR_FLOOR = 17.5      # dB on 64 held-out scenes
VAE_PSNR_FLOOR = 16.5           # dB
VAE_KL_WEIGHT = 0.05            # LDM's is 1e-6; 0.05 lets the KL shape the posterior within 100 steps
KL_PER_ELEMENT_BAND = (0.02, 0.8)   # nats per latent element after training: near the prior, yet informative
LOSS_FALL = 0.5                 # the mean loss of the last 10 steps must be below this share of the first 10's

HINT_RESBLOCK = ("h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))); return shortcut + h, where shortcut is "
                 "conv_shortcut(x) when in_channels != out_channels and x itself otherwise. norm1 = GroupNorm(groups, "
                 "in_channels, eps=eps), conv1 = Conv2d(in_channels, out_channels, 3, padding=1), norm2 = "
                 "GroupNorm(groups, out_channels, eps=eps), conv2 = Conv2d(out_channels, out_channels, 3, padding=1), "
                 "conv_shortcut = Conv2d(in_channels, out_channels, 1) or None.")
HINT_VAE = ("moments = model.encoder(x), then model.quant_conv(moments) if it is not None; mean, logvar = "
            "moments.chunk(2, dim=1); logvar = logvar.clamp(*LOGVAR_RANGE); z = reparameterize(mean, logvar, eps); "
            "x_hat = model.decode(z); loss = (x - x_hat).abs().mean() + kl_weight * gaussian_kl(mean, logvar).mean() "
            "/ x[0].numel()   (x[0].numel() = C * H * W).")
HINT_NO_GRADIENT = ("something in your code stops the gradient: a .detach(), .data, .item(), torch.no_grad() or a "
                    "tensor rebuilt with torch.tensor(...) on the way from the weights to the loss.")

def _train(model: nn.Module, objective, what: str) -> tuple[nn.Module, list[float]]:
    """run.train_briefly, with whatever the learner's code raises in training turned into a failure message."""
    try:
        model, losses, _ = run.train_briefly(model, objective, what)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as e:                  # a NaN loss (minidiff's TrainingError), or an error in backward
        raise AssertionError(f"training {what}: stopped at an error: {type(e).__name__}: {str(e).splitlines()[0]}\n"
                             f"  Hint: the unit comparisons passed, so look at what differs in training: the "
                             f"backward pass, and inputs of other sizes. {HINT_NO_GRADIENT}") from None
    return model, losses


def _expect_loss_fell(losses: list[float], what: str, hint: str) -> None:
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    if not last < LOSS_FALL * first:
        raise AssertionError(f"training {what}: the loss did not fall: {first:.4f} over the first 10 steps, "
                             f"{last:.4f} over the last 10 (a working implementation ends below {LOSS_FALL:g} times "
                             f"the start).\n  Hint: {hint}")


def _expect_floor(value: float, floor: float, what: str, hint: str, diagnosis: str = "") -> None:
    """checking.expect_floor, with what the run showed (`diagnosis`, whole lines) between the numbers and the hint."""
    try:
        expect_floor(value, floor, what, hint)
    except AssertionError as e:
        first, _, rest = str(e).partition("\n")
        raise AssertionError(f"{first}\n{diagnosis}{rest}") from None


# Exercise 7: the residual block.

class _NoTimestep(nn.Module):
    """Seats a learner's block where minidiff's ResBlock was: minidiff's mid block also passes it temb=None."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.block(x)


def _reference_block(in_channels: int, out_channels: int, groups: int, seed: int) -> ResBlock:
    """minidiff's ResBlock without a timestep, every weight moved off its initial value (GroupNorm's scale 1 and
    shift 0 would hide a missing or misplaced normalisation)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        block = ResBlock(in_channels, out_channels, None, groups)
        with torch.no_grad():
            for parameter in block.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape))
    return block


def _make_block(cls: type, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6) -> nn.Module:
    block = call(cls, in_channels, out_channels, groups, eps,
                 hint="ResBlock(in_channels, out_channels, groups, eps) creates the layers in __init__ (after "
                      "super().__init__()) and computes nothing yet.")
    if not isinstance(block, nn.Module):
        raise AssertionError(f"ResBlock({in_channels}, {out_channels}, {groups}, {eps}) is a "
                             f"{type(block).__name__}, not a torch.nn.Module.\n  Hint: write `class ResBlock"
                             f"(nn.Module)` and call super().__init__() first in __init__.")
    return block


def _copy_weights(block: nn.Module, reference: nn.Module, where: str) -> None:
    """Load the reference's weights into the learner's block, or say which names or shapes differ."""
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in block.state_dict().items()}
    if got != expected:
        missing = [f"{name} {shape}" for name, shape in expected.items() if name not in got]
        unexpected = [f"{name} {shape}" for name, shape in got.items() if name not in expected]
        wrong = [f"{name}: expected {shape}, got {got[name]}" for name, shape in expected.items()
                 if name in got and got[name] != shape]
        details = "".join(f"  {label}: {', '.join(items)}\n" for label, items in
                          (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items)
        raise AssertionError(f"{where}: the parameter names or shapes differ from minidiff's ResBlock, so its "
                             f"weights cannot be copied into yours.\n{details}"
                             f"  Hint: name the layers norm1, conv1, norm2, conv2 and conv_shortcut (None when the "
                             f"channels do not change), as attributes of the block. {HINT_RESBLOCK}")
    block.load_state_dict(reference.state_dict())


def _block_mistakes(reference: ResBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What plausible mistakes give, computed with the reference's layers."""
    r = reference
    shortcut = x if r.conv_shortcut is None else r.conv_shortcut(x)
    h = r.conv1(F.silu(r.norm1(x)))
    main = r.conv2(F.silu(r.norm2(h)))
    relu_main = r.conv2(F.relu(r.norm2(r.conv1(F.relu(r.norm1(x))))))
    silu_after_conv = F.silu(r.conv2(r.norm2(F.silu(r.conv1(r.norm1(x))))))      # norm, conv, SiLU
    return {"leave out the residual connection (return the main branch alone)": main,
            "use ReLU where SiLU belongs": shortcut + relu_main,
            "apply SiLU after the convolutions instead of between normalisation and convolution":
            shortcut + silu_after_conv,
            "leave out the second normalisation": shortcut + r.conv2(F.silu(h)),
            "leave out the activations": shortcut + r.conv2(r.norm2(r.conv1(r.norm1(x))))}


def _list(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


@build_along
def check_ResBlock(cls: type) -> None:
    """cls(in_channels, out_channels, groups, eps): (B, C_in, H, W) -> (B, C_out, H, W), conv2(SiLU(norm2(conv1(
    SiLU(norm1(x)))))) + shortcut(x). Unit comparisons with minidiff's ResBlock on copied weights; then every ResBlock
    of a tiny autoencoder replaced by the learner's, trained 100 steps: held-out PSNR >= RESBLOCK_PSNR_FLOOR, every
    learner block learnt."""
    g = torch.Generator().manual_seed(41)
    for seed, (c_in, c_out) in enumerate([(8, 16), (16, 16)], start=42):
        where = f"ResBlock({c_in}, {c_out}, groups=4)"
        block = _make_block(cls, c_in, c_out, 4)
        reference = _reference_block(c_in, c_out, 4, seed)
        _copy_weights(block, reference, where)
        x = torch.randn(2, c_in, 6, 6, generator=g)                                   # (B, C_in, H, W)
        with torch.no_grad():
            got = call(block.forward, x, hint="for in_channels != out_channels the input must go through "
                                                "conv_shortcut before it is added. " + HINT_RESBLOCK)
            expected, mistakes = reference(x), _block_mistakes(reference, x)
        expect_close(got, expected, f"{where} on x of shape {tuple(x.shape)}, minidiff's weights copied in",
                     HINT_RESBLOCK, mistakes=mistakes)

    # The whole autoencoder with every residual block replaced by the learner's, on the same weights.
    reference_model = run.tiny_autoencoder(seed=0)
    model = copy.deepcopy(reference_model)

    def seat(old: ResBlock) -> nn.Module:
        block = _make_block(cls, old.norm1.num_channels, old.conv1.out_channels, old.norm1.num_groups, old.norm1.eps)
        _copy_weights(block, old, f"ResBlock({old.norm1.num_channels}, {old.conv1.out_channels})")
        return _NoTimestep(block)

    count = replace_modules(model, ResBlock, seat)
    images = run.shapes_images("validation")                                           # (64, 3, 16, 16)
    with torch.no_grad():
        got = call(lambda x: model(x, sample_posterior=False)[0], images[:8], hint=HINT_RESBLOCK)
        expected = reference_model(images[:8], sample_posterior=False)[0]
    expect_close(got, expected, f"a tiny autoencoder with its {count} residual blocks replaced by yours (minidiff's "
                 f"weights copied in), reconstructing 8 Shapes scenes", HINT_RESBLOCK, atol=1e-4)

    # Training: your blocks must learn, and the autoencoder with them must reconstruct held-out scenes.
    initial = snapshot(model)
    objective = AutoencoderObjective(AutoencoderLossConfig(pixel_loss="l2", perceptual_weight=0.0, disc_weight=0.0))
    what = f"a tiny autoencoder built with your ResBlock ({count} blocks)"
    model, losses = _train(model, objective, what)
    _expect_loss_fell(losses, what, HINT_RESBLOCK)
    value = run.reconstruction_psnr(model, images)
    print(f"      held-out reconstruction PSNR: {value:.2f} dB (floor {RESBLOCK_PSNR_FLOOR:g})", flush=True)
    frozen = unmoved_weights(model, _NoTimestep, initial)   # {wrapper's name: the learner block's unmoved weights}
    example = next(iter(frozen), None)
    diagnosis = (f"  In {len(frozen)} of your {count} blocks, weights ended training exactly where they started, so "
                 f"no gradient reached them (in {example}: {_list(frozen[example])}).\n" if frozen else "")
    _expect_floor(value, RESBLOCK_PSNR_FLOOR, f"training {what}: reconstruction PSNR (dB) of 64 held-out scenes",
                  (HINT_NO_GRADIENT + " " if frozen else "") + HINT_RESBLOCK, diagnosis)
    if frozen:
        raise AssertionError(f"training {what}: in {len(frozen)} of your {count} blocks some weights did not learn: "
                             f"they ended training exactly where they started (in {example}: "
                             f"{_list(frozen[example])}). The autoencoder still reached {value:.2f} dB through its "
                             f"other layers.\n  Hint: {HINT_NO_GRADIENT} A block's output can be right while part of "
                             f"it is cut off from the loss.")


# Exercise 8: the training loss.

def _reference_vae_loss(model: Autoencoder, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """The terms of minidiff's autoencoder loss (without perceptual and GAN terms) for given noise, and the pieces
    that plausible mistakes use."""
    posterior = model.encode(x)                                                   # q(z | x), (B, L, h, w)
    z = posterior.mean + posterior.std * eps                                      # (B, L, h, w)
    x_hat = model.decode(z)                                                       # (B, C, H, W)
    skipped_quant = DiagonalGaussian(model.encoder(x))
    return {"rec": pixel_loss(x, x_hat, "l1"), "kl": posterior.kl(),             # 0-d, (B,)
            "rec_l2": pixel_loss(x, x_hat, "l2"), "rec_sum": (x - x_hat).abs().sum(),
            "rec_mode": pixel_loss(x, model.decode(posterior.mean), "l1"),
            "rec_no_quant": pixel_loss(x, model.decode(skipped_quant.mean + skipped_quant.std * eps), "l1"),
            "pixels": torch.tensor(float(x[0].numel())), "elements": torch.tensor(float(posterior.mean[0].numel()))}


class _LearnerLoss:
    """An objective for minidiff's loop whose loss is the learner's vae_training_loss, with the noise drawn from the
    step's generator; Adam's betas are the autoencoder's (LDM/VQGAN's (0.5, 0.9))."""
    betas = AutoencoderObjective.betas

    def __init__(self, fn: Callable, kl_weight: float):
        self.fn, self.kl_weight = fn, kl_weight

    def loss(self, model: Autoencoder, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = model.config
        eps = torch.randn(x.shape[0], c.latent_channels, x.shape[2] // c.factor, x.shape[3] // c.factor,
                          generator=generator)                                    # (B, L, h, w)
        return call(self.fn, model, x, eps, self.kl_weight, hint=HINT_VAE)


def _vae_unit_comparisons(fn: Callable) -> None:
    """The loss's value against minidiff's terms on one model, batch and noise: without and with the KL."""
    model = run.tiny_autoencoder(seed=3)
    x = run.shapes_images("validation")[:8]                                       # (8, 3, 16, 16)
    c = model.config
    eps = torch.randn(8, c.latent_channels, 16 // c.factor, 16 // c.factor,
                      generator=torch.Generator().manual_seed(43))                # (B, L, h, w)
    with torch.no_grad():
        ref = _reference_vae_loss(model, x, eps)
    where = f"vae_training_loss on a tiny autoencoder, x of shape {tuple(x.shape)}, eps of shape {tuple(eps.shape)}"

    got = call(fn, model, x, eps, 0.0, hint=HINT_VAE)
    expect_close(got, ref["rec"], f"{where}, kl_weight = 0 (the reconstruction term alone)", HINT_VAE, rtol=1e-4,
                 mistakes={"use the squared error (L2) where LDM's is the absolute error (L1)": ref["rec_l2"],
                           "sum the absolute error instead of averaging it": ref["rec_sum"],
                           "decode the posterior mean instead of the sample z (the noise eps unused)":
                           ref["rec_mode"],
                           "skip model.quant_conv between the encoder and the split": ref["rec_no_quant"]})
    if not got.requires_grad:
        raise AssertionError(f"{where}: the loss does not require grad, so training could not backpropagate "
                             f"through it.\n  Hint: return a tensor computed from the model's outputs (not .item() "
                             f"or a float). {HINT_NO_GRADIENT}")

    weight = 1.0
    kl = ref["kl"]                                                                # (B,)
    expect_close(call(fn, model, x, eps, weight, hint=HINT_VAE), ref["rec"] + weight * kl.mean() / ref["pixels"],
                 f"{where}, kl_weight = {weight:g}", HINT_VAE, rtol=1e-4,
                 mistakes={"forget to divide the KL by the number of values in one image (C * H * W)":
                           ref["rec"] + weight * kl.mean(),
                           "divide the KL by the number of latent elements (L * h * w) instead of the image's values":
                           ref["rec"] + weight * kl.mean() / ref["elements"],
                           "sum the KL over the batch instead of averaging it":
                           ref["rec"] + weight * kl.sum() / ref["pixels"],
                           "subtract the KL term instead of adding it": ref["rec"] - weight * kl.mean() / ref["pixels"],
                           "leave out kl_weight": ref["rec"] + kl.mean() / ref["pixels"]})


def _own_exercises_note(fn: Callable) -> str:
    """Lines for a failure message, naming the learner's exercise 1 or 2 that `fn` calls (found in its module) when
    that does not pass its own check: the bug may be there rather than in `fn`."""
    module_globals = getattr(fn, "__globals__", {})
    names = getattr(getattr(fn, "__code__", None), "co_names", ())
    note = ""
    for name, check in (("reparameterize", check_reparameterize), ("gaussian_kl", check_gaussian_kl)):
        dependency = module_globals.get(name)
        if name not in names or not callable(dependency):
            continue
        try:
            check(dependency)
        except AssertionError as e:
            note += (f"  Your {fn.__name__} calls your {name}, which does not pass its own exercise yet: fix that "
                     f"first ({str(e).splitlines()[0].rstrip('.')}).\n")
    return note


@build_along
def check_vae_training_loss(fn: Callable) -> None:
    """fn(model, x, eps, kl_weight) -> mean |x - x_hat| + kl_weight * mean_B KL / (C H W), z = mean + sigma eps.
    Unit comparisons with minidiff's autoencoder_loss terms; then a tiny autoencoder trained 100 steps with fn
    (kl_weight VAE_KL_WEIGHT): the loss falls, held-out PSNR >= VAE_PSNR_FLOOR, KL per latent element in band."""
    try:
        _vae_unit_comparisons(fn)
    except NotImplementedYet:
        raise
    except AssertionError as e:
        note = _own_exercises_note(fn)
        if not note:
            raise
        first, _, rest = str(e).partition("\n")
        raise AssertionError(f"{first}\n{note}{rest}") from None

    # Training with the learner's loss: the reconstruction must improve, the posterior stay near the prior.
    what = f"a tiny autoencoder with your vae_training_loss (kl_weight {VAE_KL_WEIGHT:g})"
    model, losses = _train(run.tiny_autoencoder(seed=0), _LearnerLoss(fn, VAE_KL_WEIGHT), what)
    _expect_loss_fell(losses, what, "the unit comparisons passed, so the loss has the right value but does not "
                                    "train the autoencoder: " + HINT_NO_GRADIENT + " " + HINT_VAE)
    held_out = run.shapes_images("validation")                                    # (64, 3, 16, 16)
    value = run.reconstruction_psnr(model, held_out)
    statistics = run.posterior_statistics(model, held_out)
    kl_per_element = statistics["kl_per_element"]
    print(f"      held-out reconstruction PSNR: {value:.2f} dB (floor {VAE_PSNR_FLOOR:g}); KL per latent element "
          f"{kl_per_element:.3f} nats (band {KL_PER_ELEMENT_BAND[0]:g} to {KL_PER_ELEMENT_BAND[1]:g}); posterior "
          f"sigma {statistics['sigma']:.3f}", flush=True)
    _expect_floor(value, VAE_PSNR_FLOOR, f"training {what}: reconstruction PSNR (dB) of 64 held-out scenes",
                  "the reconstruction term trains the encoder and decoder: it must be computed from model.decode(z) "
                  "with z from your reparameterize. " + HINT_VAE)
    low, high = KL_PER_ELEMENT_BAND
    if not low <= kl_per_element <= high:
        side = (f"above {high:g}: the KL term did not pull the posterior towards N(0, I)" if kl_per_element > high else
                f"below {low:g}: the posterior has collapsed onto the prior and carries little about the image")
        raise AssertionError(f"training {what}: the KL from the posterior to the prior, per latent element, is "
                             f"{kl_per_element:.3f} nats, {side} (posterior sigma {statistics['sigma']:.3f}, mean "
                             f"RMS {statistics['mean_rms']:.3f}; a working loss ends near 0.2).\n"
                             f"  Hint: the KL term must reach the encoder: compute it from the mean and logvar the "
                             f"encoder gave, with gradients. {HINT_VAE}")


# ---------------------------------------------------------------------------------------------------------
# Running every check.
# ---------------------------------------------------------------------------------------------------------

TITLE = "Chapter 2 exercises"
CHECKS: dict[str, Check] = {
    "reparameterize": check_reparameterize,
    "gaussian_kl": check_gaussian_kl,
    "latent_scale": check_latent_scale,
    "hinge_discriminator_loss": check_hinge_discriminator_loss,
    "adaptive_weight": check_adaptive_weight,
    "psnr": check_psnr,
    "ResBlock": check_ResBlock,
    "vae_training_loss": check_vae_training_loss,
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch02", CHECKS, TITLE)
