"""The Shapes Frechet distance on images whose quality is known: real renders, and three broken generators.

    python benchmarks/bench_shapes_fd.py [--json results.jsonl]

Real: validation-split renders in disjoint chunks of n (the spread of frechet_ratio between two real sets, which
says how many images a comparison needs). Broken: blank images, uniform noise, and the same validation scenes
turned gray. One JSON line per row.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

import numpy as np

from minidiff.data.shapes_dataset import make_example
from minidiff.eval.shapes_fd import load_shapes_classifier, shapes_frechet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    classifier = load_shapes_classifier()
    print(json.dumps({"benchmark": "shapes-fd", "classifier_load_or_train_s": round(time.perf_counter() - t0, 1)}))
    real = np.stack([make_example("validation", i, 32)["image"] for i in range(2000)])     # (2000, 32, 32, 3)
    rows = []
    for n in (128, 500, 1000):
        ratios = [shapes_frechet(real[i:i + n], classifier=classifier)["frechet_ratio"] for i in range(0, 2000 - n + 1, n)]
        rows.append({"images": f"real validation renders, {len(ratios)} chunks", "n": n,
                     "frechet_ratio_min": round(min(ratios), 2), "frechet_ratio_max": round(max(ratios), 2)})
    rng = np.random.default_rng(0)
    gray = real[:500].mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
    for name, images in [("blank", np.zeros((500, 32, 32, 3), np.uint8)),
                         ("uniform noise", rng.integers(0, 256, (500, 32, 32, 3), dtype=np.uint8)),
                         ("validation scenes turned gray", gray)]:
        r = shapes_frechet(images, classifier=classifier)
        rows.append({"images": name, "n": 500, "frechet": round(r["frechet"], 1), "real_frechet": round(r["real_frechet"], 2),
                     "frechet_ratio": round(r["frechet_ratio"], 1)})
    for row in rows:
        row.update(benchmark="shapes-fd", cores=os.cpu_count(), date=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
