"""Checks for Chapter 3's exercises (chapters/03-text-conditioning/exercises.py): conditioning on text.

Each `check_<name>(fn)` calls a learner's function on several inputs and compares the result with minidiff's
own implementation (the tokenizer, CLIP, the attention block, classifier-free guidance) and with closed-form
properties of the maths. It returns quietly when everything agrees and raises AssertionError otherwise, saying
what was expected, what came back, and giving a hint. A function that still raises NotImplementedError fails
with `NotImplementedYet`, a kind of AssertionError. `run_checks(module)` runs them all. The helpers that
call the learner's function and compare tensors are minidiff.exercises.checking's.

| exercise                   | paper                                              | minidiff reference                   |
|----------------------------|----------------------------------------------------|--------------------------------------|
| `bpe_merge`                | BPE (arXiv:1508.07909) algorithm 1                 | `merge_pair`, `BPETokenizer.bpe`     |
| `causal_mask`              | Transformer (arXiv:1706.03762) sec. 3.2.3          | `SelfAttention(..., causal=True)`    |
| `contrastive_loss`         | CLIP (arXiv:2103.00020) figure 3                   | `contrastive_loss`                   |
| `cross_attention`          | LDM (arXiv:2112.10752) sec. 3.3; Transformer eq. 1 | `Attention(dim, heads, context_dim)` |
| `drop_condition`           | CFG (arXiv:2207.12598) algorithm 1                 | `drop_condition`                     |
| `classifier_free_guidance` | CFG eq. 6                                          | `guide`                              |
| `CrossAttention` (built)   | LDM sec. 3.3; Transformer sec. 3.2.2               | `Attention(dim, heads, context_dim)` |
| `guided_sample` (built)    | DDIM (arXiv:2010.02502) eq. 12; CFG algorithm 2    | `guided_model`, `sample("ddim")`     |

The references live in `minidiff.data.tokenizer` (exercise 1), `minidiff.models.clip` (2, 3),
`minidiff.blocks.attention` (4, 7), `minidiff.process.guidance` (5, 6, 8) and `minidiff.process.samplers` (8);
CFG is classifier-free guidance; "built" marks a build-along exercise.

The two build-along checks (marked with `build_along`: a pass is remembered for the class or function that
passed) put the learner's code into the short text-to-image run of `minidiff.exercises.buildalong_text`:
`CrossAttention` into every cross-attention layer of its U-Net, which then trains (300 steps) and must draw the
colour each prompt names (`BLOCK_FLOOR`); `guided_sample`, with the learner's `classifier_free_guidance` inside,
must match minidiff's guided DDIM and, on the run trained with minidiff's blocks, draw the prompted colour at
least `GUIDED_FLOOR` of the time and more often than without guidance. The floors' calibration is in that module.
Formulas are not in the learner's docstrings; each failure's hint gives them.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minidiff.blocks.attention import Attention
from minidiff.data.tokenizer import BPETokenizer, merge_pair, word_symbols
from minidiff.exercises import buildalong_text as text
from minidiff.exercises.checking import (Check, NotImplementedYet, build_along, call, close, command_line,
                                         expect_close, expect_floor, report, snapshot, unmoved_weights)
from minidiff.models.clip import SelfAttention, contrastive_loss
from minidiff.process.guidance import drop_condition, guide
from minidiff.process.samplers import timesteps as sample_timesteps


# ---------------------------------------------------------------------------------------------------------
# Helpers: compare lists of symbols.
# ---------------------------------------------------------------------------------------------------------

def _expect_symbols(got, expected: list[str], what: str, hint: str,
                    mistakes: dict[str, list[str]] | None = None) -> None:
    """Assert that `got` is the list of strings `expected`; name a known mistake if `got` matches one."""
    if not isinstance(got, list) or not all(isinstance(s, str) for s in got):
        raise AssertionError(f"{what}: expected a list of strings, got {got!r}.\n"
                             f"  Hint: build a new Python list of str and return it. {hint}")
    if got == expected:
        return
    message = f"{what}: expected {expected}, got {got}.\n"
    for description, wrong in (mistakes or {}).items():
        if got == wrong:
            message += f"  This is what you get if you {description}.\n"
            break
    raise AssertionError(message + f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# Exercise 1: one merge of byte-pair encoding (Sennrich et al. 2016, algorithm 1).
# ---------------------------------------------------------------------------------------------------------

CAPTIONS = ["a red circle above a blue square", "a small red square left of a big green circle",
            "a blue triangle", "two red circles", "a green square below a red triangle"]


def check_bpe_merge(fn: Callable) -> None:
    """fn(symbols, pair) -> a new list in which every non-overlapping occurrence of `pair`, scanning from the
    left, is replaced by the concatenation of its two symbols."""
    hint = ("scan left to right with an index i: if (symbols[i], symbols[i + 1]) == pair, append "
            "symbols[i] + symbols[i + 1] and jump to i + 2; otherwise append symbols[i] and go to i + 1. "
            "Compare whole symbols, never characters inside them, and return a new list.")
    cases = [(word_symbols("reduce"), ("r", "e"), {}),
             (word_symbols("banana"), ("a", "n"), {"merge only the first occurrence": ["b", "an", "a", "n", "a</w>"]}),
             (word_symbols("banana"), ("n", "a</w>"),
              {"treat 'a</w>' (an 'a' that ends the word) as the symbol 'a'": ["b", "a", "na", "na</w>"]}),
             (["a", "a", "a"], ("a", "a"), {"merge overlapping pairs (the middle 'a' used twice)": ["aa", "aa"],
                                            "scan from the right": ["a", "aa"]}),
             (["a", "a", "a", "a"], ("a", "a"), {"merge overlapping pairs": ["aa", "aa", "aa"]}),
             (["xa", "n"], ("a", "n"), {"join the symbols into a string and use str.replace (which matches "
                                        "characters inside a symbol)": ["xan"]}),
             (["r", "e", "d</w>"], ("e", "x"), {}),
             (["a</w>"], ("a</w>", "a</w>"), {})]
    for symbols, pair, mistakes in cases:
        before = list(symbols)
        got = call(fn, symbols, pair, hint=hint)
        where = f"bpe_merge({before}, {pair})"
        _expect_symbols(got, merge_pair(before, pair), where, hint, mistakes)
        if symbols != before:
            raise AssertionError(f"{where}: your function changed the list it was given, to {symbols}.\n"
                                 f"  Hint: the tokenizer keeps the input (a cached word) for later; build a new "
                                 f"list instead of editing `symbols` in place.")

    # In the tokenizer: merge the pair of lowest rank until none has a rank, as BPETokenizer.bpe does.
    tokenizer = BPETokenizer.train(CAPTIONS, vocab_size=600)
    for word in ("red", "circle", "circles", "square", "triangle", "reduce"):
        symbols = word_symbols(word)
        for _ in range(len(symbols)):
            best = min(zip(symbols, symbols[1:]), key=lambda p: tokenizer.ranks.get(p, math.inf), default=None)
            if best not in tokenizer.ranks:
                break
            merged = call(fn, symbols, best, hint=hint)
            if not isinstance(merged, list) or len(merged) >= len(symbols):
                raise AssertionError(f"bpe_merge({symbols}, {best}) did not merge the pair, got {merged!r}.\n"
                                     f"  Hint: {hint}")
            symbols = merged
        _expect_symbols(symbols, tokenizer.bpe(word), f"the BPE of {word!r} with a tokenizer trained on "
                        f"{len(CAPTIONS)} Shapes captions, your bpe_merge applying its merges by rank", hint)


# ---------------------------------------------------------------------------------------------------------
# Exercise 2: the causal mask of CLIP's text transformer (Vaswani et al. sec. 3.2.3).
# ---------------------------------------------------------------------------------------------------------

def _show_mask(mask: torch.Tensor) -> str:
    rows = ["[" + " ".join(f"{v:>5.3g}" for v in row) + "]" for row in mask.detach().double().tolist()]
    return "\n    ".join(rows)


def check_causal_mask(fn: Callable) -> None:
    """fn(length) -> (L, L) float additive mask: 0 where key j <= query i, -inf where j > i."""
    hint = ("row i is query position i, column j key position j: 0.0 where j <= i (on and below the diagonal), "
            "-inf where j > i (the strict upper triangle: torch.triu with diagonal=1). Shape (L, L), float.")
    for length in (4, 1, 7):
        where = f"causal_mask({length})"
        got = call(fn, length, hint=hint)
        if not torch.is_tensor(got):
            raise AssertionError(f"{where}: expected a torch.Tensor, got {type(got).__name__}.\n  Hint: {hint}")
        if tuple(got.shape) != (length, length):
            raise AssertionError(f"{where}: expected shape ({length}, {length}), got {tuple(got.shape)}.\n"
                                 f"  Hint: one row per query position, one column per key position. {hint}")
        if not got.is_floating_point():
            raise AssertionError(f"{where}: expected a float tensor, got dtype {got.dtype}.\n"
                                 f"  Hint: this mask is added to the attention scores before the softmax, so it "
                                 f"holds numbers, not booleans (torch's boolean masks mean the opposite: True = "
                                 f"may attend). {hint}")
        allowed = torch.ones(length, length, dtype=torch.bool).tril()                 # (L, L): j <= i
        blocked = got <= -1e9                                                           # -inf, or finfo.min
        if bool(((got == 0) == allowed).all() and (blocked == ~allowed).all()):
            continue
        message = f"{where}: expected 0 on and below the diagonal and -inf above it, got\n    {_show_mask(got)}\n"
        diagonal_too = ~torch.ones(length, length, dtype=torch.bool).tril(diagonal=-1)  # j >= i blocked
        past = ~torch.ones(length, length, dtype=torch.bool).triu()                     # j < i blocked
        if torch.isnan(got).any():
            message += ("  The mask holds NaN: 0 * inf is NaN, so do not build it by multiplying a 0/1 mask by "
                        "inf; fill with -inf and keep the upper triangle (triu) instead.\n")
        elif bool((blocked == diagonal_too).all()):
            message += ("  This is what you get if you mask the diagonal too (triu with diagonal=0): a token "
                        "could not see itself, and the first token would see nothing (its softmax is NaN).\n")
        elif bool((blocked == past).all()) and length > 1:
            message += ("  This is what you get if you mask the past instead of the future: each token would "
                        "read only the tokens after it.\n")
        elif bool((blocked == ~allowed).all()):
            message += ("  The -inf entries are right, but where attention is allowed the mask must be 0: any "
                        "other value is added to those scores.\n")
        elif set(got.unique().tolist()) <= {0.0, 1.0}:
            message += ("  This is a 0/1 mask; an additive mask must hold -inf where attention is forbidden "
                        "(exp(-inf) = 0), since adding 0 or 1 to a score does not stop attention.\n")
        elif not blocked.any() and bool((got < 0).any()):
            message += ("  The negative entries are too small to block attention: use -inf (or "
                        "torch.finfo(dtype).min, as transformers does).\n")
        raise AssertionError(message + f"  Hint: {hint}")

    # Use it as CLIP's text transformer does, and compare with minidiff's causal self-attention.
    g = torch.Generator().manual_seed(31)
    layer = SelfAttention(width=16, heads=2)
    x = torch.randn(2, 6, 16, generator=g)                                              # (B, L, D)
    with torch.no_grad():
        for p in layer.parameters():                  # weights of unit gain, so the attention is far from uniform
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        q, k, v = (rearrange(proj(x), "B L (heads d) -> B heads L d", heads=2)
                   for proj in (layer.q_proj, layer.k_proj, layer.v_proj))              # (B, heads, L, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8) + call(fn, 6, hint=hint)        # (B, heads, L, L)
        h = rearrange(scores.softmax(dim=-1) @ v, "B heads L d -> B L (heads d)")       # (B, L, D)
        expect_close(layer.out_proj(h), layer(x, causal=True),
                     "causal self-attention over 6 tokens with your mask added to the scores (CLIP's text "
                     "layer: minidiff.models.clip.SelfAttention with causal=True)", hint)


# ---------------------------------------------------------------------------------------------------------
# Exercise 3: CLIP's symmetric contrastive loss (Radford et al. 2021, figure 3).
# ---------------------------------------------------------------------------------------------------------

def check_contrastive_loss(fn: Callable) -> None:
    """fn(image_embeddings, text_embeddings, logit_scale) -> (CE(logits) + CE(logits^T)) / 2, 0-d, with
    logits = exp(logit_scale) * normalise(I) normalise(T)^T."""
    hint = ("L2-normalise each row of both (B, E) batches; logits = exp(logit_scale) * I_e @ T_e.T, (B, B); "
            "labels = arange(B) (pair i matches pair i); loss = (cross_entropy(logits, labels) + "
            "cross_entropy(logits.T, labels)) / 2, a 0-d tensor.")
    g = torch.Generator().manual_seed(32)
    batch, dim = 6, 8
    norms = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 0.7]).unsqueeze(1)                  # (B, 1): not unit length
    images = norms * torch.randn(batch, dim, generator=g)                               # (B, E)
    texts = images.flip(0) * 0.3 + torch.randn(batch, dim, generator=g)                 # (B, E), partly aligned
    logit_scale = torch.tensor(math.log(1 / 0.07))                                      # CLIP's initial t
    where = f"contrastive loss of {batch} pairs of {dim}-d embeddings, logit_scale = log(1 / 0.07)"

    cosine = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T                # (B, B)
    labels = torch.arange(batch)

    def symmetric(logits: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    scale = logit_scale.exp()
    expect_close(call(fn, images, texts, logit_scale, hint=hint), contrastive_loss(images, texts, logit_scale),
                 where, hint,
                 mistakes={"forget to L2-normalise the embeddings": symmetric(scale * images @ texts.T),
                           "normalise over the batch (dim 0) instead of each embedding (dim -1)":
                           symmetric(scale * F.normalize(images, dim=0) @ F.normalize(texts, dim=0).T),
                           "keep only the image-to-text direction (cross-entropy over the rows)":
                           F.cross_entropy(scale * cosine, labels),
                           "keep only the text-to-image direction (cross-entropy over the columns)":
                           F.cross_entropy(scale * cosine.T, labels),
                           "add the two directions without halving": 2 * symmetric(scale * cosine),
                           "multiply by logit_scale itself instead of exp(logit_scale)":
                           symmetric(logit_scale * cosine),
                           "divide by exp(logit_scale) (it is the inverse temperature 1 / tau: multiply)":
                           symmetric(cosine / scale),
                           "divide by logit_scale (as if it were the temperature tau)":
                           symmetric(cosine / logit_scale),
                           "sum the cross-entropies over the batch instead of averaging":
                           batch * symmetric(scale * cosine)})

    # Closed forms. Orthogonal, perfectly matched pairs: the right text scores e^t, the B - 1 others 0.
    t = math.log(2.0)
    got = call(fn, 3 * torch.eye(4), 0.5 * torch.eye(4), torch.tensor(t), hint=hint)
    expect_close(got, torch.tensor(math.log(1 + 3 * math.exp(-2.0))),
                 "contrastive loss of 4 orthogonal matched pairs (images 3 I, texts 0.5 I), exp(logit_scale) = 2",
                 "each row's logits are exp(t) = 2 for the match and 0 for the 3 others: "
                 "-log(e^2 / (e^2 + 3)) = log(1 + 3 e^-2) in both directions. " + hint)
    same = torch.randn(1, dim, generator=g).expand(5, dim)                               # (5, E), all equal
    expect_close(call(fn, same, 2 * same, logit_scale, hint=hint), torch.tensor(math.log(5)),
                 "contrastive loss of 5 pairs whose embeddings are all the same",
                 "when every text is equally similar to every image, the loss is chance: log B = log 5. " + hint)

    # The temperature is learned: the gradient must reach logit_scale (and the embeddings).
    learned = logit_scale.clone().requires_grad_()
    images = images.clone().requires_grad_()
    loss = call(fn, images, texts, learned, hint=hint)
    hint_grad = ("CLIP learns logit_scale with the rest of the model: compute exp(logit_scale) with torch "
                 "(logit_scale.exp()), not math.exp or .item(), and do not .detach() anything.")
    if not torch.is_tensor(loss) or not loss.requires_grad:
        raise AssertionError(f"gradient of the loss: it does not depend differentiably on logit_scale and the "
                             f"embeddings.\n  Hint: {hint_grad}")
    loss.backward()
    reference = logit_scale.clone().requires_grad_()
    contrastive_loss(images.detach(), texts, reference).backward()
    for name, grad in (("logit_scale", learned.grad), ("image_embeddings", images.grad)):
        if grad is None:
            raise AssertionError(f"gradient of the loss with respect to {name}: none reached it.\n  Hint: {hint_grad}")
    expect_close(learned.grad, reference.grad, "gradient of the loss with respect to logit_scale", hint_grad)


# ---------------------------------------------------------------------------------------------------------
# Exercise 4: multi-head cross-attention from image tokens to text tokens (LDM sec. 3.3).
# ---------------------------------------------------------------------------------------------------------

def _attention_variant(x, context, w_q, w_k, w_v, w_out, b_out, heads, scale="sqrt", softmax_dim=-1,
                       split="(heads d)", project=True):
    """Cross-attention written out, with one knob per plausible mistake (the defaults give the right result)."""
    width = w_q.shape[0]
    head_dim = width // heads
    q, k, v = x @ w_q.T, context @ w_k.T, context @ w_v.T                          # (B, L, C), (B, M, C) x 2
    q, k, v = (rearrange(t, f"B L {split} -> B heads L d", heads=heads) for t in (q, k, v))   # (B, heads, *, d)
    divisor = {"sqrt": math.sqrt(head_dim), "d": head_dim, "width": math.sqrt(width), "none": 1.0}[scale]
    weights = (q @ k.transpose(-1, -2) / divisor).softmax(dim=softmax_dim)           # (B, heads, L, M)
    h = rearrange(weights @ v, f"B heads L d -> B L {split}")                         # (B, L, C)
    return h @ w_out.T + b_out if project else h                                      # (B, L, C)


def check_cross_attention(fn: Callable) -> None:
    """fn(x, context, w_q, w_k, w_v, w_out, b_out, heads) -> (B, L, C), as minidiff's Attention(C, heads, D)."""
    hint = ("q = x @ w_q.T, k = context @ w_k.T, v = context @ w_v.T (nn.Linear's (out, in) weights); split the "
            "C channels into heads as (heads, head_dim): (B, L, C) -> (B, heads, L, head_dim); "
            "softmax(q k^T / sqrt(head_dim)) over the text tokens (the last axis); merge the heads back to "
            "(B, L, C); then @ w_out.T + b_out.")
    g = torch.Generator().manual_seed(33)
    cases = [("4 heads, 2 x 3 pixels attending to 5 text tokens", 2, 6, 5, 32, 12, 4),
             ("1 head, 4 pixels attending to 3 text tokens", 3, 4, 3, 8, 12, 1),
             ("2 heads, 4 pixels and a single text token", 2, 4, 1, 8, 6, 2)]
    for description, batch, length, context_length, width, context_dim, heads in cases:
        x = torch.randn(batch, length, width, generator=g)                           # (B, L, C): pixels
        context = torch.randn(batch, context_length, context_dim, generator=g)       # (B, M, D_ctx): text
        layer = Attention(width, heads, context_dim)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        weights = (layer.to_q.weight, layer.to_k.weight, layer.to_v.weight, layer.to_out.weight, layer.to_out.bias)
        weights = tuple(w.detach().clone() for w in weights)
        with torch.no_grad():
            expected = layer(x, context)                                              # (B, L, C)
        where = f"cross-attention, {description} (C = {width}, D_ctx = {context_dim})"
        got = call(fn, x, context, *weights, heads, hint="nn.Linear stores its weight as (out, in), so a layer "
                   "computes x @ w.T + b; queries come from x, keys and values from the context (B, M, D_ctx).")
        if context_length == 1:   # one key: its softmax weight is 1, so every pixel receives the same value
            expect_close(got, expected, where,
                         "with a single text token the softmax over the keys is exactly 1, so every pixel gets the "
                         "same output, w_out (w_v c) + b_out. If yours varies from pixel to pixel, the softmax "
                         "runs over the queries instead of the keys. " + hint,
                         mistakes={"take the softmax over the queries (dim -2) instead of the keys (dim -1)":
                                   _attention_variant(x, context, *weights, heads, softmax_dim=-2)})
            continue
        knobs = {"divide the scores by head_dim instead of sqrt(head_dim)": dict(scale="d"),
                 "divide the scores by sqrt(C), the full width, instead of sqrt(head_dim)": dict(scale="width"),
                 "forget to divide the scores by sqrt(head_dim)": dict(scale="none"),
                 "take the softmax over the queries (dim -2) instead of the text tokens (dim -1)": dict(softmax_dim=-2),
                 "split the channels as (head_dim, heads) instead of (heads, head_dim)": dict(split="(d heads)"),
                 "forget the output projection (w_out, b_out)": dict(project=False),
                 "ignore the heads (one head of width C)": dict(heads=1)}
        mistakes = {mistake: _attention_variant(x, context, *weights, **{"heads": heads, **knob})
                    for mistake, knob in knobs.items()}
        expect_close(got, expected, where, hint, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------------
# Exercise 5: dropping the caption in training (Ho & Salimans, algorithm 1).
# ---------------------------------------------------------------------------------------------------------

def check_drop_condition(fn: Callable) -> None:
    """fn(context, null_context, p_uncond, generator) -> (B, L, D): row i is null_context where
    torch.rand(B, generator=generator)[i] < p_uncond, context[i] elsewhere."""
    hint = ("draw u = torch.rand(B, generator=generator), one number per example and nothing else from the "
            "generator; drop example i where u[i] < p_uncond: torch.where(drop.view(B, 1, 1), null_context, "
            "context), which broadcasts the (1, L, D) null_context. Return a new tensor.")
    g = torch.Generator().manual_seed(34)
    batch, length, dim = 64, 5, 8
    context = torch.randn(batch, length, dim, generator=g)                           # (B, L, D): captions
    null_context = torch.randn(1, length, dim, generator=g)                          # (1, L, D): the empty prompt
    kept = context.clone()

    def where_dropped(drop: torch.Tensor) -> torch.Tensor:                           # drop: (B, 1, 1) or (B, L, 1)
        return torch.where(drop, null_context, context)

    for p_uncond, seed in ((0.0, 35), (1.0, 36), (0.1, 37), (0.5, 38)):
        where = f"drop_condition on {batch} captions of shape ({length}, {dim}), p_uncond = {p_uncond}"
        got = call(fn, context, null_context, p_uncond, torch.Generator().manual_seed(seed), hint=hint)
        if not torch.equal(context, kept):
            raise AssertionError(f"{where}: your function changed `context` in place.\n  Hint: the caller still "
                                 f"holds the captions; build the result with torch.where instead of assigning "
                                 f"into context.")

        def replay(*shape: int) -> torch.Tensor:                                     # the draw, replayed
            return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))

        expect_close(got, drop_condition(context, null_context, p_uncond, torch.Generator().manual_seed(seed)),
                     where, hint,
                     mistakes={"drop where u > p_uncond (that drops with probability 1 - p_uncond)":
                               where_dropped((replay(batch) >= p_uncond).view(batch, 1, 1)),
                               "draw one number for the whole batch (then all captions are dropped or none)":
                               where_dropped((replay(1) < p_uncond).view(1, 1, 1).expand(batch, 1, 1)),
                               "draw one number per token instead of one per example":
                               where_dropped((replay(batch, length) < p_uncond).view(batch, length, 1)),
                               "ignore p_uncond and drop nothing": context,
                               "drop every caption": null_context.expand(batch, length, dim)})


