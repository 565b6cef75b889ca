"""Chapter 3's runs: a CLIP trained on Shapes captions (`clip-shapes`), then Stable Diffusion on Shapes (`sd-shapes`).

What their runs do, in the order a run does it:

    clip-shapes:  captions ─ train a BPE tokenizer (OUT/tokenizer) ─ token ids ┐
                  images ──────────────────────────────────────────────────────┴─ contrastive training ─ CLIP
    sd-shapes:    the CLIP run's text tower (frozen, or fine-tuned: text.train_encoder) + the vae-shapes
                  run's autoencoder (frozen); both are the parts that ship with minidiff unless --retrain-parts
                  or text.clip_run / latent.autoencoder_run name other runs
                  captions ─ tokens ─ text encoder ─ contexts (B, L, D), computed once if the encoder is frozen
                  images ─ encoder ─ scaled latents ─ diffusion loss of U-Net(z_t, t, context), 10% captions dropped
                  `minidiff eval` ─ ShapesEval: one image per prompt of the v1 suite, with classifier-free guidance

A run folder is self-contained: the checkpoint holds every network's weights, `tokenizer/` its vocabulary.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from minidiff.config import to_dict
from minidiff.data.shapes_dataset import category_options
from minidiff.data.tokenizer import BPETokenizer
from minidiff.io import load_state_strict
from minidiff.models.clip import CLIP, CLIPConfig, CLIPTextConfig, CLIPTextEncoder, contrastive_loss, retrieval_accuracy
from minidiff.recipes.base import Recipe, RunKind, prerequisite_run, register_kind, register_recipe
from minidiff.recipes.sections import (DataConfig, DiffusionConfig, SampleConfig, check_image_size, check_range,
                                       register_section)
from minidiff.recipes.latent import LatentConfig, attach_autoencoder, autoencoder_tensors, restore_embedded_parts
from minidiff.training.checkpoint import CHECKPOINT, load_checkpoint, unprefixed
from minidiff.training.distributed import is_main
from minidiff.training.loop import TrainConfig, train

TOKENIZER = "tokenizer"           # the run folder's tokenizer files (vocab.json, merges.txt, ...)
GRID_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow cross", "a purple diamond",
                "a cyan circle on the left", "a red square above a blue circle", "two green triangles")


@dataclass
class TextConfig:
    clip_run: str = ""             # run folder of a trained `clip-shapes`; "": the shipped part (or, with
                                   # --retrain-parts, one trained first in OUT/clip)
    vocab_size: int = 1000         # BPE vocabulary learned from the training captions (at most; it may stop early)
    context_length: int = 32       # tokens per prompt, BOS and EOS included (the longest Shapes caption needs 19)
    p_uncond: float = 0.1          # chance a training caption is dropped, so guidance has an unconditional model
    hard_negatives: bool = False   # clip-shapes: each caption naming a place also trains against its left/right swap
    train_encoder: bool = False    # sd-shapes: the diffusion loss fine-tunes the CLIP text tower with the U-Net

    def validate(self) -> None:
        check_range("p_uncond", self.p_uncond, 0.0, 1.0, " (a probability; 0.1 in SD 1.5)")
        check_range("vocab_size", self.vocab_size, 1)
        if self.context_length < 3:
            raise ValueError(f"context_length={self.context_length} leaves no room for a word between BOS and EOS; "
                             f"use at least 3")


@dataclass
class GuidanceConfig:
    guidance_scale: float = 5.0    # classifier-free guidance: 1 is off, 0 ignores the prompt
    negative_prompt: str = ""      # what the unconditional branch encodes ("" as in training)
    guidance_rescale: float = 0.0  # Lin et al.'s phi (0.7 in their paper); 0 is off

    def validate(self) -> None:
        check_range("guidance_scale", self.guidance_scale, 0.0, 100.0, " (1 is off; SD uses 7.5)")
        check_range("guidance_rescale", self.guidance_rescale, 0.0, 1.0, " (0 is off; 0.7 in Lin et al.)")


register_section("text", TextConfig)
register_section("guidance", GuidanceConfig)
register_section("text_encoder", CLIPTextConfig, family="clip-text")


def shapes_captions(n: int, size: int, split: str = "train", options=None) -> tuple[torch.Tensor, list[str]]:
    from minidiff.data import shapes_tensors

    return shapes_tensors(split, n, size, options=options)   # images (n, 3, S, S) in [-1, 1], one caption each


# ---------------------------------------------------------------------------- clip-shapes


SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom", "bottom": "top"}


def swap_spatial_words(caption: str) -> str | None:
    """The caption with every spatial word turned into its opposite, or None if it names no place or relation.

    "a red circle left of a blue square" -> "a red circle right of a blue square": a hard negative that a CLIP
    trained on random batches almost never meets, and that only a text encoder which tells left from right can
    reject."""
    words = caption.split()
    swapped = [SWAPS.get(w, w) for w in words]
    return " ".join(swapped) if swapped != words else None


class Contrastive:
    """CLIP's objective in the training loop's interface: loss(model, (images, input_ids[, negative_ids, has_negative]),
    generator). With the last two, each caption that names a place also brings its swapped twin as a hard negative."""

    def loss(self, model: CLIP, batch: tuple[torch.Tensor, ...], generator=None) -> torch.Tensor:
        images, input_ids = batch[:2]
        hard_negatives = None
        if len(batch) == 4 and batch[3].any():
            negative_ids, has_negative = batch[2:]
            hard_negatives = model.encode_text(negative_ids[has_negative])                 # (M, E)
        return contrastive_loss(*model(images, input_ids), hard_negatives=hard_negatives)


def attach_tokenizer(run_config: dict, out: Path) -> dict:
    """Train the run's BPE tokenizer on its training captions, save it in OUT/tokenizer, size the text tower to it."""
    text, data = run_config["text"], run_config["data"]
    _, captions = shapes_captions(data["train_examples"], run_config["model"]["image"]["image_size"],
                                  options=category_options(data.get("category_weights")))
    tokenizer = BPETokenizer.train(captions, vocab_size=text["vocab_size"])
    tokenizer.save(out / TOKENIZER)
    longest = max(len(tokenizer.encode(c)) for c in captions) + 2            # + BOS and EOS
    if longest > text["context_length"]:
        raise ValueError(f"the longest training caption needs {longest} tokens but text.context_length="
                         f"{text['context_length']}; raise context_length to at least {longest}")
    run_config["model"]["text"].update(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_id,
                                       context_length=text["context_length"])
    return run_config


