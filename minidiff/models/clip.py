"""CLIP: a text transformer and an image transformer trained to agree, and Stable Diffusion 1.x's text encoder.

Paper: Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision
(arXiv:2103.00020), section 2.3-2.4 and figure 3; the image tower is a Vision Transformer (Dosovitskiy et al.
2020, arXiv:2010.11929) with CLIP's extra LayerNorm before the layers.

    input_ids (B, L) ─ token + position embeddings ─ [pre-LN causal layer] x N ─ final LN ─ (B, L, D)
                                  (causal=False: bidirectional, padding after EOS masked)
                                                            pooled: the row at the end-of-text token ─ (B, D)
    images (B, 3, H, W) ─ patches + class token + positions ─ LN ─ [pre-LN layer] x N ─ LN(class token) ─ (B, D)
    both ─ linear projection ─ (B, E) ─ L2-normalise ─ cosine similarities x exp(t) ─ symmetric cross-entropy

| code                                  | paper (figure 3)                                                 |
|---------------------------------------|------------------------------------------------------------------|
| `pooled` of each tower                | I_f, T_f: the image tower's class token, the text tower's [EOS] row |
| `image_projection`, `text_projection` | W_i, W_t (linear, no bias)                                       |
| `image_embeddings`, `text_embeddings` | I_f W_i, T_f W_t; L2-normalised inside the loss to I_e, T_e      |
| `logit_scale`                         | t, the learned log inverse temperature: logits = exp(t) I_e T_e^T |
| `temperature_init`                    | tau = 0.07 at the start, so t = log(1 / 0.07)                     |
| `max_logit_scale`                     | 100: exp(t) is clipped so logits are scaled by at most 100 (2.5)  |

SD 1.x conditions its U-Net on the text tower of CLIP ViT-L/14 (`CLIPTextConfig.clip_vit_l_text`, 123,060,480
parameters): the whole 77 x 768 `last_hidden_state`, after the final LayerNorm. Module names follow
transformers' CLIPTextModel, so its folders load with a one-line key map (minidiff/models/clip_transformers.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minidiff.blocks.embeddings import sinusoidal_embedding

ACTIVATIONS = ("quick_gelu", "gelu")
POOLING_RULES = ("first_eos", "argmax")
IMAGE_POSITIONS = ("learned", "sincos")


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408                 # token ids 0..vocab_size-1 (49,408 BPE tokens for OpenAI's CLIP)
    context_length: int = 77                # learned positions: the longest input, padding included
    width: int = 768                        # D, the hidden size
    layers: int = 12                        # transformer layers
    heads: int = 12                         # attention heads (head_dim = width / heads)
    mlp_width: int = 3072                   # hidden size of each layer's MLP (4 D)
    activation: str = "quick_gelu"          # 'quick_gelu' x*sigmoid(1.702x) (OpenAI) or 'gelu' (OpenCLIP)
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407               # the end-of-text token whose output row is `pooled`
    pooling: str = "first_eos"              # 'first_eos': first position equal to eos_token_id;
                                            # 'argmax': position of the largest id (OpenAI's rule)
    projection_dim: int | None = None       # a linear map (no bias) applied to `pooled`; None: none
    causal: bool = True                     # CLIP's mask: token i sees tokens <= i; False: every token sees all
                                            # tokens up to EOS (bidirectional, as T5's encoder)

    def __post_init__(self):
        _check_transformer(self, "text")
        if self.pooling not in POOLING_RULES:
            raise ValueError(f"pooling={self.pooling!r} is unknown; use one of {POOLING_RULES}")

    @classmethod
    def toy(cls, **overrides) -> "CLIPTextConfig":
        """Shapes captions on a CPU: 2 layers of width 64 over 32 positions. Set vocab_size=len(tokenizer) and
        eos_token_id=tokenizer.eos_id for the BPE tokenizer the captions are encoded with (minidiff.data.tokenizer
        puts EOS last, as CLIP does, so the defaults fit a tokenizer trained to 1024 tokens)."""
        defaults = dict(vocab_size=1024, context_length=32, width=64, layers=2, heads=4, mlp_width=256,
                        eos_token_id=1023)
        return cls(**{**defaults, **overrides})

    @classmethod
    def clip_vit_l_text(cls, **overrides) -> "CLIPTextConfig":
        """The text tower of OpenAI's CLIP ViT-L/14, SD 1.x's text encoder: 123,060,480 parameters."""
        return cls(**overrides)


@dataclass
class CLIPImageConfig:
    image_size: int = 32                    # H = W of the input images
    patch_size: int = 4                     # p: the image is cut into (H/p)^2 patches, one token each
    in_channels: int = 3
    width: int = 64                         # D
    layers: int = 2
    heads: int = 4
    mlp_width: int = 256
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    position_embedding: str = "learned"     # 'learned' (CLIP) or 'sincos': fixed 2D sin-cos features of (row, column)

    def __post_init__(self):
        _check_transformer(self, "image")
        if self.position_embedding not in IMAGE_POSITIONS:
            raise ValueError(f"position_embedding={self.position_embedding!r} is unknown; use one of {IMAGE_POSITIONS}")
        if self.position_embedding == "sincos" and self.width % 4:
            raise ValueError(f"sincos positions split width {self.width} into 4 parts; pick a width divisible by 4")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                             f"pick a patch size that divides it")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class CLIPConfig:
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig.toy)    # the text tower (projection_dim None)
    image: CLIPImageConfig = field(default_factory=CLIPImageConfig)     # the image tower
    embed_dim: int = 64                     # E, the shared embedding space of both projections
    temperature_init: float = 0.07          # tau at the start: logit_scale = log(1 / tau)
    max_logit_scale: float = 100.0          # exp(logit_scale) is clamped to at most this

    def __post_init__(self):
        if isinstance(self.text, dict):     # a config read back from JSON
            self.text = CLIPTextConfig(**self.text)
        if isinstance(self.image, dict):
            self.image = CLIPImageConfig(**self.image)
        if self.text.projection_dim is not None:
            raise ValueError("CLIPConfig.text has projection_dim set; the CLIP model owns both projections "
                             "(embed_dim), so leave the text tower's projection_dim=None")

    @classmethod
    def toy(cls, **overrides) -> "CLIPConfig":
        """Shapes images (32x32) and captions on a CPU: two 2-layer towers of width 64, 64-d shared space.

        The image tower takes fixed sin-cos positions: with CLIP's learned ones, a 1,500-step run learned rows and
        not columns (it hardly told an image from its mirror image), so its text tower never told "left" from
        "right" (benchmarks/probe_clip_spatial.py; Chapter 3, section 7)."""
        return cls(**{"image": CLIPImageConfig(position_embedding="sincos"), **overrides})


def _check_transformer(config, tower: str) -> None:
    if config.width % config.heads:
        raise ValueError(f"{tower} width {config.width} is not divisible by heads {config.heads}; "
                         f"pick a head count that divides it")
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"{tower} activation={config.activation!r} is unknown; use one of {ACTIVATIONS}")


# ---------------------------------------------------------------------------- the transformer layer, shared


class SelfAttention(nn.Module):
    """Multi-head self-attention, optionally causal: position i attends to positions j <= i only.

    (B, L, D) -> (B, L, D).  Attention(Q, K, V) = softmax(Q K^T / sqrt(head_dim) + M) V, where the causal mask M
    is -inf above the diagonal (Vaswani et al. 2017, arXiv:1706.03762, eq. 1).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
        """keep (B, L) bool, optional: the keys each row may attend to (False: padding, never read)."""
        q, k, v = (rearrange(proj(x), "B L (heads d) -> B heads L d", heads=self.heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))              # (B, heads, L, head_dim)
        mask = None if keep is None else keep[:, None, None, :]                       # (B, 1, 1, L)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, heads, L, head_dim)
        return self.out_proj(rearrange(h, "B heads L d -> B L (heads d)"))            # (B, L, D)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """(B, L, D) -> (B, L, D): fc1 to mlp_width, activation, fc2 back."""

    def __init__(self, width: int, mlp_width: int, activation: str):
        super().__init__()
        self.activation = quick_gelu if activation == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x = x + attention(LN1(x));  x = x + MLP(LN2(x)).  (B, L, D) -> (B, L, D)."""

    def __init__(self, config: CLIPTextConfig | CLIPImageConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config.width, config.heads)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, config.mlp_width, config.activation)

    def forward(self, x: torch.Tensor, causal: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal, keep)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """A stack of EncoderLayers; `skip_last` leaves out the last layers (the clip_skip of SD pipelines)."""

    def __init__(self, config: CLIPTextConfig | CLIPImageConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))

    def forward(self, x: torch.Tensor, causal: bool, skip_last: int = 0,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers[: len(self.layers) - skip_last]:
            x = layer(x, causal, keep)                                                 # (B, L, D)
        return x


# ---------------------------------------------------------------------------- text tower


class TextEmbeddings(nn.Module):
    """input_ids (B, L) -> token embedding + learned position embedding (B, L, D)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context_length, config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)      # CLIP's initialisation
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)            # (L,)
        return self.token_embedding(input_ids) + self.position_embedding(positions)      # (B, L, D)


