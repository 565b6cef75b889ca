"""Chapter 1's quality bar: train the `ddpm-digits` recipe and measure its samples.

Trains the recipe exactly as `minidiff train ddpm-digits` does (any key=value overrides are passed on),
times the training, then samples the EMA model with several samplers and scores each with the digit
classifier (minidiff/eval/digits.py). Prints one JSON object per sampler and, with --json, appends them to
a file.

    python benchmarks/bench_digits.py --out /tmp/bench-digits
    python benchmarks/bench_digits.py --out /tmp/bench-digits --samplers ddpm:100 ddim:50 ddpm:1000 -n 594

The bar (issue: Chapter 1): at most 5 minutes of training on 2 CPU cores, recognizability at least 0.95
times that of real held-out digits, coverage >= 0.97, Frechet distance within 2x of the real-vs-real baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import datetime, timezone

import torch

from minidiff.eval.digits import digit_metrics
from minidiff.recipes import load_run, run_training, sample_from_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the recipe")
    parser.add_argument("--out", default="/tmp/bench-digits")
    parser.add_argument("--samplers", nargs="+", default=["ddpm:100", "ddim:50"], help="SAMPLER:STEPS")
    parser.add_argument("-n", type=int, default=594, help="samples per sampler (multiples of 297 are best)")
    parser.add_argument("--reuse", action="store_true", help="skip training and measure the run in --out")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    args = parser.parse_args()

    train_s = None
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
        t0 = time.perf_counter()
        run_training("ddpm-digits", args.out, overrides=args.overrides, evaluate_after=False, progress=False)
        train_s = time.perf_counter() - t0
    model, sections = load_run(args.out)
    for spec in args.samplers:
        sampler, steps = spec.split(":")
        t0 = time.perf_counter()
        samples = sample_from_run(model, sections, args.n, seed=0, sampler=sampler, sample_steps=int(steps))
        sample_s = time.perf_counter() - t0
        metrics = digit_metrics(samples)
        row = {"benchmark": "ddpm-digits", "overrides": args.overrides, "train_steps": sections["train"].steps,
               "train_wall_s": None if train_s is None else round(train_s, 1), "sampler": sampler,
               "sample_steps": int(steps), "sample_wall_s": round(sample_s, 1),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
               "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