# ---------------------------------------------------------------------------------------------------------
# Exercise 6: the guided prediction (Ho & Salimans eq. 6, diffusers' convention).
# ---------------------------------------------------------------------------------------------------------

def check_classifier_free_guidance(fn: Callable) -> None:
    """fn(cond, uncond, guidance_scale) -> uncond + guidance_scale * (cond - uncond)."""
    hint = ("guided = uncond + guidance_scale * (cond - uncond): start from the prediction without the text and "
            "move guidance_scale times along the direction the text adds. 1 gives cond, 0 gives uncond.")
    g = torch.Generator().manual_seed(39)
    cond, uncond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)   # (B, C, h, w)
    saved = cond.clone(), uncond.clone()
    for guidance_scale in (7.5, 1.0, 0.0, 3.0):
        where = f"guided prediction for eps of shape {tuple(cond.shape)}, guidance_scale = {guidance_scale}"
        got = call(fn, cond, uncond, guidance_scale, hint=hint)
        if not (torch.equal(cond, saved[0]) and torch.equal(uncond, saved[1])):
            raise AssertionError(f"{where}: your function changed cond or uncond in place.\n  Hint: the sampler "
                                 f"may reuse both; compute a new tensor (no +=, no .mul_()).")
        s = guidance_scale
        expect_close(got, guide(cond, uncond, guidance_scale), where, hint,
                     mistakes={"swap cond and uncond": cond + s * (uncond - cond),
                               "use guidance_scale as Ho & Salimans' w ((1 + w) cond - w uncond), where diffusers' "
                               "guidance_scale is 1 + w": (1 + s) * cond - s * uncond,
                               "leave out the starting point uncond": s * (cond - uncond)})

    # The same formula in Ho & Salimans' notation: eps_tilde = (1 + w) eps(c) - w eps(null), with w = scale - 1.
    w = 2.0
    expect_close(call(fn, cond, uncond, 1 + w, hint=hint), (1 + w) * cond - w * uncond,
                 f"Ho & Salimans eq. 6 with w = {w}: (1 + w) cond - w uncond, i.e. guidance_scale = 1 + w = {1 + w}",
                 "the paper's w counts the extra push beyond the conditional prediction, so w = 0 means no "
                 "guidance; diffusers' guidance_scale = 1 + w. " + hint)
    # A scalar example to do by hand: cond = 1, uncond = 0.5, scale 7.5 -> 0.5 + 7.5 * 0.5 = 4.25.
    got = call(fn, torch.tensor([1.0]), torch.tensor([0.5]), 7.5, hint=hint)
    expect_close(got, torch.tensor([4.25]), "guided prediction for cond = 1, uncond = 0.5, guidance_scale = 7.5",
                 "0.5 + 7.5 * (1 - 0.5) = 4.25: guidance extrapolates past cond, away from uncond. " + hint)



