"""Judging the judge: ShapesEval on images whose truth is known.

For the fixed suite v1 (600 prompts, 100 per category) and v1-heldout, scores
- true renders (a perfect generator) at several resolutions, clean and degraded as a small generator leaves them
  (blur of 2% of the side, noise 0.1 in [-1, 1] units; shapeseval.degrade),
- blank images and uniform noise (should be 0),
- valid scenes drawn for another prompt of the same category: the chance level of each category,
and the evaluator's time per image. Prints one JSON line per row and a markdown table.

    python benchmarks/bench_shapeseval.py [--sizes 32 64 128 256] [--json results.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

import numpy as np

from minidiff.data.captions import CATEGORIES
from minidiff.eval.shapeseval import degrade, load_suite, render_prompts, score, shuffled_within_category


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--json")
    args = parser.parse_args()
    suite = load_suite("v1")
    rows = []

    def run(name, size, images, prompts=suite):
        t0 = time.perf_counter()
        result = score(images, prompts, report=False)
        seconds = time.perf_counter() - t0
        row = {"benchmark": "shapeseval", "images": name, "size": size, "n": len(images),
               **{c: round(v, 3) for c, v in result["categories"].items()}, "overall": round(result["overall"], 3),
               "ms_per_image": round(1000 * seconds / len(images), 1), "cores": os.cpu_count(),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        rows.append(row)

    for size in args.sizes:
        true = render_prompts(suite, size, seed=100)
        run("true renders", size, true)
        run("true renders, blurred + noisy", size, degrade(true, seed=size))
    heldout = load_suite("v1-heldout")
    run("v1-heldout true renders, blurred + noisy", 32, degrade(render_prompts(heldout, 32, seed=101)), heldout)
    run("blank", 32, [np.zeros((32, 32, 3), np.uint8)] * len(suite))
    rng = np.random.default_rng(0)
    run("uniform noise", 32, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in suite])
    run("scenes for another prompt (chance)", 32, render_prompts(shuffled_within_category(suite), 32, seed=102))

    header = ["images", "size"] + list(CATEGORIES) + ["overall", "ms_per_image"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "-")) for h in header) + " |")
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
