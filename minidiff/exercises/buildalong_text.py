"""The short text-to-image run that Chapter 3's build-along exercises plug a learner's code into.

A world small enough to train on a CPU in seconds, and still a text-to-image model: one object of the Shapes
world, rendered at 8x8 pixels on black, captioned "a red circle", "a green square", ... (three colours, five
shapes, two sizes). The captions go through the text encoder that ships with minidiff (`clip-shapes`, frozen,
each caption encoded once); a text-conditional U-Net (cross-attention at 4x4 and in the middle, as in
`UNetConfig.text_toy`) learns v-prediction with 20% of the captions dropped, so that classifier-free guidance has
an unconditional model to push away from. At 8x8 the shapes are blobs; what the run learns to draw is the colour
the prompt names, and `prompt_following` judges exactly that: the share of samples whose object has the colour
of its prompt.

    captions ─ tokenizer ─ CLIP text tower (frozen) ─ contexts (N, L, 64)  ┐
    8x8 scenes ─ v-prediction loss of U-Net(x_t, t, context) ──────────────┴─ AdamW, `STEPS` steps of `BATCH`
    prompts ─ contexts ─ guided DDIM sampler ─ 8x8 images ─ colour of the object ─ prompt_following

`train_text_unet(make_attention)` builds the U-Net with a fixed seed, hands each cross-attention layer to
`make_attention` (a build-along check puts the learner's block there, with minidiff's weights copied in), and
trains it. `reference_model()` is the same run with minidiff's own blocks, trained once per process.
Papers: latent diffusion (arXiv:2112.10752) sec. 3.3; classifier-free guidance (arXiv:2207.12598);
v-prediction (arXiv:2202.00512) sec. 4; DDIM (arXiv:2010.02502) eq. 12.

Calibration of the floors in minidiff.exercises.ch03 (prompt following of the 36 judged samples, minidiff's
guided DDIM, 20 steps; training seeds 0, 1, 2; the checks use seed 0). Measured on a shared 2-core machine with
one thread: a 300-step run costs 11 to 15 s of CPU time (wall time was 3 to 6 times that under others' load).

| the U-Net's cross-attention                                   | scale 1          | scale 3          |
|---------------------------------------------------------------|------------------|------------------|
| minidiff's Attention (what a correct block reproduces)        | 0.72, 0.56, 0.50 | 0.83, 0.81, 0.78 |
| the caption hidden in training (a dropout with p = 1)         | 0.17, 0.25, 0.28 | 0.17, 0.25, 0.31 |
| the caption replaced by zeros in training                     | 0.17, 0.25       | 0.17, 0.25       |
| output detached (the block's weights never train)             | 0.39, 0.44       | 0.64, 0.53       |
| keys and values detached, or 90% of attention weights dropped | 0.53 to 0.69     | 0.75 to 0.86     |

Chance is about 1/3 of the samples that draw an object. The caption gets through almost any block that passes
it on at all: detaching keys and values, or dropping 90% of the attention weights in training, still follows
prompts; what fails is a block that hides the caption while the U-Net trains. With 200 steps instead of 300,
minidiff's blocks reached 0.92, 0.64 and 0.75 at scale 3: too spread for a floor, hence 300.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from minidiff.blocks.attention import Attention, TransformerBlock
from minidiff.config import from_dict
from minidiff.data.shapes import COLORS, SHAPES, Scene, ShapeObject, render
from minidiff.data.tokenizer import BPETokenizer
from minidiff.exercises.checking import one_thread
from minidiff.io import load_state_strict
from minidiff.models.clip import CLIPTextConfig, CLIPTextEncoder
from minidiff.models.unet import UNet, UNetConfig
from minidiff.process.ddpm import GaussianDiffusion
from minidiff.process.guidance import ConditionalDiffusion, guided_model
from minidiff.process.samplers import sample
from minidiff.process.schedules import NoiseSchedule
from minidiff.recipes.base import PARTS_DIR
from minidiff.training.checkpoint import load_checkpoint, unprefixed

CLIP_PART = PARTS_DIR / "clip-shapes"                 # the CLIP that ships with minidiff (Chapter 3)
SIZE = 8                                  # pixels per side
TRAIN_COLORS = ("red", "green", "blue")   # the colours the captions name; chance is 1/3
TRAIN_SIZES = ("medium", "large")         # small objects are a pixel or two at 8x8
TRAIN_SCENES = 2000
CONTEXT_LENGTH = 8                        # BOS, "a", colour, shape, EOS and padding: the encoder is causal, so
                                          # these 8 tokens are the first 8 of the 32 it was trained with
P_UNCOND = 0.2                            # captions dropped in training (SD 1.5: 0.1; more helps a short run)
STEPS, BATCH, LR = 300, 32, 3e-3
SEED = 0
SAMPLE_STEPS = 20                         # DDIM steps when judging
GUIDANCE_SCALE = 3.0                      # the guided sampler's scale when judging
PROMPT_SHAPES = ("circle", "square", "triangle", "diamond")
PROMPTS = tuple(f"a {color} {shape}" for color in TRAIN_COLORS for shape in PROMPT_SHAPES)
SAMPLES_PER_PROMPT = 3
OBJECT_BRIGHTNESS = 0.35                  # a pixel is the object's when its brightest channel (in [0, 1]) is above
MIN_OBJECT_PIXELS = 3                     # fewer bright pixels than this: no object drawn


def unet_config() -> UNetConfig:
    """The text-conditional U-Net of the build-along run: 261,267 parameters, two levels (8x8 and 4x4)."""
    return UNetConfig(in_channels=3, out_channels=3, sample_size=SIZE, block_channels=(16, 32),
                      attention_levels=(1,), layers_per_block=1, norm_groups=8, cross_attention_dim=64,
                      attention_heads=(2,), transformer_depth=(1,))


def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.make("cosine", 1000), prediction="v")


# ---------------------------------------------------------------------------------------------------------
# The data and the text encoder.
# ---------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _text_encoder() -> tuple[CLIPTextEncoder, BPETokenizer]:
    """The text tower and tokenizer of the CLIP that ships with minidiff (its EMA weights)."""
    checkpoint = CLIP_PART / "checkpoint.safetensors"
    if not checkpoint.is_file():
        raise AssertionError(f"the shipped text encoder is missing ({checkpoint}).\n"
                             f"  Hint: reinstall minidiff from a full checkout; the build-along run needs it.")
    tensors, meta = load_checkpoint(checkpoint)
    encoder = CLIPTextEncoder(from_dict(CLIPTextConfig, meta["config"]["model"]["text"]))
    load_state_strict(encoder, unprefixed(unprefixed(tensors, "ema"), "text_model"), "the shipped CLIP's text tower")
    return encoder.eval(), BPETokenizer.from_folder(CLIP_PART / "tokenizer")


@torch.no_grad()
def encode(prompts: list[str]) -> torch.Tensor:
    """Prompts -> contexts (B, CONTEXT_LENGTH, 64): the frozen CLIP text tower's last hidden states."""
    encoder, tokenizer = _text_encoder()
    return encoder(tokenizer(list(prompts), context_length=CONTEXT_LENGTH))[0]      # (B, L, D)


