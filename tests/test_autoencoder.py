"""The autoencoder of Chapter 2: shapes, the posterior's maths, latent scaling, the losses, clear errors."""
import math

import pytest
import torch

from minidiff.models import PRESETS, count_parameters
from minidiff.models.autoencoder import LOGVAR_RANGE, Autoencoder, AutoencoderConfig, DiagonalGaussian, fit_latent_scaling
from minidiff.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from minidiff.models.perceptual import PerceptualConfig, PerceptualNet, perceptual_distance
from minidiff.training.autoencoder import adaptive_weight, hinge_discriminator_loss, pixel_loss, psnr

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(block_channels=(8, 16), layers_per_block=1, latent_channels=3, norm_groups=4)


@pytest.mark.parametrize("name,count", [("sd-vae", 83_653_863), ("sd3-vae", 83_819_683), ("patchgan-ldm", 2_765_633)])
def test_full_presets_have_the_published_parameter_counts(name, count):
    assert count_parameters(name) == count
    assert PRESETS[name][2] in (count, None)


@pytest.mark.parametrize("factor_levels,latent,size", [(2, 4, 32), (3, 4, 32), (4, 16, 64)])
def test_encode_decode_shapes(factor_levels, latent, size):
    config = AutoencoderConfig(block_channels=(8,) * factor_levels, layers_per_block=1, latent_channels=latent,
                               norm_groups=4)
    model = Autoencoder(config).eval()
    x = torch.randn(2, 3, size, size)
    posterior = model.encode(x)
    f = 2 ** (factor_levels - 1)
    assert config.factor == f
    assert posterior.mean.shape == posterior.logvar.shape == (2, latent, size // f, size // f)
    x_hat, _ = model(x)
    assert x_hat.shape == x.shape


def test_toy_preset_is_f4_with_4_channels():
    config = AutoencoderConfig.toy()
    assert (config.factor, config.latent_channels, config.sample_size) == (4, 4, 32)


def test_kl_matches_the_closed_form_and_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g) * 0.5
    q = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    closed = (0.5 * (mean ** 2 + logvar.exp() - 1 - logvar)).sum(dim=(1, 2, 3))
    assert torch.allclose(q.kl(), closed, atol=1e-6)
    # KL = E_q[log q(z) - log p(z)], estimated with many reparameterised samples
    z = torch.stack([q.sample(g) for _ in range(20000)])                       # (S, B, C, H, W)
    log_q = -0.5 * (((z - mean) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z ** 2 + math.log(2 * math.pi))
    estimate = (log_q - log_p).sum(dim=(2, 3, 4)).mean(0)
    assert torch.allclose(estimate, closed, rtol=0.05, atol=0.05)
    zero = DiagonalGaussian(torch.zeros(1, 4, 3, 3))
    assert zero.kl().item() == 0.0


def test_reparameterised_sample_has_the_posterior_statistics_and_gradients():
    moments = torch.tensor([2.0, math.log(0.25)]).reshape(1, 2, 1, 1).expand(4000, 2, 1, 1).clone().requires_grad_(True)
    q = DiagonalGaussian(moments)
    z = q.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.03 and abs(z.std().item() - 0.5) < 0.03
    z.sum().backward()
    assert moments.grad is not None and moments.grad[:, 0].abs().sum() > 0   # gradients reach the mean


def test_logvar_is_clamped_as_in_ldm():
    q = DiagonalGaussian(torch.tensor([0.0, 100.0]).reshape(1, 2, 1, 1))
    assert q.logvar.item() == LOGVAR_RANGE[1]


def test_latent_scaling_brings_latents_to_unit_variance_and_round_trips():
    z = 3.0 + 5.0 * torch.randn(200, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scale, shift = fit_latent_scaling(z)
    assert shift == 0.0 and scale == pytest.approx(1 / z.double().std().item())
    scale, shift = fit_latent_scaling(z, shift=True)
    assert shift == pytest.approx(z.double().mean().item())
    model = Autoencoder(AutoencoderConfig(**TINY, scaling_factor=scale, shift_factor=shift))
    scaled = model.to_diffusion(z)
    assert scaled.mean().abs() < 1e-3 and scaled.std() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(model.from_diffusion(scaled), z, atol=1e-5)
    with pytest.raises(ValueError, match="all equal"):
        fit_latent_scaling(torch.ones(10, 4, 2, 2))


def test_bad_inputs_are_clear_errors():
    model = Autoencoder(AutoencoderConfig(**TINY))
    with pytest.raises(ValueError, match="not divisible by 2: the autoencoder halves the resolution 1 times"):
        model.encode(torch.randn(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        model.encode(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 3, h, w\)"):
        model.decode(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        AutoencoderConfig(block_channels=(6, 8), norm_groups=4)


def test_hinge_loss_closed_form():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    expected = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.0) / 3)
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected)
    assert hinge_discriminator_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0


def test_adaptive_weight_is_the_gradient_norm_ratio_and_detached():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec = (3.0 * w).sum()            # grad (3, 3): norm 3 sqrt 2
    g = (w ** 2).sum()               # grad (2, 4): norm 2 sqrt 5
    weight = adaptive_weight(rec, g, w, disc_weight=0.5)
    assert weight.item() == pytest.approx(0.5 * 3 * math.sqrt(2) / (2 * math.sqrt(5) + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    flat = adaptive_weight((3.0 * w).sum(), (0.0 * w).sum(), w, disc_weight=1.0)
    assert flat.item() == 1e4         # clamped where the adversarial gradient vanishes


def test_pixel_losses_and_psnr():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full_like(x, 0.2)
    assert pixel_loss(x, y, "l1").item() == pytest.approx(0.2)
    assert pixel_loss(x, y, "l2").item() == pytest.approx(0.04)
    assert torch.allclose(psnr(x, y), torch.full((2,), 10 * math.log10(4 / 0.04)))
    with pytest.raises(ValueError, match="unknown pixel_loss"):
        pixel_loss(x, y, "l3")


def test_patch_discriminator_scores_patches():
    d = PatchDiscriminator(DiscriminatorConfig.toy())
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 6, 6)


def test_perceptual_distance_is_zero_on_identical_images_and_grows_with_damage():
    torch.manual_seed(0)
    net = PerceptualNet(PerceptualConfig()).eval().requires_grad_(False)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert perceptual_distance(net, x, x).abs().max() < 1e-6
    small = perceptual_distance(net, x, x + 0.05 * torch.randn_like(x))
    large = perceptual_distance(net, x, x + 0.5 * torch.randn_like(x))
    assert (large > small).all() and (small > 0).all()


def test_adversarial_training_resumes_exactly(tmp_path):
    """The autoencoder's objective in the one training loop: a run stopped at step 2 and resumed equals a straight
    run, tensor for tensor (model, EMA, both optimizers, discriminator, perceptual net)."""
    from minidiff.training.autoencoder import AutoencoderLossConfig, AutoencoderObjective
    from minidiff.training.checkpoint import load_checkpoint
    from minidiff.training.loop import TrainConfig, train

    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = TrainConfig(steps=4, batch_size=3, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
                         sample_every=2, grad_clip=0.0)

    class Stop(Exception):
        pass

    def stop(ema, step):
        raise Stop

    def run(out, resume=False, on_sample=None):
        torch.manual_seed(0)
        perceptual = PerceptualNet(PerceptualConfig(widths=(4, 8)))
        discriminator = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=1))
        objective = AutoencoderObjective(AutoencoderLossConfig(disc_start=1), perceptual, discriminator)
        return train(Autoencoder(AutoencoderConfig(**TINY)), objective, images, config, out, {}, resume=resume,
                     on_sample=on_sample, progress=False)

    _, _, logs = run(tmp_path / "straight")
    assert "d_loss" not in logs[0] and all("d_loss" in r and "g_loss" in r for r in logs[1:])
    with pytest.raises(Stop):
        run(tmp_path / "split", on_sample=stop)
    run(tmp_path / "split", resume=True)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")
    b, meta = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert meta["step"] == 4 and a.keys() == b.keys()
    assert {k.split(".")[0] for k in a} == {"model", "ema", "optimizer", "discriminator", "d_optimizer", "perceptual"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
