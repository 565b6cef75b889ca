"""A time-conditioned U-Net: the denoising network of DDPM.

Paper: Ho et al. 2020, DDPM (arXiv:2006.11239), appendix B; backbone from PixelCNN++ (arXiv:1701.05517)
and Wide ResNets. The network maps (x_t, t) -> a prediction with the shape of x_t (eps, x0 or v).

    x_t ─ conv_in ─ [ResBlock (+attention)] x layers ─ downsample ─ ... ─ middle (Res, Attn, Res)
                  │ skip connections: every down output is concatenated into the up path │
    out ─ conv_out ─ SiLU(GroupNorm) ─ [ResBlock (+attention)] x (layers+1) ─ upsample ─ ...

Level i works at resolution H / 2^i; `attention_levels` names the levels that get self-attention
(DDPM's CIFAR-10 model: level 1, i.e. 16x16). The middle block always has attention.
The module names follow diffusers' UNet2DModel closely, so its checkpoints load with a short key map
(see minidiff/weights.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks import (Downsample, MidBlock, ResBlock, SpatialSelfAttention, TimestepEmbedding, Upsample,
                             check_images)


@dataclass
class UNetConfig:
    in_channels: int = 3                    # channels of x_t (3 for RGB, 1 for digits, 4 for SD latents)
    out_channels: int = 3                   # channels of the prediction
    sample_size: int = 32                   # the training resolution (any multiple of 2^(levels-1) works)
    block_channels: tuple[int, ...] = (128, 256, 256, 256)  # width of each resolution level
    attention_levels: tuple[int, ...] = (1,)  # levels with self-attention (level i is at H / 2^i)
    up_attention_levels: tuple[int, ...] | None = None  # up-path levels with attention; None: as on the way down
    layers_per_block: int = 2               # ResBlocks per level on the way down (one more on the way up)
    attention_head_dim: int | None = None   # None: one head as wide as the level (DDPM)
    norm_groups: int = 32                   # GroupNorm groups
    norm_eps: float = 1e-6
    dropout: float = 0.0                    # inside ResBlocks (DDPM CIFAR-10 trained with 0.1)
    flip_sin_to_cos: bool = False           # timestep features: DDPM puts sin first
    freq_shift: float = 1.0                 # DDPM's denominator half-1
    downsample_padding: int = 0             # 0: pad right/bottom then stride-2 conv (DDPM)

    def __post_init__(self):
        self.block_channels = tuple(self.block_channels)
        self.attention_levels = tuple(self.attention_levels)
        if self.up_attention_levels is not None:
            self.up_attention_levels = tuple(self.up_attention_levels)
        bad = [lvl for lvl in self.attention_levels + self.up_levels if not 0 <= lvl < len(self.block_channels)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range: the model has levels 0..{len(self.block_channels) - 1}")
        bad = [c for c in self.block_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"block_channels {bad} are not divisible by norm_groups={self.norm_groups}; "
                             f"pick widths that are multiples of it")

    @property
    def up_levels(self) -> tuple[int, ...]:
        """The levels of the up path that have attention."""
        return self.attention_levels if self.up_attention_levels is None else self.up_attention_levels

    @classmethod
    def toy(cls, **overrides) -> "UNetConfig":
        """1-channel 16x16 digits on a laptop CPU: 686,769 parameters.

        Narrow on purpose: on 2 CPU cores training is compute-bound, and in a 5-minute budget this width, trained
        for twice the steps, drew more recognizable digits than the wider (32, 64, 64) (benchmarks/RESULTS.md)."""
        defaults = dict(in_channels=1, out_channels=1, sample_size=16, block_channels=(16, 32, 64),
                        attention_levels=(2,), layers_per_block=1, norm_groups=8, dropout=0.0)
        return cls(**{**defaults, **overrides})

    @classmethod
    def shapes_toy(cls, **overrides) -> "UNetConfig":
        """RGB Shapes scenes at 32x32 in pixel space (Chapter 2's baseline for latent diffusion)."""
        defaults = dict(in_channels=3, out_channels=3, sample_size=32, block_channels=(16, 32, 64),
                        attention_levels=(2,), layers_per_block=1, norm_groups=8, dropout=0.0)
        return cls(**{**defaults, **overrides})

    @classmethod
    def latent_toy(cls, **overrides) -> "UNetConfig":
        """The 8x8x4 latents of the toy autoencoder (Shapes 32x32, f=4): latent diffusion on a laptop CPU.

        Its training step costs about a quarter of the FLOPs of `shapes_toy`'s on the pixels (benchmarks/RESULTS.md)."""
        defaults = dict(in_channels=4, out_channels=4, sample_size=8, block_channels=(32, 64),
                        attention_levels=(1,), layers_per_block=2, norm_groups=8, dropout=0.0)
        return cls(**{**defaults, **overrides})

    @classmethod
    def ddpm_cifar10(cls, **overrides) -> "UNetConfig":
        """Ho et al.'s CIFAR-10 model: 35,746,307 parameters (diffusers' google/ddpm-cifar10-32 layout)."""
        defaults = dict(in_channels=3, out_channels=3, sample_size=32, block_channels=(128, 256, 256, 256),
                        attention_levels=(1,), layers_per_block=2, norm_groups=32, dropout=0.1)
        return cls(**{**defaults, **overrides})


class UNetLevel(nn.Module):
    """One resolution level of the down or up path: ResBlocks, optional attention, optional resampling."""

    def __init__(self, in_channels: list[int], out_channels: int, temb_dim: int, config: UNetConfig,
                 attention: bool, resample: nn.Module | None):
        super().__init__()
        c = config
        self.resnets = nn.ModuleList(
            ResBlock(cin, out_channels, temb_dim, c.norm_groups, c.norm_eps, c.dropout) for cin in in_channels)
        self.attentions = nn.ModuleList(
            SpatialSelfAttention(out_channels, c.attention_head_dim, c.norm_groups, c.norm_eps)
            for _ in in_channels) if attention else None
        self.resample = resample


class UNet(nn.Module):
    """forward(x_t (B, C_in, H, W), t (B,) or scalar) -> (B, C_out, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch = c.block_channels
        temb_dim = 4 * ch[0]
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim, c.flip_sin_to_cos, c.freq_shift)
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        n = len(ch)

        # Down path: level i takes ch[i-1] (ch[0] for level 0) to ch[i]; all but the last level downsample.
        self.down_blocks = nn.ModuleList()
        skip_channels = [ch[0]]  # channels of every tensor pushed onto the skip stack, conv_in's first
        for i, width in enumerate(ch):
            cin = ch[max(i - 1, 0)]
            last = i == n - 1
            level = UNetLevel([cin] + [width] * (c.layers_per_block - 1), width, temb_dim, c, i in c.attention_levels,
                              None if last else Downsample(width, c.downsample_padding))
            self.down_blocks.append(level)
            skip_channels += [width] * c.layers_per_block + ([] if last else [width])

        self.mid_block = MidBlock(ch[-1], temb_dim, c.norm_groups, c.norm_eps, c.dropout, c.attention_head_dim)

        # Up path: mirror image; each ResBlock eats the previous output concatenated with one skip tensor.
        self.up_blocks = nn.ModuleList()
        prev = ch[-1]
        for i, width in enumerate(reversed(ch)):
            level_index = n - 1 - i
            ins = []
            for _ in range(c.layers_per_block + 1):
                ins.append(prev + skip_channels.pop())
                prev = width
            last = level_index == 0
            self.up_blocks.append(UNetLevel(ins, width, temb_dim, c, level_index in c.up_levels,
                                            None if last else Upsample(width)))

        self.conv_norm_out = nn.GroupNorm(c.norm_groups, ch[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_channels) - 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ValueError for inputs the network cannot take."""
        check_images(x, self.config.in_channels, len(self.config.block_channels) - 1, "U-Net")

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor:
        self.check_input(x)
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.as_tensor(t, device=x.device).reshape(1)
        temb = self.time_embedding(t.to(x.device).expand(x.shape[0]))   # (B, 4*ch0)

        h = self.conv_in(x)                                               # (B, ch0, H, W)
        skips = [h]
        for level in self.down_blocks:
            for j, resnet in enumerate(level.resnets):
                h = resnet(h, temb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)                                     # (B, C, H/2, W/2)
                skips.append(h)

        h = self.mid_block(h, temb)

        for level in self.up_blocks:
            for j, resnet in enumerate(level.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), temb)      # (B, C + C_skip, H, W) -> (B, C, H, W)
                if level.attentions is not None:
                    h = level.attentions[j](h)
            if level.resample is not None:
                h = level.resample(h)                                     # (B, C, 2H, 2W)

        return self.conv_out(F.silu(self.conv_norm_out(h)))              # (B, C_out, H, W)
