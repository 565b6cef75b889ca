"""Does a clip-shapes run see where things are? Three numbers per run, on the validation split's scenes.

1. Preference: for every validation scene whose caption names a place or a relation, CLIP's image-text similarity
   with its caption against the same caption with the spatial words swapped ("left" <-> "right", "above" <->
   "below", "top" <-> "bottom"; minidiff.recipes.text.swap_spatial_words). The share of scenes where the true
   caption wins, per group: relations left/right, relations above/below, places left/right, places top/bottom.
   0.5 is chance: the model cannot tell the two captions apart.
2. Context distance: how far the text tower's output states (what a U-Net's cross-attention reads) move when the
   spatial words are swapped, |states(caption) - states(swapped)| averaged over the positions, over the states'
   mean norm. A U-Net can only learn a distinction the encoder puts in its states.
3. Flip invariance of the image tower: the cosine similarity of an image's embedding with that of its mirror image
   (left-right) and of its upside-down image. Near 1: the tower barely sees that axis.

    python benchmarks/probe_clip_spatial.py CLIP_RUN [CLIP_RUN ...] [-n 3000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from minidiff.data.tokenizer import BPETokenizer
from minidiff.recipes import load_run
from minidiff.recipes.text import TOKENIZER, shapes_captions, swap_spatial_words

GROUPS = {"relation left/right": lambda c: " left of " in c or " right of " in c,
          "relation above/below": lambda c: " above " in c or " below " in c,
          "place left/right": lambda c: c.endswith(("on the left", "on the right")),
          "place top/bottom": lambda c: c.endswith(("at the top", "at the bottom"))}


@torch.no_grad()
def probe(run: str, images: torch.Tensor, captions: list[str]) -> dict:
    model, sections = load_run(run)
    tokenizer = BPETokenizer.from_folder(Path(run) / TOKENIZER)
    length = sections["model"].text.context_length
    row = {"run": run}
    for name, wanted in GROUPS.items():
        index = [i for i, c in enumerate(captions) if wanted(c) and swap_spatial_words(c)]
        true_ids = tokenizer([captions[i] for i in index], context_length=length)                   # (n, L)
        swapped_ids = tokenizer([swap_spatial_words(captions[i]) for i in index], context_length=length)
        image = F.normalize(model.encode_image(images[index]), dim=-1)                              # (n, E)
        true_score = (image * F.normalize(model.encode_text(true_ids), dim=-1)).sum(-1)             # (n,)
        swapped_score = (image * F.normalize(model.encode_text(swapped_ids), dim=-1)).sum(-1)
        states, swapped_states = model.text_model(true_ids)[0], model.text_model(swapped_ids)[0]    # (n, L, D)
        distance = (states - swapped_states).norm(dim=-1).mean() / states.norm(dim=-1).mean()
        row[name] = {"scenes": len(index), "prefers_true": round((true_score > swapped_score).float().mean().item(), 3),
                     "context_distance": round(distance.item(), 3)}
    embed = lambda x: F.normalize(model.encode_image(x), dim=-1)                                    # noqa: E731
    plain = embed(images[:500])
    row["cosine_to_mirror"] = round((plain * embed(images[:500].flip(-1))).sum(-1).mean().item(), 3)
    row["cosine_to_upside_down"] = round((plain * embed(images[:500].flip(-2))).sum(-1).mean().item(), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished clip-shapes run folders")
    parser.add_argument("-n", type=int, default=3000, help="validation scenes to draw the probes from")
    args = parser.parse_args()
    images, captions = shapes_captions(args.n, 32, split="validation")
    for run in args.runs:
        row = probe(run, images, captions)
        print(row["run"])
        for name in GROUPS:
            r = row[name]
            print(f"  {name:22s} {r['scenes']:4d} scenes  true caption preferred {r['prefers_true']:.2f}  "
                  f"context distance {r['context_distance']:.3f}")
        print(f"  image tower: cosine to the mirror image {row['cosine_to_mirror']:.3f}, "
              f"to the upside-down image {row['cosine_to_upside_down']:.3f}")


if __name__ == "__main__":
    main()