# ---------------------------------------------------------------------------------------------------------
# Exercise 7 (build-along): the cross-attention block, inside a text-conditional U-Net that learns to follow
# prompts (minidiff.exercises.buildalong_text).
# ---------------------------------------------------------------------------------------------------------

BLOCK_FORMULA = ("q = to_q(x), k = to_k(context), v = to_v(context); split each (B, N, C) into (B, heads, N, "
                 "head_dim) with the channels grouped as (heads, head_dim); softmax(q k^T / sqrt(head_dim)) over "
                 "the text tokens (the last axis); weights @ v, heads merged back to (B, L, C); then to_out. "
                 "Your cross_attention from exercise 4 computes exactly this from the four layers' weights.")
BLOCK_LAYERS = ("to_q: Linear(dim, dim, bias=False); to_k and to_v: Linear(context_dim, dim, bias=False); "
                "to_out: Linear(dim, dim) with a bias; and nothing else that holds weights.")
BLOCK_FLOOR = 0.6          # share of prompts followed (calibration: minidiff.exercises.buildalong_text)
BLOCK_TRAINING_HINT = ("your block matched minidiff's in eval mode, so look at what differs in training: the "
                       "U-Net trains in train mode, where your block must compute the same thing (a dropout "
                       "with p = 1 drops every attention weight and hides the caption from the U-Net); the "
                       "optimizer must see every weight the block uses (registered nn.Linear layers created in "
                       "__init__); and keys and values must come from the context of this call, nothing kept from "
                       "an earlier call, so that each caption steers its own image.")


