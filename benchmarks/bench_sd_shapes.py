"""Chapter 3's bar: train `sd-shapes` (and its CLIP) as the command line does, then sweep the guidance scale.

Trains, exactly as `minidiff train` does (any RUN.key=value overrides are passed on, RUN in clip, sd):

    minidiff train clip-shapes --out OUT/clip                                   (skipped with --clip DIR)
    minidiff train sd-shapes --out OUT/sd text.clip_run=OUT/clip latent.autoencoder_run=VAE

where VAE is a finished `vae-shapes` run (Chapter 2's autoencoder, reused as Stable Diffusion reuses its VAE; its
training is not part of the 30-minute budget and is timed in Chapter 2). Then, for each guidance scale:
- ShapesEval on the v1 suite (600 prompts, one image each): the share of images that show what the prompt asks, per
  category (single object, two objects, attribute binding, spatial relation, counting, position);
- the Frechet distance of N images drawn from held-out test captions, in the Shapes attribute classifier's features,
  next to the real-vs-real baseline (minidiff.eval.shapes_fd).

    python benchmarks/bench_sd_shapes.py --vae RUN --out /tmp/bench-sd --json results.jsonl
    python benchmarks/bench_sd_shapes.py --vae RUN --out /tmp/bench-sd --reuse --guidance 1 3 5 7.5

The bar (issue: Chapter 3): at most 30 minutes of training on 2 CPU cores; single object >= 0.90, two objects
>= 0.70, attribute binding >= 0.50, spatial relation >= 0.50.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from minidiff.data import shapes_tensors
from minidiff.eval.shapes_fd import shapes_frechet
from minidiff.recipes import load_run, run_training
from minidiff.recipes.text import generate, text_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="RUN.key=value overrides, RUN in clip, sd")
    parser.add_argument("--vae", required=True, help="a finished vae-shapes run folder")
    parser.add_argument("--clip", help="reuse this finished clip-shapes run instead of training one")
    parser.add_argument("--out", default="/tmp/bench-sd")
    parser.add_argument("--reuse", action="store_true", help="measure the sd run already in --out")
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.0, 2.0, 3.0, 5.0, 7.5])
    parser.add_argument("-n", type=int, default=1000, help="images per Frechet distance")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    parser.add_argument("--heldout", action="store_true",
                        help="also score the v1-heldout suite (color-shape pairs training never shows) per scale")
    args = parser.parse_args()

    out = Path(args.out)
    times = {}
    clip_dir = Path(args.clip) if args.clip else out / "clip"
    if not args.reuse:
        shutil.rmtree(out / "sd", ignore_errors=True)
        if not args.clip:
            shutil.rmtree(clip_dir, ignore_errors=True)
            t0 = time.perf_counter()
            run_training("clip-shapes", clip_dir, overrides=[o[5:] for o in args.overrides if o.startswith("clip.")],
                         progress=False, evaluate_after=True)
            times["clip_train_wall_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        run_training("sd-shapes", out / "sd", progress=False, evaluate_after=False,
                     overrides=[o[3:] for o in args.overrides if o.startswith("sd.")]
                     + [f"text.clip_run={clip_dir}", f"latent.autoencoder_run={args.vae}"])
        times["sd_train_wall_s"] = round(time.perf_counter() - t0, 1)
    clip_metrics = json.loads((clip_dir / "metrics.json").read_text()) if (clip_dir / "metrics.json").exists() else {}
    model, sections = load_run(out / "sd")
    _, captions = shapes_tensors("test", args.n, sections["autoencoder"].sample_size)
    for scale in args.guidance:
        t0 = time.perf_counter()
        shapes_eval = text_metrics(model, sections, guidance_scale=scale)
        eval_s = time.perf_counter() - t0
        heldout = text_metrics(model, sections, suite="v1-heldout", guidance_scale=scale) if args.heldout else None
        images = torch.cat([generate(model, sections, captions[i:i + 100], seed=i, guidance_scale=scale)
                            for i in range(0, args.n, 100)])
        fd = shapes_frechet(images)
        row = {"benchmark": "sd-shapes", "overrides": args.overrides, "guidance_scale": scale,
               "train_steps": sections["train"].steps, **times,
               "shapeseval": shapes_eval["categories"], "shapeseval_overall": shapes_eval["overall"],
               "shapeseval_wall_s": round(eval_s, 1), "frechet": round(fd["frechet"], 3),
               **({"heldout": heldout["categories"], "heldout_overall": heldout["overall"]} if heldout else {}),
               "real_frechet": round(fd["real_frechet"], 3), "frechet_ratio": round(fd["frechet_ratio"], 3),
               "clip_retrieval": {k: round(v, 4) for k, v in clip_metrics.items() if k.startswith("retrieval_")
                                  and isinstance(v, float)},
               "sampler": sections["sample"].sampler, "sample_steps": sections["sample"].sample_steps,
               "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
