"""Chapter 3 exercises: from a caption to a text-guided sample, each piece written from its paper.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/03-text-conditioning/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure (the hint gives the formula when you
need it), and exits with the number of exercises that fail. Use torch only: the point is to write each piece
yourself, so do not call `minidiff.data.tokenizer`, `minidiff.models.clip`, `minidiff.blocks.attention`,
`minidiff.process.guidance` or `minidiff.process.samplers` here (the checks compare your result with them).

Exercises 7 and 8 are build-alongs: the check puts your code into minidiff's own model and sampler. Your
CrossAttention block goes into every cross-attention layer of a small text-conditional U-Net, which trains for
300 steps on one-object Shapes scenes at 8x8 pixels captioned "a red circle", "a blue square", ...; it passes
when the U-Net draws the colour each prompt names. Your guided_sample, with your classifier_free_guidance inside,
then samples from such a U-Net. Each check trains for about 15 s of one CPU core and prints its progress.

Conventions (the same as minidiff's):
- a word is a list of symbols, its UTF-8 bytes as characters, with `</w>` glued to the last: "red" is
  ["r", "e", "d</w>"];
- text embeddings are (B, L_ctx, D_ctx): the text encoder's L_ctx output tokens of width D_ctx (77 x 768 in SD 1.5);
- image tokens are a U-Net feature map (B, C, H, W) flattened to (B, L = H*W, C);
- weights follow torch.nn.Linear: a weight is (out_features, in_features) and the layer computes x @ w.T + b;
- a guided prediction mixes two outputs of one network, with the caption (cond) and with the empty prompt (uncond).

Papers: BPE, Sennrich et al. 2016 (arXiv:1508.07909); Transformer, Vaswani et al. 2017 (arXiv:1706.03762);
CLIP, Radford et al. 2021 (arXiv:2103.00020); latent diffusion, Rombach et al. 2022 (arXiv:2112.10752);
classifier-free guidance, Ho & Salimans 2022 (arXiv:2207.12598).
"""
from __future__ import annotations

import math  # noqa: F401 (you may want math.sqrt)

import torch
import torch.nn.functional as F  # noqa: F401 (you may want F.normalize, F.cross_entropy)
from torch import nn


def bpe_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Exercise 1. Apply one merge rule of byte-pair encoding to a word.

    Sennrich et al. 2016, algorithm 1: a BPE tokenizer learns an ordered list of merges, such as ("r", "e") then
    ("re", "d</w>"), and tokenizes a word by applying them. One merge replaces every occurrence of the adjacent
    pair by the concatenation of its two symbols, scanning from the left; occurrences do not overlap:

        ["r", "e", "d</w>"],          ("r", "e")        ->  ["re", "d</w>"]
        ["b", "a", "n", "a", "n", "a</w>"], ("a", "n")  ->  ["b", "an", "an", "a</w>"]
        ["a", "a", "a"],              ("a", "a")        ->  ["aa", "a"]       (the left pair wins)
        ["r", "e", "d</w>"],          ("e", "x")        ->  ["r", "e", "d</w>"]   (no occurrence: unchanged)

    Compare whole symbols: "a" and "a</w>" are different symbols, and the pair ("a", "n") does not occur in
    ["xa", "n"] even though the characters "a" and "n" are next to each other.

    Args:
        symbols: the word's current symbols. Do not modify this list.
        pair: (left, right), the two symbols to merge.
    Returns:
        a new list of symbols.
    """
    raise NotImplementedError("Exercise 1: merge every occurrence of the pair, left to right")


def causal_mask(length: int) -> torch.Tensor:
    """Exercise 2. The mask that lets CLIP's text transformer read a caption left to right only.

    CLIP's text encoder is causal: the token at position i attends to positions j <= i, never to later ones
    (Vaswani et al. 2017, section 3.2.3). That is why CLIP summarises a caption at its end-of-text token, the
    only position that has seen every word.

    Build the additive mask M that the text transformer adds to its attention scores (Q K^T / sqrt(d)) before
    the softmax: row i is query position i, column j key position j. Where query i may read key j, adding M
    must leave the score as it is; where it may not, adding M must make the key's softmax weight exactly zero.

    Args:
        length: L, the number of tokens.
    Returns:
        M, (L, L), float32 (numbers, not booleans: it is added to the scores).
    """
    raise NotImplementedError("Exercise 2: build the additive causal mask")


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Exercise 3. CLIP's symmetric contrastive loss (Radford et al. 2021, figure 3).

    A batch holds B matching (image, caption) pairs. CLIP scores every image against every caption with the
    cosine similarity of their embeddings, sharpened by a learned inverse temperature 1 / tau = exp(logit_scale),
    and asks each image to pick out its own caption among the B (a B-way classification whose right answer for
    image i is caption i, scored with F.cross_entropy averaged over the batch), and each caption its own image.
    The loss is the average of the two directions (figure 3's pseudocode). CLIP starts from tau = 0.07, so
    logit_scale = log(1 / 0.07), and learns logit_scale: the gradient must reach it.

    Args:
        image_embeddings: I, (B, E), not normalised.
        text_embeddings: T, (B, E), not normalised; row i is the caption of image i.
        logit_scale: t, a 0-d tensor (the log of the inverse temperature).
    Returns:
        the loss, a 0-d tensor.
    """
    raise NotImplementedError("Exercise 3: write CLIP's symmetric cross-entropy over cosine similarities")


