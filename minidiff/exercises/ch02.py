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

The first three references live in `minidiff.models.autoencoder`, the last three in `minidiff.training.autoencoder`.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from minidiff.exercises.checking import (Check, call, command_line, expect_close, expect_float, expect_pair,
                                          preview, report)
from minidiff.models.autoencoder import LOGVAR_RANGE, DiagonalGaussian, fit_latent_scaling
from minidiff.training.autoencoder import ADAPTIVE_WEIGHT_MAX, adaptive_weight, hinge_discriminator_loss, psnr


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
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch02", CHECKS, TITLE)
