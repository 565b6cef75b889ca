"""ddpm-2d on every 2D toy distribution: sliced Wasserstein distance of the samples to fresh true samples.

    python benchmarks/bench_2d.py [--json results.jsonl] [key=value ...]

Each row reports the distance next to the same distance between two fresh true samples (the baseline),
the training wall time and the sampling wall time (DDPM, 1000 steps, 2000 points).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone

import torch

from minidiff.data import DISTRIBUTIONS
from minidiff.eval.toy2d import toy2d_metrics
from minidiff.recipes import load_run, run_training, sample_from_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json")
    args = parser.parse_args()
    for name in DISTRIBUTIONS:
        out = tempfile.mkdtemp(prefix=f"bench-2d-{name}-")
        t0 = time.perf_counter()
        run_training("ddpm-2d", out, overrides=[f"dataset={name}", *args.overrides], evaluate_after=False,
                     progress=False)
        train_s = time.perf_counter() - t0
        model, sections = load_run(out)
        t0 = time.perf_counter()
        points = sample_from_run(model, sections, 2000, seed=0)
        sample_s = time.perf_counter() - t0
        metrics = toy2d_metrics(points, name)
        row = {"benchmark": "ddpm-2d", "dataset": name, "overrides": args.overrides,
               "train_steps": sections["train"].steps, "train_wall_s": round(train_s, 1),
               "sample_wall_s": round(sample_s, 1),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
               "threads": torch.get_num_threads(), "cores": os.cpu_count(),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
