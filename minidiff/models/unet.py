"""A time-conditioned U-Net: the denoising network of DDPM, and (Chapter 3) of Stable Diffusion.

Paper: Ho et al. 2020, DDPM (arXiv:2006.11239), appendix B; backbone from PixelCNN++ (arXiv:1701.05517)
and Wide ResNets. The network maps (x_t, t) -> a prediction with the shape of x_t (eps, x0 or v).
Text conditioning: Rombach et al. 2022, latent diffusion (arXiv:2112.10752), section 3.3. With
`cross_attention_dim` set, the network maps (x_t, t, context) -> prediction, where context (B, L_text, D) is
the text encoder's output tau_theta(y), and every attention layer becomes a SpatialTransformer
(self-attention, cross-attention to the text tokens, GEGLU feed-forward; see minidiff/blocks/attention.py).

    x_t ─ conv_in ─ [ResBlock (+attention)] x layers ─ downsample ─ ... ─ middle (Res, Attn, Res)
                  │ skip connections: every down output is concatenated into the up path │
    out ─ conv_out ─ SiLU(GroupNorm) ─ [ResBlock (+attention)] x (layers+1) ─ upsample ─ ...

Level i works at resolution H / 2^i; `attention_levels` names the levels that get self-attention
(DDPM's CIFAR-10 model: level 1, i.e. 16x16; Stable Diffusion 1.5: levels 0, 1 and 2 of 4, i.e. 64x64,
32x32 and 16x16 latents). The middle block always has attention. With `patch_size` p > 1 the network first folds
p x p pixel patches into channels (pixel_unshuffle) and unfolds its output at the end (pixel_shuffle), so level i
works at H / (p 2^i): the toy preset's p = 2 suits the digits, 8x8 scans upsampled to 16x16 (Chapter 1, section 8).
The module names follow diffusers' UNet2DModel and UNet2DConditionModel closely, so their checkpoints load
with a short key map (see minidiff/models/unet_diffusers.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks import (Downsample, MidBlock, ResBlock, SpatialSelfAttention, SpatialTransformer,
                             TimestepEmbedding, Upsample, check_images)


@dataclass
class UNetConfig:
    in_channels: int = 3                    # channels of x_t (3 for RGB, 1 for digits, 4 for SD latents)
    out_channels: int = 3                   # channels of the prediction
    sample_size: int = 32                   # the training resolution (any multiple of 2^(levels-1) works)
    block_channels: tuple[int, ...] = (128, 256, 256, 256)  # width of each resolution level
    attention_levels: tuple[int, ...] = (1,)  # levels with attention (level i is at H / 2^i); with text: transformers
    up_attention_levels: tuple[int, ...] | None = None  # up-path levels with attention; None: as on the way down
    layers_per_block: int = 2               # ResBlocks per level on the way down (one more on the way up)
    attention_head_dim: int | None = None   # None: one head as wide as the level (DDPM)
    norm_groups: int = 32                   # GroupNorm groups
    norm_eps: float = 1e-6
    dropout: float = 0.0                    # inside ResBlocks (DDPM CIFAR-10 trained with 0.1)
    time_scale_shift: bool = False          # timestep scales and shifts the 2nd GroupNorm (ADM's AdaGN), not added
    flip_sin_to_cos: bool = False           # timestep features: DDPM puts sin first
    freq_shift: float = 1.0                 # DDPM's denominator half-1
    downsample_padding: int = 0             # 0: pad right/bottom then stride-2 conv (DDPM)
    patch_size: int = 1                     # p > 1: fold p x p pixel patches into channels; level 0 runs at H/p
    # Chapter 3, text conditioning. The defaults leave the Chapter 1 and 2 networks exactly as they were.
    cross_attention_dim: int | None = None  # width D of the text tokens (SD 1.5: 768); None: no text, DDPM's U-Net
    attention_heads: tuple[int, ...] = (8,)   # transformer heads per level, or one value for all (text U-Net only)
    transformer_depth: tuple[int, ...] = (1,)  # TransformerBlocks per attention layer, per level or one value
    use_linear_projection: bool = False     # transformer proj_in/out: Linear on tokens (SD 2) or 1x1 conv (SD 1)
    position_embedding: bool = False        # learned pixel positions in each transformer (not in SD; see Chapter 3)

    def __post_init__(self):
        self.block_channels = tuple(self.block_channels)
        self.attention_levels = tuple(self.attention_levels)
        if self.up_attention_levels is not None:
            self.up_attention_levels = tuple(self.up_attention_levels)
        for name in ("attention_heads", "transformer_depth"):     # a bare int: the same value at every level
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, int) else tuple(value))
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size}: use 1 (no patches) or a patch width such as 2")
        bad = [lvl for lvl in self.attention_levels + self.up_levels if not 0 <= lvl < len(self.block_channels)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range: the model has levels 0..{len(self.block_channels) - 1}")
        bad = [c for c in self.block_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"block_channels {bad} are not divisible by norm_groups={self.norm_groups}; "
                             f"pick widths that are multiples of it")
        if self.cross_attention_dim is not None:
            self._check_text_conditioning()

    def _check_text_conditioning(self) -> None:
        n = len(self.block_channels)
        if self.attention_head_dim is not None:
            raise ValueError("attention_head_dim sets the width of DDPM's self-attention heads; a text-conditional "
                             "U-Net takes attention_heads (the number of heads per level) instead: set it to None")
        for name in ("attention_heads", "transformer_depth"):
            if len(getattr(self, name)) not in (1, n):
                raise ValueError(f"{name}={getattr(self, name)} needs one value per level ({n}) or a single value")
        # the middle block uses the last level's settings, as in Stable Diffusion
        for level in sorted(set(self.attention_levels + self.up_levels + (n - 1,))):
            if self.block_channels[level] % self.heads_at(level):
                raise ValueError(f"level {level} has {self.block_channels[level]} channels, not divisible by "
                                 f"{self.heads_at(level)} attention heads; change attention_heads")

    def heads_at(self, level: int) -> int:
        """Transformer heads at a level (text-conditional U-Net); head width = block_channels[level] / heads."""
        return self.attention_heads[0 if len(self.attention_heads) == 1 else level]

    def depth_at(self, level: int) -> int:
        """TransformerBlocks in each attention layer of a level (text-conditional U-Net)."""
        return self.transformer_depth[0 if len(self.transformer_depth) == 1 else level]

    @property
    def downsampling_factor(self) -> int:
        """How much smaller the smallest feature map is than the input: the patch, then each level's halving."""
        return self.patch_size * 2 ** (len(self.block_channels) - 1)

    @property
    def up_levels(self) -> tuple[int, ...]:
        """The levels of the up path that have attention."""
        return self.attention_levels if self.up_attention_levels is None else self.up_attention_levels

    @classmethod
    def toy(cls, **overrides) -> "UNetConfig":
        """1-channel 16x16 digits on a laptop CPU: 687,636 parameters.

        The digits are 8x8 scans upsampled to 16x16, so the network folds 2x2 pixel patches into channels
        (patch_size=2) and runs its three levels at 8x8, 4x4 and 2x2: a training step at batch 96 costs 0.45 of the
        unfolded network's per image, and in a 5-minute budget the extra images drew more recognizable digits.
        Narrow on purpose: on 2 CPU cores training is compute-bound, and at equal wall time this width beat the
        wider (32, 64, 64) (benchmarks/RESULTS.md). `toy(patch_size=1)` is the same network without the fold,
        the layout diffusers' UNet2DModel has."""
        defaults = dict(in_channels=1, out_channels=1, sample_size=16, block_channels=(16, 32, 64),
                        attention_levels=(2,), layers_per_block=1, norm_groups=8, dropout=0.0, patch_size=2)
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

    @classmethod
    def text_toy(cls, **overrides) -> "UNetConfig":
        """Text-conditional U-Net on the 8x8x4 latents of the toy autoencoder (Shapes 32x32, f=4): `sd-shapes`.

        Cross-attention at both levels (8x8 and 4x4) and in the middle, text tokens of width 64. Two heads (16 and
        32 wide): a training step at batch 32 on one CPU thread measured ~11% faster than with four.
        Stable Diffusion's embedding and padding conventions, so that diffusers' UNet2DConditionModel mirrors it
        exactly (benchmarks/bench_cond_unet_speed.py)."""
        defaults = dict(in_channels=4, out_channels=4, sample_size=8, block_channels=(32, 64),
                        attention_levels=(0, 1), layers_per_block=1, norm_groups=8, norm_eps=1e-5, dropout=0.0,
                        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                        cross_attention_dim=64, attention_heads=(2,), transformer_depth=(1,))
        return cls(**{**defaults, **overrides})

    @classmethod
    def sd15(cls, **overrides) -> "UNetConfig":
        """Stable Diffusion 1.5's U-Net (CompVis v1-inference.yaml; diffusers' UNet2DConditionModel defaults).

        859,520,964 parameters: 64x64x4 latents, widths 320/640/1280/1280, cross-attention to CLIP ViT-L/14's
        77x768 text tokens at the first three levels and in the middle, 8 heads everywhere."""
        defaults = dict(in_channels=4, out_channels=4, sample_size=64, block_channels=(320, 640, 1280, 1280),
                        attention_levels=(0, 1, 2), layers_per_block=2, norm_groups=32, norm_eps=1e-5, dropout=0.0,
                        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                        cross_attention_dim=768, attention_heads=(8,), transformer_depth=(1,),
                        use_linear_projection=False)
        return cls(**{**defaults, **overrides})


