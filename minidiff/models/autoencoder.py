"""The KL-regularised autoencoder of latent diffusion: images <-> a small latent grid.

Paper: Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models (arXiv:2112.10752),
section 3.1 and appendix G; the encoder/decoder come from VQGAN (Esser et al. 2021, arXiv:2012.09841).

    x (B, 3, H, W) ─ Encoder ─ (B, 2L, H/f, W/f) = [mean, logvar] ─ sample z ─ Decoder ─ x_hat (B, 3, H, W)

| code               | paper                                                   |
|--------------------|---------------------------------------------------------|
| `factor`           | f, the downsampling factor, 2^(levels - 1)               |
| `latent_channels`  | c, the latent's channels (4 in SD 1.x/SDXL, 16 in SD3)   |
| `posterior.mean`   | mu(x);  `posterior.logvar`: log sigma^2(x)               |
| `posterior.sample` | z = mu + sigma * eps,  eps ~ N(0, I)  (reparameterisation) |
| `posterior.kl()`   | KL(q(z|x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2) |
| `scaling_factor`   | the scale that brings latents to unit variance (0.18215 for SD 1.x) |
| `shift_factor`     | the mean subtracted first (SD3: 0.0609; SD 1.x: none)    |

The latent that a diffusion model sees is  z_diffusion = (z - shift_factor) * scaling_factor  (`to_diffusion`),
and the decoder gets back  z = z_diffusion / scaling_factor + shift_factor  (`from_diffusion`).

Encoder: conv_in, then per level `layers_per_block` ResBlocks (no timestep) and a stride-2 downsample (all but
the last level), a middle (ResBlock, self-attention, ResBlock), GroupNorm, SiLU, conv_out to 2L channels, and
an optional 1x1 `quant_conv`. Decoder: optional 1x1 `post_quant_conv`, conv_in, the middle, then per level
(widest first) `layers_per_block + 1` ResBlocks and a nearest-neighbour x2 upsample, GroupNorm, SiLU, conv_out.
Module names follow diffusers' AutoencoderKL, so its folders load with a short key map of its own (minidiff/models/autoencoder_diffusers.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks import Downsample, MidBlock, ResBlock, Upsample, check_images

LOGVAR_RANGE = (-30.0, 20.0)   # the posterior's log-variance is clamped to this range, as in LDM and diffusers


@dataclass
class AutoencoderConfig:
    in_channels: int = 3                    # image channels
    out_channels: int = 3
    block_channels: tuple[int, ...] = (128, 256, 512, 512)  # width of each level; f = 2^(levels - 1)
    layers_per_block: int = 2               # ResBlocks per encoder level (the decoder has one more)
    latent_channels: int = 4                # L: channels of z
    norm_groups: int = 32
    norm_eps: float = 1e-6
    use_quant_conv: bool = True             # 1x1 conv after the encoder (SD 1.x); SD3 has none
    use_post_quant_conv: bool = True        # 1x1 conv before the decoder
    scaling_factor: float = 0.18215         # latent scale for diffusion (see fit_latent_scaling)
    shift_factor: float = 0.0               # latent shift for diffusion (SD3: 0.0609)
    sample_size: int = 32                   # training resolution (any multiple of the factor works)

    def __post_init__(self):
        self.block_channels = tuple(self.block_channels)
        bad = [c for c in self.block_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"block_channels {bad} are not divisible by norm_groups={self.norm_groups}; "
                             f"pick widths that are multiples of it")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_channels) - 1)

    @classmethod
    def toy(cls, **overrides) -> "AutoencoderConfig":
        """Shapes at 32x32 on a laptop CPU: f=4, 4 latent channels (8x8x4 latents), 681,911 parameters."""
        defaults = dict(block_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_groups=8,
                        scaling_factor=1.0, sample_size=32)
        return cls(**{**defaults, **overrides})

    @classmethod
    def sd_vae(cls, **overrides) -> "AutoencoderConfig":
        """Stable Diffusion 1.x/2.x (and SDXL's retrained) kl-f8 VAE: 83,653,863 parameters."""
        defaults = dict(block_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        scaling_factor=0.18215, sample_size=512)
        return cls(**{**defaults, **overrides})

    @classmethod
    def sd3_vae(cls, **overrides) -> "AutoencoderConfig":
        """Stable Diffusion 3's VAE: 16 latent channels, no quant convs, 83,819,683 parameters."""
        defaults = dict(block_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305,
                        shift_factor=0.0609, sample_size=1024)
        return cls(**{**defaults, **overrides})


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), from the encoder's (B, 2L, h, w) output split in two."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)                      # (B, L, h, w) each
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps: a sample that gradients flow through (the reparameterisation trick)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over the latent's C, H, W: (B,)."""
        return 0.5 * (self.mean ** 2 + self.std ** 2 - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Level(nn.Module):
    """One resolution level: ResBlocks, then an optional resampling layer (named as in diffusers)."""

    def __init__(self, in_channels: list[int], out_channels: int, config: AutoencoderConfig,
                 resample: nn.Module | None):
        super().__init__()
        c = config
        self.resnets = nn.ModuleList(ResBlock(cin, out_channels, None, c.norm_groups, c.norm_eps) for cin in in_channels)
        self.resample = resample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            h = resnet(h)
        return h if self.resample is None else self.resample(h)


class Encoder(nn.Module):
    """(B, C_in, H, W) -> (B, 2L, H/f, W/f): the posterior's mean and log-variance, stacked on channels."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c, ch = config, config.block_channels
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level([ch[max(i - 1, 0)]] + [width] * (c.layers_per_block - 1), width, c,
                  None if i == len(ch) - 1 else Downsample(width, padding=0))
            for i, width in enumerate(ch))
        self.mid_block = MidBlock(ch[-1], None, c.norm_groups, c.norm_eps)
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, ch[-1], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch[-1], 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)                                              # (B, ch0, H, W)
        for level in self.down_blocks:
            h = level(h)                                                 # halves H, W on all but the last level
        h = self.mid_block(h)                                            # (B, ch[-1], H/f, W/f)
        return self.conv_out(F.silu(self.conv_norm_out(h)))              # (B, 2L, H/f, W/f)


class Decoder(nn.Module):
    """(B, L, h, w) -> (B, C_out, h*f, w*f)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c, ch = config, tuple(reversed(config.block_channels))           # widest level first
        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], None, c.norm_groups, c.norm_eps)
        self.up_blocks = nn.ModuleList(
            Level([ch[max(i - 1, 0)]] + [width] * c.layers_per_block, width, c,
                  None if i == len(ch) - 1 else Upsample(width))
            for i, width in enumerate(ch))
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, ch[-1], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch[-1], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))                              # (B, ch[-1], h, w)
        for level in self.up_blocks:
            h = level(h)                                                 # doubles H, W on all but the last level
        return self.conv_out(F.silu(self.conv_norm_out(h)))              # (B, C_out, H, W)


