"""Chapter 1's quality bar: train the `ddpm-digits` recipe and measure its samples.

Trains the recipe exactly as `minidiff train ddpm-digits` does (any key=value overrides are passed on),
times the training, then samples the EMA model with several samplers and scores each with the digit
classifier (minidiff/eval/digits.py). Prints one JSON object per sampler and, with --json, appends them to
a file.

    python benchmarks/bench_digits.py --out /tmp/bench-digits
    python benchmarks/bench_digits.py --out /tmp/bench-digits --samplers ddpm:100 ddim:50 ddpm:1000 -n 594
    python benchmarks/bench_digits.py --out RUN --reuse --samplers ddpm:250:variance=beta ddim:100:eta=1.0 --seed 1
    python benchmarks/bench_digits.py --step-timing 8 16        # seconds per training step at each image size

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
    parser.add_argument("--samplers", nargs="+", default=["ddpm:100", "ddim:50"],
                        help="SAMPLER:STEPS[:key=value,...] with sampler options such as variance=beta or eta=1.0")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--step-timing", nargs="+", type=int, metavar="SIZE",
                        help="only time one training step of the recipe's U-Net at each image size, alternating")
    parser.add_argument("-n", type=int, default=594, help="samples per sampler (multiples of 297 are best)")
    parser.add_argument("--reuse", action="store_true", help="skip training and measure the run in --out")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    args = parser.parse_args()

    if args.step_timing:
        step_timing(args.step_timing, args.overrides)
        return
    train_s = None
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
        t0 = time.perf_counter()
        run_training("ddpm-digits", args.out, overrides=args.overrides, evaluate_after=False, progress=False)
        train_s = time.perf_counter() - t0
    model, sections = load_run(args.out)
    for spec in args.samplers:
        sampler, steps, *extra = spec.split(":")
        options = {k: float(v) if k == "eta" else v for k, v in (kv.split("=") for kv in extra[0].split(","))} if extra else {}
        t0 = time.perf_counter()
        samples = sample_from_run(model, sections, args.n, seed=args.seed, sampler=sampler, sample_steps=int(steps),
                                  **options)
        sample_s = time.perf_counter() - t0
        metrics = digit_metrics(samples)
        row = {"benchmark": "ddpm-digits", "overrides": args.overrides, "train_steps": sections["train"].steps,
               "train_wall_s": None if train_s is None else round(train_s, 1), "sampler": sampler,
               "sample_steps": int(steps), "sampler_options": options, "seed": args.seed, "sample_wall_s": round(sample_s, 1),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
               "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


def step_timing(sizes: list[int], overrides: list[str], repeats: int = 15) -> None:
    """Median seconds of one training step (loss, backward, AdamW) of the recipe's U-Net at each size, batch as in
    the recipe; the sizes alternate in one process so that they see the same machine load."""
    from minidiff.models import build_model
    from minidiff.recipes import load_sections, make_run_config

    runs = {}
    for size in sizes:
        sections = load_sections(make_run_config("ddpm-digits", overrides=list(overrides) + [f"sample_size={size}"]))
        model = build_model(sections["model"])
        runs[size] = (model, torch.optim.AdamW(model.parameters(), 1e-3), sections["diffusion"].build(),
                      sections["train"].batch_size)
    times = {size: [] for size in sizes}
    for _ in range(repeats):
        for size, (model, optimizer, diffusion, batch) in runs.items():
            x0 = torch.randn(batch, 1, size, size)
            t0 = time.perf_counter()
            loss = diffusion.loss(model, x0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times[size].append(time.perf_counter() - t0)
    row = {"benchmark": "ddpm-digits step timing", "overrides": overrides, "threads": torch.get_num_threads(),
           **{f"step_s_{size}": round(sorted(v)[len(v) // 2], 4) for size, v in times.items()}}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