@functools.lru_cache(maxsize=1)
def training_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (N, 3, 8, 8) in [-1, 1], contexts (N, L, D), null context (1, L, D)), the same in every process."""
    rng = np.random.default_rng(SEED)
    images, captions = [], []
    for _ in range(TRAIN_SCENES):
        color, shape = TRAIN_COLORS[rng.integers(len(TRAIN_COLORS))], SHAPES[rng.integers(len(SHAPES))]
        size = TRAIN_SIZES[rng.integers(len(TRAIN_SIZES))]
        r = ShapeObject(shape, color, size, 0.5, 0.5).r
        x, y = rng.uniform(r, 1 - r, size=2)                   # the whole object on the canvas
        images.append(render(Scene([ShapeObject(shape, color, size, float(x), float(y))]), SIZE))
        captions.append(f"a {color} {shape}")
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1      # (N, 3, 8, 8)
    distinct = sorted(set(captions))
    table = encode(distinct)                                                                  # (K, L, D)
    contexts = table[torch.tensor([distinct.index(c) for c in captions])]                    # (N, L, D)
    return pixels, contexts, encode([""])


# ---------------------------------------------------------------------------------------------------------
# Training, with the learner's cross-attention block in the U-Net.
# ---------------------------------------------------------------------------------------------------------

def cross_attention_layers(model: nn.Module) -> list[tuple[TransformerBlock, Attention]]:
    """Every (transformer block, its cross-attention layer attn2) of a text-conditional U-Net."""
    return [(block, block.attn2) for block in model.modules() if isinstance(block, TransformerBlock)]


def train_text_unet(make_attention: Callable[[Attention], nn.Module] | None = None, steps: int = STEPS,
                    progress: str | None = None, seed: int = SEED) -> UNet:
    """The build-along run: a fixed-seed U-Net whose cross-attention layers are make_attention(minidiff's layer)
    (left as they are when None), trained for `steps` steps; returned in eval mode.

    Errors raised by the model or its loss propagate; a non-finite loss raises FloatingPointError."""
    images, contexts, null_context = training_data()
    with torch.random.fork_rng():                 # the same initial weights in every run, the caller's RNG untouched
        torch.manual_seed(seed)
        model = UNet(unet_config())
        if make_attention is not None:
            for block, layer in cross_attention_layers(model):
                block.attn2 = make_attention(layer)
    objective = ConditionalDiffusion(diffusion(), null_context, p_uncond=P_UNCOND)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    with one_thread():
        for step in range(1, steps + 1):
            index = torch.randint(0, len(images), (BATCH,), generator=generator)            # (B,)
            loss = objective.loss(model, (images[index], contexts[index]), generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss.item()} at step {step}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress and (step % 100 == 0 or step == steps):
                print(f"      {progress}: step {step}/{steps}, loss {loss.item():.3f}, "
                      f"{time.time() - start:.0f} s", flush=True)
    return model.eval()


@functools.lru_cache(maxsize=1)
def reference_model() -> UNet:
    """The build-along run with minidiff's own blocks, trained once per process."""
    return train_text_unet(progress="training the reference text U-Net (minidiff's blocks)")


# ---------------------------------------------------------------------------------------------------------
# Sampling and judging.
# ---------------------------------------------------------------------------------------------------------

def eps_model(model: nn.Module) -> Callable:
    """The v-predicting U-Net as a noise predictor (x_t, t, context) -> eps_hat, as Chapter 1's samplers take it.

    eps_hat = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t: affine in the network's output with the same
    coefficients for the captioned and the uncaptioned call, so guiding eps is guiding v."""
    process = diffusion()

    def predict(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.numel() not in (1, x_t.shape[0]) or t.is_floating_point():
            raise ValueError(f"t has shape {tuple(t.shape)} and dtype {t.dtype}; pass a ({x_t.shape[0]},) long "
                             f"tensor, one timestep per sample of x_t")
        if not 0 <= int(t.min()) <= int(t.max()) < process.num_steps:
            raise ValueError(f"timestep {int(t.max()) if int(t.max()) >= process.num_steps else int(t.min())} is "
                             f"outside 0..{process.num_steps - 1}; pass the timesteps of the list as they are")
        t = t.reshape(-1).expand(x_t.shape[0])                                                   # (B,)
        return process.predict_x0_eps(model(x_t, t, context), x_t, t)[1]

    return predict


def judging_prompts() -> tuple[list[str], list[str]]:
    """The prompts to sample, SAMPLES_PER_PROMPT times each, and the colour each one names."""
    prompts = [p for p in PROMPTS for _ in range(SAMPLES_PER_PROMPT)]
    return prompts, [p.split()[1] for p in prompts]


def initial_noise(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))       # (B, 3, 8, 8)


@torch.no_grad()
def minidiff_guided_sample(model: nn.Module, prompts: list[str], guidance_scale: float, seed: int = 1) -> torch.Tensor:
    """Images (B, 3, 8, 8) for prompts from minidiff's guided DDIM (SAMPLE_STEPS steps), from initial_noise(B, seed)."""
    context, null_context = encode(prompts), encode([""]).expand(len(prompts), -1, -1)          # (B, L, D) each
    x_T = initial_noise(len(prompts), seed)
    guided = guided_model(eps_model(model), context, null_context, guidance_scale)
    noise_process = GaussianDiffusion(diffusion().schedule)                 # eps_model predicts eps
    with one_thread():
        return sample(guided, noise_process, tuple(x_T.shape), sampler="ddim", steps=SAMPLE_STEPS,
                      initial_noise=x_T)


def object_colors(images: torch.Tensor) -> list[str | None]:
    """The colour name of the object in each image (B, 3, H, W) in [-1, 1]: the mean colour of the pixels whose
    brightest channel exceeds OBJECT_BRIGHTNESS, matched to the nearest of the Shapes world's six colours;
    None where fewer than MIN_OBJECT_PIXELS pixels are that bright."""
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255                 # (6, 3)
    names = list(COLORS)
    colors = []
    for image in (images.detach().float().clamp(-1, 1) + 1) / 2:                              # (3, H, W) in [0, 1]
        bright = image.amax(dim=0) > OBJECT_BRIGHTNESS                                        # (H, W)
        if int(bright.sum()) < MIN_OBJECT_PIXELS:
            colors.append(None)
            continue
        mean = image[:, bright].mean(dim=1)                                                   # (3,)
        colors.append(names[int(((palette - mean) ** 2).sum(dim=1).argmin())])
    return colors


def prompt_following(images: torch.Tensor, colors: list[str]) -> float:
    """The share of images whose object has the colour its prompt names."""
    return sum(got == wanted for got, wanted in zip(object_colors(images), colors)) / len(colors)