class Autoencoder(nn.Module):
    """encode(x) -> DiagonalGaussian over z; decode(z) -> x_hat; forward(x) -> (x_hat, posterior).

    x: (B, C_in, H, W) in [-1, 1] with H and W multiples of f; z: (B, L, H/f, W/f).
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None
        self.post_quant_conv = (nn.Conv2d(c.latent_channels, c.latent_channels, 1)
                                if c.use_post_quant_conv else None)

    def check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config.in_channels, len(self.config.block_channels) - 1, "autoencoder")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        self.check_input(x)
        moments = self.encoder(x)                                        # (B, 2L, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        L = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != L:
            raise ValueError(f"expected latents of shape (B, {L}, h, w), got {tuple(z.shape)}")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)                                           # (B, C_out, h*f, w*f)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # Latent scaling: what the diffusion model sees.
    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        """z -> (z - shift) * scale, the latent a diffusion model is trained on (about unit variance)."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def from_diffusion(self, z_diffusion: torch.Tensor) -> torch.Tensor:
        return z_diffusion / self.config.scaling_factor + self.config.shift_factor

    @torch.no_grad()
    def encode_for_diffusion(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images (N, C, H, W) -> scaled posterior means (N, L, H/f, W/f), in batches."""
        return torch.cat([self.to_diffusion(self.encode(x[i:i + batch_size]).mean)
                          for i in range(0, x.shape[0], batch_size)])

    @torch.no_grad()
    def decode_from_diffusion(self, z_diffusion: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents -> images clamped to [-1, 1], in batches."""
        return torch.cat([self.decode(self.from_diffusion(z_diffusion[i:i + batch_size])).clamp(-1, 1)
                          for i in range(0, z_diffusion.shape[0], batch_size)])


def fit_latent_scaling(latents: torch.Tensor, shift: bool = False) -> tuple[float, float]:
    """(scaling_factor, shift_factor) that bring these latents to unit variance (and zero mean, if shift).

    Rombach et al. (section 4.3.2 and appendix G) set scale = 1 / std of the latents of a first batch (the std
    around their mean, though the mean itself is not removed); SD 1.x's 0.18215 is that number for its VAE.
    SD3 also subtracts the mean (shift_factor 0.0609).  latents: (N, L, h, w), unscaled.
    """
    latents = latents.detach().double()
    std = latents.std().item()
    if not std > 0:
        raise ValueError("the latents are all equal; encode real images (not a constant) to fit the scale")
    return 1.0 / std, latents.mean().item() if shift else 0.0