def _block_weights(layer: Attention) -> tuple[torch.Tensor, ...]:
    return tuple(w.detach().clone() for w in (layer.to_q.weight, layer.to_k.weight, layer.to_v.weight,
                                              layer.to_out.weight, layer.to_out.bias))


def _build_block(cls: Callable, dim: int, heads: int, context_dim: int) -> nn.Module:
    """The learner's block, built and checked to hold minidiff's Attention's weights under the same names."""
    where = f"CrossAttention({dim}, {heads}, {context_dim})"
    block = call(cls, dim, heads, context_dim, hint="__init__(dim, heads, context_dim) creates the layers: "
                 + BLOCK_LAYERS + " Call super().__init__() first.")
    if not isinstance(block, nn.Module):
        raise AssertionError(f"{where}: expected an nn.Module, got {type(block).__name__}.\n"
                             f"  Hint: subclass torch.nn.Module and call super().__init__() in __init__.")
    expected = {name: tuple(w.shape) for name, w in Attention(dim, heads, context_dim).state_dict().items()}
    got = {name: tuple(w.shape) for name, w in block.state_dict().items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(f"{name} {got[name]} (expected {expected[name]})" for name in set(got) & set(expected)
                       if got[name] != expected[name])
        found = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                            f"unexpected {', '.join(extra)}" if extra else "",
                                            f"wrong shapes: {', '.join(wrong)}" if wrong else "") if part)
        raise AssertionError(f"{where}: its weights are not minidiff's Attention's ({found}).\n"
                             f"  Hint: the check copies minidiff's weights into your block by name, so build "
                             f"exactly {BLOCK_LAYERS} nn.Linear keeps its weight as (out, in).")
    return block


