"""Does an sd-shapes run know left from right? A probe of where it draws, and of what its text encoder separates.

1. Placement: for each probe prompt, 40 images (guidance 5, the run's sampler); ShapesEval's detector finds the red
   objects, and the mean of their centers is printed (x from left to right, y from top to bottom, in [0, 1]).
2. Who decides the layout, the prompt or the starting noise? Every prompt above is drawn from the same n starting
   noises (image i of each prompt starts from the same z_T). For "on the left" against "on the right", the
   correlation across noises of the red object's x, and the share of noises where "left" lands left of "right".
   A correlation near 1 and a share near 0.5: the noise sets the place and the words do not move it.
3. Relations: for "A <relation> B" with three pairs of named objects, n images each, the mean offset of B's center
   from A's (dx to the right, dy downwards) over the images where both are found. A model that uses the relation
   word puts B at dx > 0 for "left of", dx < 0 for "right of", dy > 0 for "above", dy < 0 for "below"; one that
   ignores it gives about the same offset for all four.
4. The text encoder (the run's CLIP text tower, frozen or fine-tuned): the distance between the output states of two
   prompts at each token position from the first that differs, next to the states' norm, and the cosine similarity
   of the token embeddings of the spatial words.

    python benchmarks/probe_spatial.py RUN_DIR [--guidance 5] [-n 40]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from minidiff.data.shapes import RELATIONS
from minidiff.eval.shapeseval import as_uint8_images, detect
from minidiff.recipes import load_run
from minidiff.recipes.text import generate

PLACES = ["a red circle on the left", "a red circle on the right", "a red circle at the top",
          "a red circle at the bottom", "a red circle left of a blue square", "a red circle right of a blue square"]
PAIRS = [("a red circle on the left", "a red circle on the right"), ("a red circle on the left", "a red circle at the top")]
WORDS = ["left", "right", "top", "bottom"]
RELATION_PAIRS = [(("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "cross")),
                  (("purple", "diamond"), ("red", "square"))]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    model, sections = load_run(args.run_dir)

    first_red_x = {}
    for prompt in PLACES:
        images = generate(model, sections, [prompt] * args.n, seed=0, guidance_scale=args.guidance)  # same noises
        found = [[(d.x, d.y) for d in detect(image) if d.color == "red"] for image in as_uint8_images(images)]
        red = [c for f in found for c in f]
        x, y = np.mean(red, axis=0) if red else (float("nan"), float("nan"))
        first_red_x[prompt] = [f[0][0] if f else None for f in found]
        print(f"{prompt:40s} red objects found {len(red):3d}  mean x {x:.2f}  mean y {y:.2f}")

    pairs = [(a, b) for a, b in zip(first_red_x["a red circle on the left"], first_red_x["a red circle on the right"])
             if a is not None and b is not None]
    if len(pairs) > 2:
        left, right = np.array(pairs).T
        print(f"same noise, 'on the left' vs 'on the right' ({len(pairs)} noises with both found): correlation of x "
              f"{np.corrcoef(left, right)[0, 1]:.2f}, left lands left of right in {np.mean(left < right):.2f}")

    for relation in RELATIONS:
        offsets = []
        for a, b in RELATION_PAIRS:
            prompt = f"a {' '.join(a)} {relation} a {' '.join(b)}"
            images = generate(model, sections, [prompt] * args.n, seed=0, guidance_scale=args.guidance)
            for image in as_uint8_images(images):
                found = detect(image)
                first = [d for d in found if (d.color, d.shape) == a]
                second = [d for d in found if (d.color, d.shape) == b]
                if first and second:
                    offsets.append((second[0].x - first[0].x, second[0].y - first[0].y))
        dx, dy = np.mean(offsets, axis=0) if offsets else (float("nan"), float("nan"))
        print(f"'A {relation} B': both found in {len(offsets)}/{len(RELATION_PAIRS) * args.n}, "
              f"B's offset from A: mean dx {dx:+.3f}  mean dy {dy:+.3f}")

    for a, b in PAIRS:
        ids_a, ids_b = model.tokenizer([a, b], context_length=model.context_length)
        states = model.encode_prompts([a, b])                                          # (2, L, D)
        first = int((ids_a != ids_b).nonzero()[0])
        distances = (states[0] - states[1]).norm(dim=-1)[first:first + 4]
        print(f"{a!r} vs {b!r}: state distance at positions {first}..{first + 3}: "
              f"{[round(d, 2) for d in distances.tolist()]} (state norm {states[0, first].norm():.2f})")

    table = model.text_encoder.embeddings.token_embedding.weight
    rows = table[[model.tokenizer.encode(w)[0] for w in WORDS]]                       # (4, D)
    cosine = F.cosine_similarity(rows[:, None], rows[None], dim=-1)                    # (4, 4)
    print("token embedding cosine similarity,", " ".join(WORDS))
    for word, row in zip(WORDS, cosine.tolist()):
        print(f"  {word:7s}", " ".join(f"{c:5.2f}" for c in row))


if __name__ == "__main__":
    main()