class CLIPTextEncoder(nn.Module):
    """CLIP's text transformer: causal self-attention over the tokens, a final LayerNorm, pooled at EOS."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection = (nn.Linear(config.width, config.projection_dim, bias=False)
                                if config.projection_dim is not None else None)

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B,): where each row's end-of-text token is (transformers' CLIPTextModel rule)."""
        if self.config.pooling == "argmax":          # OpenAI's rule; transformers uses it when eos_token_id == 2
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == self.config.eos_token_id                                   # (B, L)
        if not bool(is_eos.any(dim=-1).all()):
            row = int((~is_eos.any(dim=-1)).nonzero()[0])
            raise ValueError(f"row {row} of input_ids has no end-of-text token (id {self.config.eos_token_id}); "
                             f"encode text with the tokenizer that appends it, truncating before it")
        return is_eos.int().argmax(dim=-1)           # the first EOS: padding may repeat the EOS id

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, L), L <= context_length -> (last_hidden_state (B, L, D), pooled (B, D)).

        pooled is last_hidden_state at the end-of-text token, then `text_projection` (B, projection_dim) if the
        config has one. clip_skip=k stops k layers early; the final LayerNorm is applied all the same (diffusers).
        """
        if input_ids.ndim != 2 or input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"expected token ids of shape (B, L) with L <= {self.config.context_length}, got "
                             f"{tuple(input_ids.shape)}; tokenize with max_length={self.config.context_length}")
        if not 0 <= clip_skip < self.config.layers:
            raise ValueError(f"clip_skip={clip_skip} is out of range; use 0..{self.config.layers - 1}")
        eos = self.pooled_positions(input_ids)                                           # (B,)
        # Causal: padding after EOS is never read by the tokens before it. Bidirectional: mask it out explicitly.
        keep = None if self.config.causal else (torch.arange(input_ids.shape[1], device=input_ids.device)
                                                <= eos[:, None])                         # (B, L)
        x = self.embeddings(input_ids)                                                   # (B, L, D)
        x = self.encoder(x, self.config.causal, skip_last=clip_skip, keep=keep)          # (B, L, D)
        x = self.final_layer_norm(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]                       # (B, D)
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)                                        # (B, projection_dim)
        return x, pooled


# ---------------------------------------------------------------------------- image tower


class ImageEmbeddings(nn.Module):
    """images (B, C, H, W) -> [class token, one token per p x p patch] + positions (B, 1 + N, D).

    Positions are CLIP's learned vectors, or (position_embedding='sincos') fixed: the first half of the width holds
    sinusoidal features of the patch's row, the second half of its column, zero for the class token, so that from
    the first step "where" is a smooth, linear feature of every patch token, as in MAE (He et al. 2021)."""

    def __init__(self, config: CLIPImageConfig):
        super().__init__()
        scale = config.width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(config.width))
        self.patch_embedding = nn.Conv2d(config.in_channels, config.width, config.patch_size,
                                         stride=config.patch_size, bias=False)
        if config.position_embedding == "learned":
            self.position_embedding = nn.Parameter(scale * torch.randn(1 + config.num_patches, config.width))
        else:
            self.register_buffer("position_embedding", grid_sincos(config.image_size // config.patch_size,
                                                                    config.width), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = rearrange(self.patch_embedding(images), "B D h w -> B (h w) D")      # (B, N, D)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)                       # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.position_embedding               # (B, 1 + N, D)


def grid_sincos(side: int, width: int) -> torch.Tensor:
    """(1 + side^2, width): a zero row for the class token, then per patch (row-major) sin-cos features of its row
    (first width/2 channels) and of its column (last width/2), at angular frequencies from 1 down to 1 / (4 * side)
    per patch, scaled to unit norm."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")    # (side, side) each
    features = torch.cat([sinusoidal_embedding(rows.flatten(), width // 2, freq_shift=0, max_period=side * 4),
                          sinusoidal_embedding(cols.flatten(), width // 2, freq_shift=0, max_period=side * 4)], dim=1)
    features = features * (2 / width) ** 0.5          # unit norm, as the learned positions' scale at initialisation
    return torch.cat([torch.zeros(1, width), features])                                 # (1 + side^2, width)


class CLIPImageEncoder(nn.Module):
    """A small ViT as in CLIP: LayerNorm before and after the layers; the output is the class token's row."""

    def __init__(self, config: CLIPImageConfig):
        super().__init__()
        self.config = config
        self.embeddings = ImageEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> (last_hidden_state (B, 1 + N, D), pooled (B, D))."""
        c, size = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, size, size):
            raise ValueError(f"expected images of shape (B, {c}, {size}, {size}), got {tuple(images.shape)}; "
                             f"resize them to {size}x{size} (the image tower's position embeddings are fixed)")
        x = self.pre_layernorm(self.embeddings(images))                                  # (B, 1 + N, D)
        x = self.encoder(x, causal=False)                                                # (B, 1 + N, D)
        return x, self.post_layernorm(x[:, 0])                                           # (B, D)


# ---------------------------------------------------------------------------- CLIP and its loss


class CLIP(nn.Module):
    """Both towers, their projections into one E-dimensional space, and the learned temperature."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextEncoder(config.text)
        self.vision_model = CLIPImageEncoder(config.image)
        self.text_projection = nn.Linear(config.text.width, config.embed_dim, bias=False)     # W_t
        self.image_projection = nn.Linear(config.image.width, config.embed_dim, bias=False)   # W_i
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature_init)))  # t

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> text embeddings (B, E), not normalised."""
        return self.text_projection(self.text_model(input_ids)[1])                      # (B, E)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> image embeddings (B, E), not normalised."""
        return self.image_projection(self.vision_model(images)[1])                      # (B, E)

    def clamped_logit_scale(self) -> torch.Tensor:
        """t, clamped so that exp(t) <= max_logit_scale (section 2.5); past the clamp its gradient is zero."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), input_ids (B, L) -> (image_embeddings (B, E), text_embeddings (B, E), logit_scale ()).

        The three outputs are contrastive_loss's arguments: `contrastive_loss(*model(images, input_ids))`.
        """
        return self.encode_image(images), self.encode_text(input_ids), self.clamped_logit_scale()


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor, hard_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a batch of B matching (image, text) pairs (figure 3).

        I_e = I / |I|,  T_e = T / |T|                    (rows L2-normalised)
        logits = exp(t) * I_e T_e^T                       (B, B): row i scores image i against every text
        loss = ( CE(logits, labels) + CE(logits^T, labels) ) / 2,   labels = 0..B-1 (the diagonal matches)

    image_embeddings, text_embeddings (B, E); logit_scale t: a scalar (log of the inverse temperature).
    hard_negatives (M, E): extra captions that match no image (NegCLIP, Yuksekgonul et al. 2023, arXiv:2210.01936:
    e.g. each caption with "left" and "right" swapped); they join the image-to-text side as M more wrong answers.
    """
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(f"expected two (B, E) batches of matching pairs, got {tuple(image_embeddings.shape)} and "
                         f"{tuple(text_embeddings.shape)}; pass one text per image, in the same order")
    image_embeddings = F.normalize(image_embeddings, dim=-1)                             # (B, E)
    text_embeddings = F.normalize(text_embeddings, dim=-1)                               # (B, E)
    logits = logit_scale.exp() * image_embeddings @ text_embeddings.T                    # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)                         # (B,)
    image_to_text = logits
    if hard_negatives is not None:      # NegCLIP: more wrong captions for each image to lose against
        negatives = logit_scale.exp() * image_embeddings @ F.normalize(hard_negatives, dim=-1).T   # (B, M)
        image_to_text = torch.cat([logits, negatives], dim=1)                           # (B, B + M)
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def retrieval_accuracy(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> dict[str, float]:
    """Top-1 retrieval among B matching pairs (B, E) each: the fraction of images whose most similar text is
    their own ('image_to_text'), and of texts whose most similar image is their own ('text_to_image').

    Chance is 1/B. Pairs with identical captions count as misses when the other copy wins: deduplicate first.
    """
    similarity = F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T   # (B, B)
    target = torch.arange(similarity.shape[0], device=similarity.device)                         # (B,)
    return {"image_to_text": (similarity.argmax(dim=1) == target).float().mean().item(),
            "text_to_image": (similarity.argmax(dim=0) == target).float().mean().item()}
