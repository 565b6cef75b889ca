"""Classifier-free guidance: one network, trained both with and without its condition, steers its own samples.

Paper: Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (arXiv:2207.12598), Algorithm 1 (training with
the condition dropped) and eq. 6 (sampling); guidance rescale from Lin et al. 2024 (WACV; arXiv:2305.08891), eq. 15-16.

| code             | paper                                                               |
|------------------|---------------------------------------------------------------------|
| `cond`, `uncond` | eps_theta(x_t, c) and eps_theta(x_t, null): the same network, with and without the text |
| `guidance_scale` | w in diffusers' convention (1 + w in Ho & Salimans'): 1 turns guidance off, 0 ignores the text |
| `null_context`   | the embedding of the empty prompt "" (Stable Diffusion), or of a negative prompt at sampling |
| `p_uncond`       | the probability of dropping the condition in training (0.1 for Stable Diffusion 1.5) |
| `guidance_rescale` | phi: how much of the rescaled prediction replaces the guided one (0.7 in Lin et al.) |

Guided prediction (eq. 6, written as diffusers and Imagen do):

    guided = uncond + guidance_scale * (cond - uncond)

It is linear in the network's output, so the same formula serves eps-, x0- and v-prediction. A network is
any callable; `guided_model` returns the callable (x_t, t) -> guided output that every sampler already takes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minidiff.process.ddpm import GaussianDiffusion, Model


def guide(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """uncond + guidance_scale * (cond - uncond): eq. 6 of Ho & Salimans (with w = guidance_scale - 1)."""
    return uncond + guidance_scale * (cond - uncond)


def rescale(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Lin et al. eq. 15-16: match the guided prediction's std to the conditional one's, then blend.

    rescaled = guided * std(cond) / std(guided)   (std over every dimension but the batch)
    result   = phi * rescaled + (1 - phi) * guided
    Large guidance scales inflate the prediction's scale and over-saturate images; this undoes the inflation.
    """
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


def guided_model(model, context: torch.Tensor, null_context: torch.Tensor, guidance_scale: float,
                 guidance_rescale: float = 0.0) -> Model:
    """A sampler-ready callable (x_t, t) -> guided prediction for a network model(x_t, t, context).

    context: (B, L, D) text embeddings; null_context: (B, L, D) or (1, L, D) embeddings of the empty prompt, or
    of a negative prompt (what the sample should move away from). With guidance_scale == 1 the network runs once
    on the condition alone; otherwise it runs once on a doubled batch [x_t; x_t] with [context; null_context].
    """
    if null_context.shape[0] == 1 and context.shape[0] > 1:
        null_context = null_context.expand(context.shape[0], *null_context.shape[1:])   # (B, L, D)
    if null_context.shape != context.shape:
        raise ValueError(f"context {tuple(context.shape)} and null_context {tuple(null_context.shape)} differ; "
                         f"encode both prompts with the same tokenizer and context length")

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0:
            return model(x_t, t, context)
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, null_context]))  # (2B, ...)
        cond, uncond = both.chunk(2)
        out = guide(cond, uncond, guidance_scale)
        return rescale(out, cond, guidance_rescale) if guidance_rescale > 0 else out

    return guided


def drop_condition(context: torch.Tensor, null_context: torch.Tensor, p_uncond: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Training half of guidance (Algorithm 1): replace each example's context by the null one with prob p_uncond.

    context: (B, L, D); null_context: (1, L, D) or (L, D). Returns (B, L, D). The network learns both
    eps(x_t, c) and eps(x_t, null) with one set of weights, which is all guidance needs at sampling time.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond}")
    drop = torch.rand(context.shape[0], generator=generator) < p_uncond           # (B,)
    drop = drop.to(context.device).view(-1, *([1] * (context.ndim - 1)))          # (B, 1, 1)
    return torch.where(drop, null_context.reshape(1, *context.shape[1:]).to(context), context)


@dataclass
class ConditionalDiffusion:
    """The diffusion loss of a text-conditional network, trained for guidance (Ho & Salimans, Algorithm 1).

    loss(model, (x0 (B, ...), condition), generator): each example's condition is replaced by the null one with
    probability p_uncond, then the usual diffusion loss trains model(x_t, t, context). The condition is either
    the context itself (B, L, D), from a frozen text encoder computed once, or, when the text encoder trains with
    the denoiser (as in latent diffusion's own text-to-image model), token ids (B, L) that model.encode_tokens
    turns into the context at every step, so the diffusion loss reaches the encoder too.
    """
    diffusion: GaussianDiffusion
    null_condition: torch.Tensor          # (1, L, D) context, or (1, L) token ids, of the empty prompt ""
    p_uncond: float = 0.1                 # Stable Diffusion 1.5 dropped 10% of captions

    def loss(self, model, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None,
             shard: slice = slice(None)):
        """shard: this process's examples of the batch under torchrun (see GaussianDiffusion.loss)."""
        x0, condition = batch
        condition = drop_condition(condition, self.null_condition, self.p_uncond, generator)[shard]  # drawn for B
        context = condition if condition.is_floating_point() else model.encode_tokens(condition)   # (b, L, D)
        return self.diffusion.loss(lambda x_t, t: model(x_t, t, context), x0, generator, shard)