def check_CrossAttention(cls: Callable) -> None:
    """cls(dim, heads, context_dim) -> a block with minidiff's Attention's layers; block(x, context) -> (B, L, C)
    equal to Attention's with the same weights (in eval mode); then the block in every cross-attention layer of
    a small text-conditional U-Net, which must learn (in train mode) to draw the colour each prompt names."""
    # Stage 1: the block alone, against minidiff's Attention with the same weights.
    g = torch.Generator().manual_seed(40)
    cases = [("4 heads, 2 x 3 pixels attending to 5 text tokens", 2, 6, 5, 32, 12, 4),
             ("2 heads, 8 pixels attending to 3 text tokens, context as wide as the pixels", 3, 8, 3, 16, 16, 2),
             ("1 head, 4 pixels and a single text token", 2, 4, 1, 8, 6, 1)]
    for description, batch, length, context_length, width, context_dim, heads in cases:
        block = _build_block(cls, width, heads, context_dim)
        reference = Attention(width, heads, context_dim)
        with torch.no_grad():
            for p in reference.parameters():          # weights of unit gain, so the attention is far from uniform
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        block.load_state_dict(reference.state_dict())
        block.eval()                                  # the function itself (a dropout, say, is off)
        x = torch.randn(batch, length, width, generator=g)                            # (B, L, C): pixels
        context = torch.randn(batch, context_length, context_dim, generator=g)        # (B, M, D_ctx): text
        with torch.no_grad():
            expected = reference(x, context)                                           # (B, L, C)
            got = call(block.forward, x, context, hint="forward(x, context): queries from x (B, L, C), keys and values "
                       "from the context (B, M, D_ctx), through the block's own layers. " + BLOCK_FORMULA)
        weights = _block_weights(reference)
        mistakes = {}
        if context_length > 1:
            knobs = {"divide the scores by head_dim instead of sqrt(head_dim)": dict(scale="d"),
                     "forget to divide the scores by sqrt(head_dim)": dict(scale="none"),
                     "take the softmax over the queries (dim -2) instead of the text tokens (dim -1)":
                         dict(softmax_dim=-2),
                     "split the channels as (head_dim, heads) instead of (heads, head_dim)": dict(split="(d heads)"),
                     "forget the output projection (to_out)": dict(project=False),
                     "ignore the heads (one head of width C)": dict(heads=1)}
            mistakes = {mistake: _attention_variant(x, context, *weights, **{"heads": heads, **knob})
                        for mistake, knob in knobs.items() if heads > 1 or knob.get("heads") != 1}
        expect_close(got, expected, f"stage 1 of 2, your block alone: your CrossAttention with minidiff's "
                     f"weights copied in, {description} "
                     f"(C = {width}, D_ctx = {context_dim})", BLOCK_FORMULA, rtol=1e-4, atol=1e-5,
                     mistakes=mistakes)

    # Stage 2: the block in the U-Net, trained; does the U-Net follow the prompt?
    def make(layer: Attention) -> nn.Module:
        block = _build_block(cls, layer.to_q.in_features, layer.heads, layer.to_k.in_features)
        block.load_state_dict(layer.state_dict())                         # the run starts from minidiff's weights
        return block

    prompts, colors = text.judging_prompts()
    stage = "training"
    blocks: list[nn.Module] = []

    initial_weights: dict[str, torch.Tensor] = {}

    def make_and_remember(layer: Attention) -> nn.Module:
        blocks.append(make(layer))
        initial_weights.update({f"{len(blocks) - 1}.{name}": value
                                for name, value in snapshot(blocks[-1]).items()})
        return blocks[-1]

    try:
        model = text.train_text_unet(make_and_remember,
                                     progress="training a text-conditional U-Net with your CrossAttention")
        stage = "sampling from"
        images = text.minidiff_guided_sample(model, prompts, text.GUIDANCE_SCALE)
    except AssertionError:
        raise
    except Exception as e:
        raise AssertionError(f"stage 2 of 2: {stage} the text U-Net with your CrossAttention in its "
                             f"cross-attention layers raised {type(e).__name__}: {e}\n"
                             f"  Hint: {BLOCK_TRAINING_HINT}") from e
    expect_floor(text.prompt_following(images, colors), BLOCK_FLOOR,
                 f"stage 2 of 2, your block in the U-Net: prompt following after {text.STEPS} training steps "
                 f"with your CrossAttention (the share of {len(prompts)} guided samples, {len(text.PROMPTS)} "
                 f"prompts such as {text.PROMPTS[0]!r}, whose object has the colour the prompt names; chance is "
                 f"about 1/3)", BLOCK_TRAINING_HINT)
    # The caption reaches the pixels through almost any block that passes it on, even one cut off from the loss
    # (a detached output still scored 0.64 on the floor above): every weight of the learner's blocks must learn.
    holder = nn.ModuleList(blocks)
    unmoved = unmoved_weights(holder, type(blocks[0]), initial_weights)
    if unmoved:
        example = next(iter(unmoved))
        raise AssertionError(f"stage 2 of 2, your block in the U-Net: in {len(unmoved)} of your {len(blocks)} "
                             f"blocks, weights ended training exactly where they started, so no gradient reached "
                             f"them (in block {example}: {', '.join(unmoved[example])}). The U-Net still follows "
                             f"prompts through its other layers, but your block did not learn.\n"
                             f"  Hint: look for .detach(), .data or torch.no_grad() in forward: a block's output can "
                             f"be right while it is cut off from the loss.")