@torch.no_grad()
def clip_metrics(model: CLIP, sections: dict, run_dir: Path, n: int) -> dict:
    """Zero-shot retrieval on held-out test scenes: top-1 among groups of 100 (chance 0.01), captions deduplicated
    within each group so that two scenes with the same caption do not count against each other."""
    tokenizer = BPETokenizer.from_folder(run_dir / TOKENIZER)
    images, captions = shapes_captions(n, model.config.image.image_size, split="test")
    scores = {"image_to_text": [], "text_to_image": []}
    for start in range(0, n, 100):
        seen, keep = set(), []
        for i in range(start, min(start + 100, n)):
            if captions[i] not in seen:
                seen.add(captions[i])
                keep.append(i)
        ids = tokenizer([captions[i] for i in keep], context_length=model.config.text.context_length)
        result = retrieval_accuracy(model.encode_image(images[keep]), model.encode_text(ids))
        for k in scores:
            scores[k].append((result[k], len(keep)))
    return {f"retrieval_{k}": sum(a * m for a, m in v) / sum(m for _, m in v) for k, v in scores.items()} | {
        "retrieval_group": 100, "test_images": n}


class ClipRun(RunKind):
    """A CLIP (text and image transformers) trained contrastively on captioned scenes, with its own tokenizer."""
    name = "clip"
    sections = ("train", "data", "text")
    what = "a CLIP"

    def prepare(self, run_config, out, progress, retrain_parts, resume):
        return attach_tokenizer(run_config, out)

    def build(self, sections: dict, run_dir: Path) -> torch.nn.Module:
        return CLIP(sections["model"])

    def sample(self, model, sections, n, seed=0, prompts=None, **overrides):
        raise ValueError("this run is a CLIP, which does not sample; `minidiff eval` measures its retrieval, and "
                         "`minidiff train sd-shapes text.clip_run=RUN` conditions a U-Net on its text tower")

    def train(self, sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
        config: CLIPConfig = sections["model"]
        images, captions = shapes_captions(sections["data"].train_examples, config.image.image_size,
                                           options=category_options(sections["data"].category_weights))
        tokenizer = BPETokenizer.from_folder(out / TOKENIZER)
        input_ids = tokenizer(captions, context_length=config.text.context_length)        # (N, L)
        data = (images, input_ids)
        if sections["text"].hard_negatives:
            swapped = [swap_spatial_words(c) for c in captions]
            has_negative = torch.tensor([s is not None for s in swapped])                  # (N,)
            negative_ids = tokenizer([s or "" for s in swapped], context_length=config.text.context_length)  # (N, L)
            data = (images, input_ids, negative_ids, has_negative)
        train(CLIP(config), Contrastive(), data, sections["train"], out, run_config, resume=resume, progress=progress)

    def evaluate(self, model, sections: dict, run_dir: Path, n: int, seed: int = 0, **overrides) -> dict:
        return clip_metrics(model, sections, run_dir, n)


# ---------------------------------------------------------------------------- sd-shapes


def attach_clip(run_config: dict, out: Path, progress: bool, retrain: bool = False, resume: bool = False) -> dict:
    """Find (or train) the run's CLIP, copy its text tower's config and its tokenizer into the run."""
    text = run_config["text"]
    clip_dir, clip_config = prerequisite_run(text["clip_run"], out / "clip", "clip-shapes", "text.clip_run", "a CLIP",
                                             progress, retrain, resume, evaluate_after=True)
    text["clip_run"] = str(clip_dir)
    if (out / TOKENIZER).resolve() != (clip_dir / TOKENIZER).resolve():
        shutil.copytree(clip_dir / TOKENIZER, out / TOKENIZER, dirs_exist_ok=True)
    text_encoder = clip_config["model"]["text"]
    run_config["model"]["cross_attention_dim"] = text_encoder["width"]
    return {**run_config, "text_encoder": {"family": "clip-text", **text_encoder}}


def clip_text_tensors(run_config: dict) -> dict[str, torch.Tensor]:
    """The EMA weights of the CLIP run's text tower."""
    tensors, _ = load_checkpoint(Path(run_config["text"]["clip_run"]) / CHECKPOINT)
    return unprefixed(unprefixed(tensors, "ema"), "text_model")


def build_text_model(sections: dict, run_dir: Path, autoencoder_state: dict | None = None,
                     text_state: dict | None = None):
    from minidiff.models import Autoencoder, build_model
    from minidiff.pipelines.text_to_image import TextToImage

    autoencoder, text_encoder = Autoencoder(sections["autoencoder"]), CLIPTextEncoder(sections["text_encoder"])
    if autoencoder_state is not None:
        load_state_strict(autoencoder, autoencoder_state, "the autoencoder run")
    if text_state is not None:
        load_state_strict(text_encoder, text_state, "the CLIP run's text tower")
    tokenizer = BPETokenizer.from_folder(run_dir / TOKENIZER)
    return TextToImage(build_model(sections["model"]), autoencoder, text_encoder, tokenizer,
                       context_length=sections["text_encoder"].context_length)


@torch.no_grad()
def encode_captions(model, captions: list[str], batch_size: int = 500) -> torch.Tensor:
    """Every caption's context (N, L, D), computed once: the text encoder is frozen, so it never changes."""
    return torch.cat([model.encode_prompts(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)])


def generate(model, sections: dict, prompts: list[str], seed: int = 0, **overrides) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] for prompts, with the run's sampler and guidance (overridable)."""
    s = dataclasses.replace(sections["sample"], **{k: v for k, v in overrides.items() if hasattr(sections["sample"], k)})
    g = dataclasses.replace(sections["guidance"], **{k: v for k, v in overrides.items() if hasattr(sections["guidance"], k)})
    return model.generate(prompts, sections["diffusion"].build(), guidance_scale=g.guidance_scale,
                          negative_prompt=g.negative_prompt, guidance_rescale=g.guidance_rescale, sampler=s.sampler,
                          steps=s.sample_steps, eta=s.eta, seed=seed, clip_x0=s.clip_x0, variance=s.variance)


