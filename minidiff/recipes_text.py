"""Chapter 3's runs: a CLIP trained on Shapes captions (`clip-shapes`), then Stable Diffusion on Shapes (`sd-shapes`).

The recipes themselves (their defaults and config sections) are in minidiff/recipes.py with the others; this file
holds what their runs do, in the order a run does it:

    clip-shapes:  captions ─ train a BPE tokenizer (OUT/tokenizer) ─ token ids ┐
                  images ──────────────────────────────────────────────────────┴─ contrastive training ─ CLIP
    sd-shapes:    the CLIP run's text tower (frozen, or fine-tuned: text.train_encoder) + the vae-shapes
                  run's autoencoder (frozen)
                  captions ─ tokens ─ text encoder ─ contexts (B, L, D), computed once if the encoder is frozen
                  images ─ encoder ─ scaled latents ─ diffusion loss of U-Net(z_t, t, context), 10% captions dropped
                  `minidiff eval` ─ ShapesEval: one image per prompt of the v1 suite, with classifier-free guidance

A run folder is self-contained: the checkpoint holds every network's weights, `tokenizer/` its vocabulary.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from minidiff.config import from_dict, to_dict
from minidiff.data.shapes_dataset import category_options
from minidiff.data.tokenizer import BPETokenizer
from minidiff.models.clip import CLIP, CLIPConfig, CLIPTextConfig, CLIPTextEncoder, contrastive_loss, retrieval_accuracy
from minidiff.training.checkpoint import CHECKPOINT, load_checkpoint, unprefixed

TOKENIZER = "tokenizer"           # the run folder's tokenizer files (vocab.json, merges.txt, ...)
GRID_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow cross", "a purple diamond",
                "a cyan circle on the left", "a red square above a blue circle", "two green triangles")


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


def train_clip_run(sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
    from minidiff.training.loop import train

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


# ---------------------------------------------------------------------------- sd-shapes


def attach_clip(run_config: dict, out: Path, progress: bool) -> dict:
    """Find (or train) the run's CLIP, copy its text tower's config and its tokenizer into the run."""
    from minidiff.recipes_latent import prerequisite_run

    text = run_config["text"]
    clip_dir, clip_config = prerequisite_run(text["clip_run"], out / "clip", "clip-shapes", "text.clip_run", "a CLIP",
                                             progress, evaluate_after=True)
    text["clip_run"] = str(clip_dir)
    if (out / TOKENIZER).resolve() != (clip_dir / TOKENIZER).resolve():
        shutil.copytree(clip_dir / TOKENIZER, out / TOKENIZER, dirs_exist_ok=True)
    text_encoder = clip_config["model"]["text"]
    run_config["model"]["cross_attention_dim"] = text_encoder["width"]
    return {**run_config, "text_encoder": text_encoder}


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
        autoencoder.load_state_dict(autoencoder_state)
    if text_state is not None:
        text_encoder.load_state_dict(text_state)
    tokenizer = BPETokenizer.from_folder(run_dir / TOKENIZER)
    return TextToImage(build_model(sections["model"]), autoencoder, text_encoder, tokenizer,
                       context_length=sections["text_encoder"].context_length)


@torch.no_grad()
def encode_captions(model, captions: list[str], batch_size: int = 500) -> torch.Tensor:
    """Every caption's context (N, L, D), computed once: the text encoder is frozen, so it never changes."""
    return torch.cat([model.encode_prompts(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)])


def train_text_run(sections: dict, run_config: dict, out: Path, resume: bool, progress: bool) -> None:
    from minidiff.process import ConditionalDiffusion
    from minidiff.recipes import autoencoder_tensors
    from minidiff.training.loop import train

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
    objective = ConditionalDiffusion(sections["diffusion"].build(), null_condition, p_uncond=sections["text"].p_uncond)

    def on_sample(ema, step):
        save_prompt_grid(ema, sections, out / "samples" / f"step_{step:06d}.png")

    _, ema, _ = train(model, objective, (latents, conditions), sections["train"], out, run_config, resume=resume,
                      on_sample=on_sample, progress=progress)
    save_prompt_grid(ema, sections, out / "samples.png")


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


def text_sections(run_config: dict) -> dict:
    """The config sections only text runs have, rebuilt from config.json."""
    out = {}
    if "text_encoder" in run_config:
        out["text_encoder"] = from_dict(CLIPTextConfig, run_config["text_encoder"])
    return out
