"""Which objects an autoencoder run loses: the reasons behind its object recall.

For the first N held-out test scenes, reconstructs each with the run's EMA autoencoder, detects objects with
ShapesEval's detector, and for every true object that no detection matches (shape, color, size class, place)
says what the nearest detection got wrong. Prints the most common reasons with the true size and shape, the shape
read instead and the template misfit.

    python benchmarks/diagnose_recall.py RUN_DIR [-n 300]
"""
from __future__ import annotations

import argparse
import collections
import math

import torch

from minidiff.data.shapes import SIZES
from minidiff.eval.shapeseval import as_uint8_images, detect
from minidiff.recipes import heldout_scenes, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    model, sections = load_run(args.run_dir)
    images, objects = heldout_scenes(args.n, sections["model"].sample_size)
    with torch.no_grad():
        recon = model(images, sample_posterior=False)[0].clamp(-1, 1)
    reasons = collections.Counter()
    missed = total = 0
    for image, truth in zip(as_uint8_images(recon), objects):
        detections = detect(image)
        for o in truth:
            total += 1
            if any(d.shape == o["shape"] and d.color == o["color"] and d.size == o["size"]
                   and math.hypot(d.x - o["x"], d.y - o["y"]) <= 0.5 * SIZES[o["size"]] for d in detections):
                continue
            missed += 1
            near = [d for d in detections if math.hypot(d.x - o["x"], d.y - o["y"]) <= 0.1]
            if not near:
                reasons[("missing", o["size"], o["shape"])] += 1
                continue
            d = near[0]
            wrong = "+".join(k for k in ("shape", "color", "size") if getattr(d, k) != o[k])
            reasons[(f"wrong {wrong}", o["size"], o["shape"], f"read as {d.size} {d.color} {d.shape}")] += 1
    print(f"{missed} of {total} objects missed ({1 - missed / total:.3f} recall)")
    for reason, count in reasons.most_common(15):
        print(f"{count:5d}  {' | '.join(reason)}")


if __name__ == "__main__":
    main()