# ---------------------------------------------------------------------------------------------------------
# Exercise 8 (build-along): a guided DDIM sampler around the learner's classifier_free_guidance, drawing from
# the trained text-conditional U-Net.
# ---------------------------------------------------------------------------------------------------------

SAMPLER_FORMULA = ("at each timestep t of the list: eps_cond = model(x, t, context), eps_uncond = model(x, t, "
                   "null_context) (or one call on the doubled batch, then .chunk(2)); eps = your "
                   "classifier_free_guidance(eps_cond, eps_uncond, guidance_scale); x0_hat = (x - sqrt(1 - "
                   "alpha_bar[t]) eps) / sqrt(alpha_bar[t]); x = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - "
                   "alpha_bar_prev) eps, where alpha_bar_prev is alpha_bar at the next timestep of the list, and "
                   "1.0 after the last one. Return x.")
GUIDED_FLOOR = 0.65        # share of prompts followed with guidance (scale 3); calibration: buildalong_text
GUIDANCE_GAIN = 0.05       # guided (scale 3) minus unguided (scale 1): guidance must help


def _reference_guided_sample(model, x_T, context, null_context, guidance_scale, alpha_bar, timesteps,
                             swap=False, last_alpha_bar=None, shift_alpha=False):
    """Guided deterministic DDIM written out, with one knob per plausible mistake (the defaults are right)."""
    x = x_T
    for i, t in enumerate(timesteps):
        a = alpha_bar[timesteps[i + 1]] if shift_alpha and i + 1 < len(timesteps) else alpha_bar[t]
        if i + 1 < len(timesteps):
            a_prev = alpha_bar[timesteps[i + 1]]
        else:
            a_prev = torch.tensor(1.0) if last_alpha_bar is None else last_alpha_bar
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
        cond, uncond = model(x, t_batch, context), model(x, t_batch, null_context)
        cond, uncond = (uncond, cond) if swap else (cond, uncond)
        eps = guide(cond, uncond, guidance_scale)
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps
    return x