def save_prompt_grid(model, sections: dict, path: Path) -> None:
    """Four images for each of GRID_PROMPTS, one prompt per half row."""
    from minidiff.plotting import save_grid

    images = generate(model, sections, [p for p in GRID_PROMPTS for _ in range(4)])
    save_grid(images, path, nrow=8)


def text_metrics(model, sections: dict, seed: int = 0, suite: str = "v1", **overrides) -> dict:
    """ShapesEval on a fixed prompt suite: one image per prompt, scored per category (the chapter's number)."""
    from minidiff.eval.shapeseval import evaluate_generator

    result = evaluate_generator(lambda prompts, s: generate(model, sections, prompts, seed=s, **overrides),
                                suite=suite, seed=seed)
    guidance = dataclasses.replace(sections["guidance"], **{k: v for k, v in overrides.items()
                                                            if hasattr(sections["guidance"], k)})
    return {**result, **{f"guidance_{k}" if not k.startswith("guidance") else k: v
                         for k, v in to_dict(guidance).items()}}


class TextToImageRun(RunKind):
    """Stable Diffusion in small: a U-Net with cross-attention on a frozen autoencoder's latents, conditioned on a
    CLIP text tower, trained with caption dropout and sampled with classifier-free guidance."""
    name = "text-to-image"
    sections = ("diffusion", "train", "sample", "guidance", "data", "latent", "text")
    prompts = True
    what = "a text-to-image model"

    def validate(self, sections: dict, recipe: Recipe) -> None:
        check_image_size(sections["model"], "U-Net")

    def prepare(self, run_config, out, progress, retrain_parts, resume):
        run_config = attach_autoencoder(run_config, out, progress, retrain_parts, resume)
        return attach_clip(run_config, out, progress, retrain_parts, resume)

    def build(self, sections: dict, run_dir: Path) -> torch.nn.Module:
        return build_text_model(sections, run_dir)

    def train(self, sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
        from minidiff.process import ConditionalDiffusion

        if resume:
            model = build_text_model(sections, out)
            restore_embedded_parts(model, out)
        else:
            model = build_text_model(sections, out, autoencoder_tensors(run_config), clip_text_tensors(run_config))
        images, captions = shapes_captions(sections["data"].train_examples, sections["autoencoder"].sample_size,
                                           options=category_options(sections["data"].category_weights))
        latents = model.encode(images)                                                  # (N, C, h, w) scaled
        if sections["text"].train_encoder:        # the encoder learns with the U-Net: token ids, encoded every step
            model.train_text_encoder()
            conditions = model.tokenizer(captions, context_length=model.context_length)            # (N, L)
            null_condition = model.tokenizer([""], context_length=model.context_length)            # (1, L)
        else:                                     # frozen: every caption's context once
            conditions, null_condition = encode_captions(model, captions), model.encode_prompts([""])  # (N, L, D)
        objective = ConditionalDiffusion(sections["diffusion"].build(), null_condition,
                                         p_uncond=sections["text"].p_uncond)

        def on_sample(ema, step):
            save_prompt_grid(ema, sections, out / "samples" / f"step_{step:06d}.png")

        _, ema, _ = train(model, objective, (latents, conditions), sections["train"], out, run_config, resume=resume,
                          on_sample=on_sample, progress=progress)
        if is_main():
            save_prompt_grid(ema, sections, out / "samples.png")

    def sample(self, model, sections: dict, n: int, seed: int = 0, prompts: list[str] | None = None,
               **overrides) -> torch.Tensor:
        if not prompts:
            raise ValueError('this run draws images from a prompt: pass --prompt "a red circle left of a blue square"')
        return generate(model, sections, list(prompts), seed=seed)

    def evaluate(self, model, sections: dict, run_dir: Path, n: int, seed: int = 0, **overrides) -> dict:
        return text_metrics(model, sections, seed=seed)


register_kind(ClipRun())
register_kind(TextToImageRun())

register_recipe(Recipe(
    name="clip-shapes",
    description="CLIP on Shapes captions: a BPE tokenizer, a text and an image transformer, contrastive loss",
    kind="clip", chapter=3, preset="clip-toy", presets=("clip-toy",),
    sections=dict(
        train=TrainConfig(steps=4000, batch_size=128, lr=1e-3, warmup_steps=100, weight_decay=0.1, sample_every=0),
        data=DataConfig("shapes", train_examples=20000),
        text=TextConfig(hard_negatives=True)),
    eval_samples=1000,
))

register_recipe(Recipe(
    name="sd-shapes",
    description="Stable Diffusion on Shapes: a frozen CLIP text tower, cross-attention U-Net on vae-shapes latents",
    kind="text-to-image", chapter=3, preset="unet-text-toy", presets=("unet-text-toy",),
    sections=dict(
        diffusion=DiffusionConfig(schedule="scaled_linear", prediction="eps"),
        train=TrainConfig(steps=8000, batch_size=64, lr=2e-3, warmup_steps=100, sample_every=4000),
        sample=SampleConfig(sampler="ddim", sample_steps=50, clip_x0=False),
        guidance=GuidanceConfig(),
        data=DataConfig("shapes", train_examples=20000),
        latent=LatentConfig(),
        text=TextConfig()),
    eval_samples=600,
))
