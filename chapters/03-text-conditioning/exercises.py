"""Chapter 3 exercises: from a caption to a text-guided sample, one formula at a time.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/03-text-conditioning/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure, and exits with a non-zero status
until all six pass. Use torch only: the point is to write each formula yourself, so do not call
`minidiff.data.tokenizer`, `minidiff.models.clip`, `minidiff.blocks.attention` or `minidiff.process.guidance`
here (the checks compare your result with them).

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
    only position that has seen every word. The mask is added to the attention scores before the softmax:

        softmax(Q K^T / sqrt(d) + M),   M[i, j] = 0 if j <= i,  -inf if j > i

    exp(-inf) = 0, so a masked key gets no weight; the row i is query i, the column j key j:

        length 3:  [[0, -inf, -inf],
                    [0,    0, -inf],
                    [0,    0,    0]]

    Args:
        length: L, the number of tokens.
    Returns:
        M, (L, L), float32.
    """
    raise NotImplementedError("Exercise 2: build the additive causal mask, 0 on and below the diagonal")


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Exercise 3. CLIP's symmetric contrastive loss (Radford et al. 2021, figure 3).

    A batch holds B matching (image, caption) pairs. CLIP scores every image against every caption with the
    cosine similarity of their embeddings, scaled by a learned inverse temperature exp(t) = 1 / tau, and asks
    each image to pick out its own caption among the B, and each caption its own image:

        I_e = I / ||I||,  T_e = T / ||T||                (each row L2-normalised)
        logits = exp(t) * I_e T_e^T                       (B, B): row i scores image i against every caption
        loss = ( CE(logits, labels) + CE(logits^T, labels) ) / 2,   labels = [0, 1, ..., B-1]

    where CE is the cross-entropy averaged over the batch (F.cross_entropy). CLIP starts from tau = 0.07, so
    t = log(1 / 0.07), and learns t: the gradient must reach logit_scale.

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

    Rombach et al. 2022, section 3.3: queries come from the image tokens, keys and values from the text tokens,

        Q = x W_Q^T,  K = c W_K^T,  V = c W_V^T            (B, L, C), (B, M, C), (B, M, C)
        split C = heads * head_dim:  (B, L, C) -> (B, heads, L, head_dim), channels grouped as (heads, head_dim)
        A = softmax(Q K^T / sqrt(head_dim))                 (B, heads, L, M): over the M text tokens
        out = merge_heads(A V) W_O^T + b_O                  (B, L, C)

    (Vaswani et al. 2017, eq. 1 and section 3.2.2.) Each pixel takes a weighted mix of the text tokens' values,
    weighted by how well its query matches their keys. Head h uses channels h * head_dim ... (h + 1) * head_dim - 1
    of Q, K and V, and merging puts them back in that order.

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

    Ho & Salimans 2022, eq. 6, in the convention of diffusers and of Stable Diffusion's guidance_scale:

        guided = uncond + guidance_scale * (cond - uncond)

    cond - uncond is what the caption changes in the prediction; guidance_scale = 1 gives cond (no guidance),
    0 gives uncond (the caption ignored), 7.5 (SD's default) pushes well beyond cond. The paper writes the same
    thing as (1 + w) cond - w uncond, so its w is guidance_scale - 1. The formula is linear, so it serves eps-,
    x0- and v-predictions alike.

    Args:
        cond: the network's prediction with the caption, e.g. (B, C, h, w).
        uncond: its prediction with the empty prompt, the same shape.
        guidance_scale: the scale, a float.
    Returns:
        the guided prediction, the same shape. Do not modify cond or uncond.
    """
    raise NotImplementedError("Exercise 6: write the guided prediction (Ho & Salimans eq. 6)")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch03 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