class _CountingGuidance:
    """Stands in for the learner's classifier_free_guidance while their sampler runs: counts the calls."""

    def __init__(self, fn: Callable):
        self.fn, self.calls, self.not_implemented = fn, 0, False

    def __call__(self, *args, **kwargs):
        self.calls += 1
        try:
            return self.fn(*args, **kwargs)
        except NotImplementedError:
            self.not_implemented = True
            raise


def _run_sampler(fn: Callable, args: tuple, what: str) -> tuple[torch.Tensor, int]:
    """fn(*args) with the learner's own classifier_free_guidance counted; returns (result, calls)."""
    namespace = getattr(fn, "__globals__", None)
    own = namespace.get("classifier_free_guidance") if namespace is not None else None
    if not callable(own):
        raise AssertionError(f"{what}: there is no function classifier_free_guidance beside your guided_sample.\n"
                             f"  Hint: guided_sample calls classifier_free_guidance from exercise 6, defined in "
                             f"the same file.")
    counting = _CountingGuidance(own)
    namespace["classifier_free_guidance"] = counting
    try:
        result = call(fn, *args, hint="model(x_t, t, context) takes x_t (N, 3, 8, 8), t a (N,) long tensor and "
                      "context (N, L, D), and returns the noise prediction (N, 3, 8, 8). " + SAMPLER_FORMULA)
    except NotImplementedYet:
        if counting.not_implemented:
            raise AssertionError(f"{what}: your sampler calls classifier_free_guidance, which still raises "
                                 f"NotImplementedError.\n  Hint: do exercise 6 first; guided_sample uses it "
                                 f"at every step.") from None
        raise
    finally:
        namespace["classifier_free_guidance"] = own
    return result, counting.calls


