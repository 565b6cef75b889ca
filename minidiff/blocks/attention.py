"""Attention layers: DDPM's self-attention over pixels, and Stable Diffusion's transformer with cross-attention.

Papers: Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762), eq. 1 and section 3.2.2;
Rombach et al. 2022, latent diffusion (arXiv:2112.10752), section 3.3; Shazeer 2020 (arXiv:2002.05202) for GEGLU.
DDPM (arXiv:2006.11239) puts single-head self-attention over the pixels of a feature map at 16x16.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V                               (Vaswani eq. 1)
    head_i = Attention(x W_Q^i, c W_K^i, c W_V^i),  out = concat(head_1 .. head_h) W_O    (section 3.2.2)

Cross-attention (Rombach et al., section 3.3) is the same formula with queries from the image and keys and
values from the text: Q = W_Q phi(z_t), K = W_K tau(y), V = W_V tau(y), where phi(z_t) is the U-Net's
feature map flattened to N = H*W tokens and tau(y) the text encoder's M tokens. Each of the N pixels takes a
softmax-weighted mix of the M text tokens.

| code                 | paper                    | shape                  |
|----------------------|--------------------------|------------------------|
| x                    | phi_i(z_t), flattened    | (B, L = H*W, C)        |
| context              | tau_theta(y)             | (B, L_ctx, D_ctx)      |
| to_q, to_k, to_v     | W_Q, W_K, W_V            | C->C, D_ctx->C, D_ctx->C |
| to_out               | W_O                      | C->C                   |
| heads, head_dim      | h, d = C / h             |                        |
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


class Attention(nn.Module):
    """Multi-head attention on token sequences: queries from x, keys and values from `context` (x itself if None).

    x (B, L, C), context (B, L_ctx, context_dim) -> (B, L, C). As in Stable Diffusion, the q/k/v projections
    have no bias and the output projection has one.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}; "
                             f"pick a head count that divides it")
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "B L (heads d) -> B heads L d", heads=self.heads)        # (B, heads, L, d)
        k = rearrange(self.to_k(context), "B M (heads d) -> B heads M d", heads=self.heads)  # (B, heads, L_ctx, d)
        v = rearrange(self.to_v(context), "B M (heads d) -> B heads M d", heads=self.heads)  # (B, heads, L_ctx, d)
        h = rearrange(attention(q, k, v), "B heads L d -> B L (heads d)")                    # (B, L, C)
        return self.to_out(h)

    def probabilities(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights softmax(q k^T / sqrt(d)) that forward uses, spelled out: (B, heads, L, L_ctx).

        Row i says how much query position i reads from each context token: in cross-attention, one map over
        the image per word (what Chapter 3's attention maps plot)."""
        context = x if context is None else context
        q = rearrange(self.to_q(x), "B L (heads d) -> B heads L d", heads=self.heads)        # (B, heads, L, d)
        k = rearrange(self.to_k(context), "B M (heads d) -> B heads M d", heads=self.heads)  # (B, heads, L_ctx, d)
        return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)                 # (B, heads, L, L_ctx)


class GEGLU(nn.Module):
    """A gated linear unit with a GELU gate (Shazeer 2020): (B, L, dim) -> (B, L, inner).

        GEGLU(x) = (x W + b) * GELU(x V + c)      W and V are the two halves of `proj`
    """

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)                     # 2 x (B, L, inner)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's position-wise MLP: GEGLU to `mult` * dim, back to dim. (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block with cross-attention (Stable Diffusion's BasicTransformerBlock).

        x = x + attn1(LN(x))               self-attention among the pixels
        x = x + attn2(LN(x), context)      cross-attention from the pixels to the text tokens
        x = x + ff(LN(x))                  GEGLU feed-forward

    x (B, L, C), context (B, L_ctx, context_dim) -> (B, L, C).
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the H*W pixels of a feature map, conditioned on a context (latent diffusion, 3.3).

        h = proj_in(GroupNorm(x))           1x1 conv, or a Linear on the tokens when use_linear_projection (SD 2)
        h = TransformerBlock(h, context)    `depth` times, on the (B, H*W, C) tokens
        out = x + proj_out(h)

    x (B, C, H, W), context (B, L_ctx, context_dim) -> (B, C, H, W).

    positions: if set (H*W), a learned embedding of each pixel's position is added to the tokens after proj_in.
    Stable Diffusion has none: its attention is blind to where a pixel is, and only the convolutions' zero padding
    tells the network where the borders are. The embedding starts at zero, so the block starts as SD's.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32,
                 use_linear_projection: bool = False, positions: int | None = None):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        if positions is not None:
            self.position_embedding = nn.Parameter(torch.zeros(1, positions, channels))    # (1, H*W, C)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)   # 1e-6 in SD at every level, whatever the ResBlocks use
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, channels), nn.Linear(channels, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(rearrange(h, "B C H W -> B (H W) C"))              # (B, L, C)
        else:
            h = rearrange(self.proj_in(h), "B C H W -> B (H W) C")              # (B, L, C)
        if hasattr(self, "position_embedding"):
            if self.position_embedding.shape[1] != H * W:
                raise ValueError(f"this attention layer learned positions for {self.position_embedding.shape[1]} "
                                 f"pixels but got a {H}x{W} feature map; sample at the training resolution")
            h = h + self.position_embedding                                     # (B, L, C)
        for block in self.transformer_blocks:
            h = block(h, context)                                               # (B, L, C)
        # .contiguous(): back to the usual (B, C, H, W) memory layout, which the convolutions after expect
        if self.use_linear_projection:
            h = rearrange(self.proj_out(h), "B (H W) C -> B C H W", H=H, W=W).contiguous()   # (B, C, H, W)
        else:
            h = self.proj_out(rearrange(h, "B (H W) C -> B C H W", H=H, W=W).contiguous())   # (B, C, H, W)
        return x + h
