"""Timestep embeddings: turn an integer (or real) timestep into a vector a network can use.

Paper: Vaswani et al. 2017 (arXiv:1706.03762), section 3.5, reused by DDPM (arXiv:2006.11239), appendix B.

    emb[i]        = sin(t * w_i),  emb[half + i] = cos(t * w_i),   i = 0 .. half-1
    w_i           = exp(-log(max_period) * i / (half - freq_shift))

`freq_shift=1, flip_sin_to_cos=False` is DDPM's original convention (sin first, denominator half-1);
`freq_shift=0, flip_sin_to_cos=True` is Stable Diffusion's (cos first, denominator half).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                         max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoidal features."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]                       # (B, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)                           # (B, 2*half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP: (B,) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0):
        super().__init__()
        self.in_dim, self.flip_sin_to_cos, self.freq_shift = in_dim, flip_sin_to_cos, freq_shift
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.in_dim, self.flip_sin_to_cos, self.freq_shift)  # (B, in_dim)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))                                  # (B, out_dim)
