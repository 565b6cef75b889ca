"""A perceptual distance from a small network trained from scratch: LPIPS, scaled down to the Shapes world.

Paper: Zhang et al. 2018, The Unreasonable Effectiveness of Deep Features as a Perceptual Metric (LPIPS,
arXiv:1801.03924), eq. 1. LPIPS compares two images through the activations of a pretrained VGG or AlexNet:

    d(x, y) = sum_l  1/(H_l W_l) sum_{h,w}  || w_l * ( f_l(x)_hw / ||f_l(x)_hw||  -  f_l(y)_hw / ||f_l(y)_hw|| ) ||^2

where f_l is layer l's (C_l, H_l, W_l) activation, each pixel's channel vector is scaled to unit length, and
w_l are per-channel weights fitted to human judgements. Its VGG weights come from ImageNet and cannot be
downloaded here, so minidiff trains its own feature network on the data the autoencoder compresses: a small
CNN that learns to say which shapes and colors a Shapes scene holds. Its features must encode outlines, corners
and hues, which is what the perceptual term should protect. There are no human judgements to fit, so w_l = 1
(LPIPS's "baseline" variant). Chapter 2 measures what this term changes; with the `lpips` package installed
a learner can pass its module to train_autoencoder instead (any callable (x_hat, x) -> (B,) distance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PerceptualConfig:
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64)   # channels of each stage; f_l is each stage's output
    num_labels: int = 11                      # the Shapes attributes: 5 shapes + 6 colors (multi-label)

    def __post_init__(self):
        self.widths = tuple(self.widths)

    @classmethod
    def toy(cls, **overrides) -> "PerceptualConfig":
        return cls(**overrides)


class PerceptualNet(nn.Module):
    """Stages of (conv 3x3, ReLU) x 2 with 2x2 max-pooling between them, and a multi-label head.

    features(x): x (B, C, H, W) in [-1, 1] -> [(B, widths[l], H / 2^l, W / 2^l) for each stage l]
    forward(x) -> (B, num_labels) logits (used only to train the features)
    """

    def __init__(self, config: PerceptualConfig):
        super().__init__()
        self.config = c = config
        self.stages = nn.ModuleList()
        width = c.in_channels
        for out in c.widths:
            self.stages.append(nn.Sequential(nn.Conv2d(width, out, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(out, out, 3, padding=1), nn.ReLU()))
            width = out
        self.head = nn.Linear(2 * width, c.num_labels)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], x
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else F.max_pool2d(h, 2))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)[-1]                                          # (B, C_last, h, w)
        return self.head(torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1))   # (B, num_labels)


def unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each pixel's channel vector to unit length: (B, C, H, W) -> (B, C, H, W)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def perceptual_distance(net: PerceptualNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS eq. 1 with w_l = 1: (B, C, H, W) twice -> (B,) distances. Gradients flow to x and y, not to net
    (keep it frozen: requires_grad_(False))."""
    total = 0.0
    for fx, fy in zip(net.features(x), net.features(y)):
        total = total + (unit_normalize(fx) - unit_normalize(fy)).pow(2).sum(dim=1).mean(dim=(1, 2))   # (B,)
    return total
