"""Attention layers.

Paper: Vaswani et al. 2017 (arXiv:1706.03762), eq. 1:  Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V.
DDPM (arXiv:2006.11239) puts single-head self-attention over the pixels of a feature map at 16x16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v for (B, heads, L, head_dim) inputs; uses torch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v)


class SpatialSelfAttention(nn.Module):
    """Self-attention over the H*W positions of a feature map, with a GroupNorm in front and a residual.

    (B, C, H, W) -> (B, C, H, W). `head_dim=None` means a single head of width C (DDPM).
    """

    def __init__(self, channels: int, head_dim: int | None = None, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        head_dim = head_dim or channels
        if channels % head_dim:
            raise ValueError(f"attention width {channels} is not divisible by head_dim {head_dim}")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = rearrange(self.group_norm(x), "B C H W -> B (H W) C")
        q, k, v = (rearrange(proj(h), "B L (heads d) -> B heads L d", heads=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))                     # (B, heads, L, head_dim)
        h = rearrange(attention(q, k, v), "B heads L d -> B L (heads d)")             # (B, L, C)
        h = rearrange(self.to_out(h), "B (H W) C -> B C H W", H=H, W=W)
        return x + h