def cross_attention(x: torch.Tensor, context: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, heads: int) -> torch.Tensor:
    """Exercise 4. How every pixel of the U-Net reads the caption: multi-head cross-attention.

    Rombach et al. 2022, section 3.3: queries come from the image tokens x, keys and values from the text tokens
    (the context); each is a linear map of its input (no bias). Split the C channels of queries, keys and values
    into `heads` heads of head_dim = C / heads channels each: head h uses channels h * head_dim ...
    (h + 1) * head_dim - 1. In each head, scaled dot-product attention (Vaswani et al. 2017, eq. 1) gives every
    pixel a weighted mix of the text tokens' values, weighted by how well its query matches their keys; merge
    the heads back into C channels in the same order, then apply the output projection (with its bias)
    (Vaswani et al. 2017, section 3.2.2).

    Shapes: queries (B, L, C), keys and values (B, M, C); per head (B, heads, L or M, head_dim); the attention
    weights (B, heads, L, M), one distribution over the M text tokens for every pixel.

    Args:
        x: image tokens, (B, L, C). context: text tokens, (B, M, D_ctx).
        w_q: (C, C). w_k, w_v: (C, D_ctx). w_out: (C, C). b_out: (C,). (nn.Linear's (out, in) layout.)
        heads: the number of heads; C is divisible by it.
    Returns:
        (B, L, C).
    """
    raise NotImplementedError("Exercise 4: write multi-head cross-attention from image tokens to text tokens")


