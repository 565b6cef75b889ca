"""A time-conditioned MLP: the denoiser for 2D toy distributions, where a U-Net has nothing to convolve.

forward(x_t (B, D), t (B,)) -> (B, D). The timestep enters through sinusoidal features and an MLP,
added to the hidden state of every layer (the same idea as the U-Net's ResBlocks, without images).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.blocks import TimestepEmbedding


@dataclass
class MLPConfig:
    dim: int = 2             # data dimension
    hidden: int = 256        # width of every hidden layer
    layers: int = 4          # residual hidden layers
    time_dim: int = 64       # sinusoidal timestep features before the embedding MLP

    @classmethod
    def toy(cls, **overrides) -> "MLPConfig":
        """2D points on a laptop CPU: about 0.3M parameters."""
        return cls(**overrides)


class MLPDenoiser(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = c = config
        self.time_embedding = TimestepEmbedding(c.time_dim, c.hidden, flip_sin_to_cos=True, freq_shift=0)
        self.proj_in = nn.Linear(c.dim, c.hidden)
        self.hidden = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(c.layers))
        self.proj_out = nn.Linear(c.hidden, c.dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"expected points of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.as_tensor(t, device=x.device).reshape(1)
        temb = self.time_embedding(t.to(x.device).expand(x.shape[0]))   # (B, hidden)
        h = self.proj_in(x)                                              # (B, hidden)
        for linear, norm in zip(self.hidden, self.norms):
            h = h + linear(F.silu(norm(h) + temb))                       # residual layer, time added inside
        return self.proj_out(F.silu(h))                                  # (B, D)