def check_guided_sample(fn: Callable) -> None:
    """fn(model, x_T, context, null_context, guidance_scale, alpha_bar, timesteps) -> x0 (B, 3, H, W): guided
    deterministic DDIM that calls the learner's classifier_free_guidance at every step; equal to minidiff's
    guided DDIM, and with the trained text U-Net, drawing the prompted colour more often than without guidance."""
    process = text.diffusion()
    alpha_bar = process.schedule.alpha_bar                                            # (T,)
    # Stage 1: an untrained text U-Net (weights of a fixed seed): the sampler's arithmetic against minidiff's.
    with torch.random.fork_rng():
        torch.manual_seed(41)
        untrained = text.UNet(text.unet_config()).eval()
    model = text.eps_model(untrained)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    context, null_context = text.encode(prompts), text.encode([""]).expand(3, -1, -1)  # (3, L, D) each
    cases = [(3.0, 4, 42), (7.5, 1, 43), (0.0, 2, 44), (1.0, 3, 45)]
    for guidance_scale, steps, seed in cases:
        timesteps = sample_timesteps(process.num_steps, steps)
        x_T = text.initial_noise(3, seed)
        kept = x_T.clone()
        where = (f"stage 1 of 2, an untrained U-Net: guided_sample of 3 prompts "
                 f"({', '.join(repr(p) for p in prompts)}), guidance_scale = {guidance_scale}, timesteps {timesteps}")
        got, calls = _run_sampler(fn, (model, x_T, context, null_context, guidance_scale, alpha_bar, timesteps),
                                  where)
        if not torch.equal(x_T, kept):
            raise AssertionError(f"{where}: your sampler changed x_T in place.\n  Hint: start from x = x_T and "
                                 f"build each new x as a new tensor (no +=, no .mul_()).")
        with torch.no_grad():
            expected = _reference_guided_sample(model, x_T, context, null_context, guidance_scale, alpha_bar,
                                                timesteps)
        if torch.is_tensor(got) and close(got, expected, rtol=1e-3, atol=1e-4):
            mistakes = {}
        else:
            with torch.no_grad():
                mistakes = {"swap the caption and the empty prompt (cond and uncond)":
                            _reference_guided_sample(model, x_T, context, null_context, guidance_scale, alpha_bar,
                                                     timesteps, swap=True),
                            "leave guidance out (use the prediction with the caption alone)":
                            _reference_guided_sample(model, x_T, context, null_context, 1.0, alpha_bar, timesteps),
                            "end at alpha_bar[0] instead of alpha_bar = 1 after the last timestep":
                            _reference_guided_sample(model, x_T, context, null_context, guidance_scale, alpha_bar,
                                                     timesteps, last_alpha_bar=alpha_bar[0]),
                            "use alpha_bar of the next timestep where the current one's belongs":
                            _reference_guided_sample(model, x_T, context, null_context, guidance_scale, alpha_bar,
                                                     timesteps, shift_alpha=True)}
        expect_close(got, expected, where, SAMPLER_FORMULA, rtol=1e-3, atol=1e-4, mistakes=mistakes)
        if guidance_scale != 1.0 and calls < steps:
            raise AssertionError(f"{where}: your classifier_free_guidance was called {calls} times in {steps} "
                                 f"steps.\n  Hint: call classifier_free_guidance (exercise 6) at every step, on "
                                 f"the two noise predictions; do not write the guidance formula again or use "
                                 f"minidiff's.")

    # Stage 2: the trained text U-Net (minidiff's blocks, trained once per process): does guidance help?
    trained = text.eps_model(text.reference_model())
    prompts, colors = text.judging_prompts()
    context, null_context = text.encode(prompts), text.encode([""]).expand(len(prompts), -1, -1)
    timesteps = sample_timesteps(process.num_steps, text.SAMPLE_STEPS)
    x_T = text.initial_noise(len(prompts))
    where = (f"stage 2 of 2, the trained U-Net: guided_sample of {len(prompts)} prompts with the trained text "
             f"U-Net, {text.SAMPLE_STEPS} steps, guidance_scale = {text.GUIDANCE_SCALE}")
    guided, _ = _run_sampler(fn, (trained, x_T, context, null_context, text.GUIDANCE_SCALE, alpha_bar,
                                  timesteps), where)
    with torch.no_grad():
        expected = _reference_guided_sample(trained, x_T, context, null_context, text.GUIDANCE_SCALE, alpha_bar,
                                            timesteps)
    expect_close(guided, expected, where, SAMPLER_FORMULA, rtol=1e-3, atol=1e-3)
    unguided, _ = _run_sampler(fn, (trained, x_T, context, null_context, 1.0, alpha_bar, timesteps),
                               where.replace(f"= {text.GUIDANCE_SCALE}", "= 1.0"))
    with_guidance, without = text.prompt_following(guided, colors), text.prompt_following(unguided, colors)
    hint = ("guidance pushes each sample away from the empty prompt's prediction, towards the caption's: check the "
            "order of cond and uncond and that guidance_scale reaches your classifier_free_guidance. "
            + SAMPLER_FORMULA)
    expect_floor(with_guidance, GUIDED_FLOOR, f"stage 2 of 2, the trained U-Net: prompt following of your guided "
                 f"samples (the share of {len(prompts)} samples whose object has the colour its prompt names; "
                 f"chance is about 1/3)", hint)
    expect_floor(with_guidance - without, GUIDANCE_GAIN, f"stage 2 of 2, the trained U-Net: prompt following "
                 f"with guidance (scale {text.GUIDANCE_SCALE}: {with_guidance:.3g}) minus without (scale 1: "
                 f"{without:.3g})", hint)


# ---------------------------------------------------------------------------------------------------------
# Running every check.
# ---------------------------------------------------------------------------------------------------------

TITLE = "Chapter 3 exercises"
CHECKS: dict[str, Check] = {
    "bpe_merge": check_bpe_merge,
    "causal_mask": check_causal_mask,
    "contrastive_loss": check_contrastive_loss,
    "cross_attention": check_cross_attention,
    "drop_condition": check_drop_condition,
    "classifier_free_guidance": check_classifier_free_guidance,
    "CrossAttention": build_along(check_CrossAttention),
    "guided_sample": build_along(check_guided_sample),
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch03", CHECKS, TITLE)