def drop_condition(context: torch.Tensor, null_context: torch.Tensor, p_uncond: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Exercise 5. Train one network for both the captioned and the uncaptioned prediction.

    Ho & Salimans 2022, algorithm 1: in training, replace each example's caption by the empty prompt with
    probability p_uncond (0.1 for Stable Diffusion 1.5). The network then learns eps(x_t, c) and eps(x_t, null)
    with the same weights, and guidance at sampling time (exercise 6) needs nothing else.

    Draw the random numbers exactly this way, so the check can replay them:

        u = torch.rand(B, generator=generator)      one number per example, nothing else from the generator
        example i is dropped where u[i] < p_uncond

    Args:
        context: the captions' embeddings, (B, L, D).
        null_context: the embedding of the empty prompt "", (1, L, D).
        p_uncond: the probability of dropping a caption.
        generator: the random generator to draw from.
    Returns:
        (B, L, D): null_context for the dropped examples, context elsewhere. Do not modify `context`.
    """
    raise NotImplementedError("Exercise 5: replace each caption by the empty prompt with probability p_uncond")


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Exercise 6. Steer a sample towards its caption with classifier-free guidance.

    Ho & Salimans 2022, eq. 6, in the convention of diffusers and of Stable Diffusion's guidance_scale: start
    from the prediction without the caption and move along the direction the caption adds, guidance_scale times
    as far. guidance_scale = 1 gives cond (no guidance), 0 gives uncond (the caption ignored), and 7.5 (SD's
    default) extrapolates well beyond cond. The paper counts the scale differently: its w is guidance_scale - 1.
    The result is linear in the predictions, so it serves eps-, x0- and v-predictions alike.

    Args:
        cond: the network's prediction with the caption, e.g. (B, C, h, w).
        uncond: its prediction with the empty prompt, the same shape.
        guidance_scale: the scale, a float.
    Returns:
        the guided prediction, the same shape. Do not modify cond or uncond.
    """
    raise NotImplementedError("Exercise 6: write the guided prediction (Ho & Salimans eq. 6)")


class CrossAttention(nn.Module):
    """Exercise 7 (build-along). The cross-attention layer of Stable Diffusion's U-Net, as a module.

    Rombach et al. 2022, section 3.3: in every transformer block of the U-Net, the pixels' tokens (queries)
    attend to the caption's tokens (keys and values). Exercise 4 computed this from given weights; here the
    layer owns its weights and learns them. Build these layers, with exactly these names (the check copies
    minidiff's weights into your block by name):
        to_q    Linear, dim -> dim, no bias               (W_Q)
        to_k    Linear, context_dim -> dim, no bias       (W_K)
        to_v    Linear, context_dim -> dim, no bias       (W_V)
        to_out  Linear, dim -> dim, with a bias           (W_O)
    and keep `heads`. forward(x, context) is exercise 4's multi-head cross-attention through these layers (you
    may call your cross_attention with their weights).

    The check first compares your block with minidiff's (same weights, same inputs), then puts it into every
    cross-attention layer of a small text-conditional U-Net (its self-attention stays minidiff's), trains the
    U-Net, samples each prompt with classifier-free guidance, and counts the samples that have the colour their
    prompt names.

    Args:
        dim: C, the width of the pixels' tokens. heads: the number of heads; C is divisible by it.
        context_dim: D_ctx, the width of the text tokens.
    forward:
        x (B, L, C) the pixels' tokens, context (B, M, D_ctx) the text tokens -> (B, L, C).
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        raise NotImplementedError("Exercise 7: build to_q, to_k, to_v and to_out, and keep heads")

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 7: multi-head cross-attention through the block's own layers")


def guided_sample(model, x_T: torch.Tensor, context: torch.Tensor, null_context: torch.Tensor,
                  guidance_scale: float, alpha_bar: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Exercise 8 (build-along). Draw images for captions: deterministic DDIM with classifier-free guidance.

    Chapter 1's DDIM sampler (Song et al. 2021, eq. 12 with sigma = 0), with a text-conditional network and
    guidance (Ho & Salimans 2022, algorithm 2). Start from x_T. At each timestep of the list, in the order given
    (decreasing), get the network's noise prediction twice, with the captions and with the empty prompt (two
    calls, or one call on the doubled batch); combine the two with your classifier_free_guidance (exercise 6);
    then take the deterministic DDIM step from this timestep's noise level to the next one's in the list, and
    after the last one to clean data (alpha-bar = 1). Call classifier_free_guidance at every step (the check
    counts the calls); the network needs no gradients, so run the loop under torch.no_grad().

    The check compares your samples with minidiff's guided DDIM on an untrained U-Net, then samples prompts
    from a text-conditional U-Net it trains (about 15 s of one core), with guidance and without (guidance_scale
    = 1), and expects guidance to draw the colour each prompt names more often.

    Args:
        model: the noise predictor, model(x_t (N, C, H, W), t (N,) long, context (N, L, D)) -> eps (N, C, H, W).
        x_T: (B, C, H, W) standard normal noise.
        context: (B, L, D) the captions' text tokens. null_context: (B, L, D) the empty prompt's, one per sample.
        guidance_scale: the guidance scale, a float (1 turns guidance off).
        alpha_bar: (T,) the schedule's alpha-bar table.
        timesteps: the K timesteps to visit, decreasing, e.g. [999, 949, ..., 49] for K = 20 of T = 1000.
    Returns:
        the samples x0, (B, C, H, W). Do not modify x_T.
    """
    raise NotImplementedError("Exercise 8: loop over the timesteps: two predictions, your guidance, a DDIM step")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch03 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
