"""Chapter 3 exercises: reference solutions (for instructors).

Each function is written from the paper's equations, not by calling minidiff, so that the checks in
`minidiff.exercises.ch03` compare two independent implementations. Same signatures as exercises.py.

    python instructors/solutions/03-text-conditioning.py        # every check passes: exit status 0

Papers: BPE (arXiv:1508.07909), Transformer (arXiv:1706.03762), CLIP (arXiv:2103.00020),
latent diffusion (arXiv:2112.10752), classifier-free guidance (arXiv:2207.12598).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bpe_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Exercise 1: every occurrence of `pair`, scanning left to right, becomes one symbol (BPE algorithm 1)."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            merged.append(pair[0] + pair[1])
            i += 2                                    # both symbols used: occurrences never overlap
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def causal_mask(length: int) -> torch.Tensor:
    """Exercise 2: M[i, j] = 0 if j <= i, -inf if j > i   (Transformer section 3.2.3)."""
    return torch.full((length, length), float("-inf")).triu(diagonal=1)   # (L, L)


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Exercise 3: (CE(logits) + CE(logits^T)) / 2, logits = exp(t) I_e T_e^T   (CLIP figure 3)."""
    image_embeddings = image_embeddings / image_embeddings.norm(dim=-1, keepdim=True)   # (B, E)
    text_embeddings = text_embeddings / text_embeddings.norm(dim=-1, keepdim=True)      # (B, E)
    logits = logit_scale.exp() * image_embeddings @ text_embeddings.T                   # (B, B)
    labels = torch.arange(len(logits))                                                  # (B,)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def cross_attention(x: torch.Tensor, context: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, heads: int) -> torch.Tensor:
    """Exercise 4: concat_h softmax(Q_h K_h^T / sqrt(d)) V_h, then W_O   (LDM section 3.3, Transformer eq. 1)."""
    B, L, C = x.shape
    head_dim = C // heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:                       # (B, N, C) -> (B, heads, N, d)
        return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

    q = split_heads(x @ w_q.T)                                                # (B, heads, L, d)
    k = split_heads(context @ w_k.T)                                          # (B, heads, M, d)
    v = split_heads(context @ w_v.T)                                          # (B, heads, M, d)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)   # (B, heads, L, M)
    h = (weights @ v).transpose(1, 2).reshape(B, L, C)                        # (B, L, C)
    return h @ w_out.T + b_out                                                # (B, L, C)


def drop_condition(context: torch.Tensor, null_context: torch.Tensor, p_uncond: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Exercise 5: each example's context becomes null_context with probability p_uncond (CFG algorithm 1)."""
    u = torch.rand(context.shape[0], generator=generator)                     # (B,)
    drop = (u < p_uncond).view(-1, 1, 1)                                      # (B, 1, 1)
    return torch.where(drop, null_context, context)                           # (B, L, D)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Exercise 6: uncond + guidance_scale (cond - uncond) = (1 + w) cond - w uncond, w = guidance_scale - 1
    (CFG eq. 6)."""
    return uncond + guidance_scale * (cond - uncond)


class CrossAttention(nn.Module):
    """Exercise 7 (build-along): multi-head cross-attention as a module, Stable Diffusion's layer names
    (LDM section 3.3; Transformer section 3.2.2). x (B, L, dim), context (B, M, context_dim) -> (B, L, dim)."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)                  # W_Q
        self.to_k = nn.Linear(context_dim, dim, bias=False)          # W_K
        self.to_v = nn.Linear(context_dim, dim, bias=False)          # W_V
        self.to_out = nn.Linear(dim, dim)                            # W_O, b_O

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return cross_attention(x, context, self.to_q.weight, self.to_k.weight, self.to_v.weight,
                               self.to_out.weight, self.to_out.bias, self.heads)        # (B, L, dim)


def guided_sample(model, x_T: torch.Tensor, context: torch.Tensor, null_context: torch.Tensor,
                  guidance_scale: float, alpha_bar: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Exercise 8 (build-along): deterministic DDIM (eq. 12, sigma = 0) on the guided noise prediction (CFG eq. 6),
    the network run once per step on the doubled batch [x; x] with [context; null_context]."""
    B = x_T.shape[0]
    x = x_T
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            a = alpha_bar[t]                                                               # alpha-bar_t
            a_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
            t_batch = torch.full((2 * B,), t, dtype=torch.long)                            # (2B,)
            both = model(torch.cat([x, x]), t_batch, torch.cat([context, null_context]))  # (2B, C, H, W)
            cond, uncond = both.chunk(2)                                                   # (B, C, H, W) each
            eps = classifier_free_guidance(cond, uncond, guidance_scale)
            x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()                                 # DDIM eq. 12, first term
            x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps                         # ... + direction to x_t
    return x


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch03 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