def attention_layer(config: UNetConfig, channels: int, level: int) -> nn.Module:
    """DDPM's self-attention, or (text-conditional U-Net) a SpatialTransformer attending to the text."""
    c = config
    if c.cross_attention_dim is None:
        return SpatialSelfAttention(channels, c.attention_head_dim, c.norm_groups, c.norm_eps)
    positions = (c.sample_size // c.patch_size // 2 ** level) ** 2 if c.position_embedding else None
    return SpatialTransformer(channels, c.heads_at(level), c.cross_attention_dim, c.depth_at(level), c.norm_groups,
                              c.use_linear_projection, positions)


class UNetLevel(nn.Module):
    """One resolution level of the down or up path: ResBlocks, optional attention, optional resampling."""

    def __init__(self, in_channels: list[int], out_channels: int, temb_dim: int, config: UNetConfig, level: int,
                 attention: bool, resample: nn.Module | None):
        super().__init__()
        c = config
        self.resnets = nn.ModuleList(
            ResBlock(cin, out_channels, temb_dim, c.norm_groups, c.norm_eps, c.dropout, c.time_scale_shift)
            for cin in in_channels)
        self.attentions = nn.ModuleList(
            attention_layer(c, out_channels, level) for _ in in_channels) if attention else None
        self.resample = resample

    def attend(self, j: int, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The j-th attention layer, if the level has attention; `context` only in a text-conditional U-Net."""
        if self.attentions is None:
            return h
        return self.attentions[j](h) if context is None else self.attentions[j](h, context)


class CrossAttnMidBlock(nn.Module):
    """Stable Diffusion's bottleneck: ResBlock, SpatialTransformer, ResBlock.

    (B, C, H, W), temb (B, D), context (B, L_text, D_text) -> (B, C, H, W)."""

    def __init__(self, channels: int, temb_dim: int, config: UNetConfig):
        super().__init__()
        c = config
        self.resnets = nn.ModuleList(
            ResBlock(channels, channels, temb_dim, c.norm_groups, c.norm_eps, c.dropout, c.time_scale_shift)
            for _ in range(2))
        self.attention = attention_layer(c, channels, len(c.block_channels) - 1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attention(self.resnets[0](h, temb), context), temb)


class UNet(nn.Module):
    """forward(x_t (B, C_in, H, W), t (B,) or scalar, context (B, L_text, D) or None) -> (B, C_out, H, W).

    `context` is required when config.cross_attention_dim is set, and refused when it is None."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch = c.block_channels
        temb_dim = 4 * ch[0]
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim, c.flip_sin_to_cos, c.freq_shift)
        p2 = c.patch_size ** 2
        self.conv_in = nn.Conv2d(c.in_channels * p2, ch[0], 3, padding=1)
        n = len(ch)

        # Down path: level i takes ch[i-1] (ch[0] for level 0) to ch[i]; all but the last level downsample.
        self.down_blocks = nn.ModuleList()
        skip_channels = [ch[0]]  # channels of every tensor pushed onto the skip stack, conv_in's first
        for i, width in enumerate(ch):
            cin = ch[max(i - 1, 0)]
            last = i == n - 1
            level = UNetLevel([cin] + [width] * (c.layers_per_block - 1), width, temb_dim, c, i,
                              i in c.attention_levels, None if last else Downsample(width, c.downsample_padding))
            self.down_blocks.append(level)
            skip_channels += [width] * c.layers_per_block + ([] if last else [width])

        if c.cross_attention_dim is None:
            self.mid_block = MidBlock(ch[-1], temb_dim, c.norm_groups, c.norm_eps, c.dropout, c.attention_head_dim,
                                      c.time_scale_shift)
        else:
            self.mid_block = CrossAttnMidBlock(ch[-1], temb_dim, c)

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
            self.up_blocks.append(UNetLevel(ins, width, temb_dim, c, level_index, level_index in c.up_levels,
                                            None if last else Upsample(width)))

        self.conv_norm_out = nn.GroupNorm(c.norm_groups, ch[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], c.out_channels * p2, 3, padding=1)

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    def check_input(self, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Raise a clear ValueError for inputs the network cannot take."""
        check_images(x, self.config.in_channels, len(self.config.block_channels) - 1, "U-Net", self.config.patch_size)
        D = self.config.cross_attention_dim
        if D is None and context is not None:
            raise ValueError("this U-Net has no cross-attention (cross_attention_dim=None): call it without context, "
                             "or build it with cross_attention_dim set")
        if D is not None and context is None:
            raise ValueError(f"this U-Net is text-conditional (cross_attention_dim={D}): pass context, the text "
                             f"encoder's output of shape (B, L_text, {D}) (for no text, the empty prompt's)")
        if D is not None and (context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != D):
            raise ValueError(f"context has shape {tuple(context.shape)}, expected ({x.shape[0]}, L_text, {D}): "
                             f"one sequence of text tokens of width cross_attention_dim per image")

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, C_in, H, W), t (B,) or scalar, context (B, L_text, D) if text-conditional -> (B, C_out, H, W)."""
        self.check_input(x, context)
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.as_tensor(t, device=x.device).reshape(1)
        temb = self.time_embedding(t.to(x.device).expand(x.shape[0]))   # (B, 4*ch0)

        p = self.config.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p) if p > 1 else x)      # (B, ch0, H/p, W/p)
        skips = [h]
        for level in self.down_blocks:
            for j, resnet in enumerate(level.resnets):
                h = level.attend(j, resnet(h, temb), context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)                                     # (B, C, H/2, W/2)
                skips.append(h)

        h = self.mid_block(h, temb) if context is None else self.mid_block(h, temb, context)

        for level in self.up_blocks:
            for j, resnet in enumerate(level.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), temb)      # (B, C + C_skip, H, W) -> (B, C, H, W)
                h = level.attend(j, h, context)
            if level.resample is not None:
                h = level.resample(h)                                     # (B, C, 2H, 2W)

        out = self.conv_out(F.silu(self.conv_norm_out(h)))               # (B, C_out p^2, H/p, W/p)
        return F.pixel_shuffle(out, p) if p > 1 else out                  # (B, C_out, H, W)
