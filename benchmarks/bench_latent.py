"""Chapter 2's bars: the toy autoencoder's reconstructions, and latent vs pixel diffusion at equal quality.

Trains (or, with --reuse, re-measures) three runs exactly as the command line does:

    minidiff train vae-shapes  --out OUT/vae           the autoencoder (f=4, 4 channels, Shapes 32x32)
    minidiff train ddpm-shapes --out OUT/pixel         pixel-space DDPM on the same scenes (the baseline)
    minidiff train ldm-shapes  --out OUT/latent latent.autoencoder_run=OUT/vae

and measures:
- the autoencoder: PSNR on 500 held-out test scenes, and the share of their objects ShapesEval's detector
  still finds in the reconstructions (same shape, color, size class and place);
- each diffusion run: wall time of training, FLOPs of one training step (forward + backward of the loss,
  counted with torch.utils.flop_counter on one batch), and the Frechet distance of N generated images in
  the features of the Shapes attribute classifier, next to the real-vs-real baseline (minidiff.eval.shapes_fd).

Training compute is steps x FLOPs per step; the latent run's is reported without and with the autoencoder's
training (which is paid once and reused by every latent model).

    python benchmarks/bench_latent.py --out /tmp/bench-latent --json results.jsonl
    python benchmarks/bench_latent.py --out /tmp/bench-latent --only latent latent.steps=1500   # one run, overridden

The bars (issue: Chapter 2): PSNR >= 30 dB and >= 0.98 of objects recognised; latent diffusion reaches the
Frechet distance of pixel diffusion with at most a third of its training compute.
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
from torch.utils.flop_counter import FlopCounterMode

from minidiff.eval.shapes_fd import shapes_frechet
from minidiff.recipes import load_run, run_evaluation, run_training, sample_from_run

RUNS = {"vae": "vae-shapes", "pixel": "ddpm-shapes", "latent": "ldm-shapes"}


def training_step_flops(model, sections, batch_size: int) -> int:
    """FLOPs of one training step of the diffusion loss (forward + backward) on one batch."""
    diffusion = sections["diffusion"].build()
    m = sections["model"]
    x0 = torch.randn(batch_size, m.in_channels, m.sample_size, m.sample_size)
    model.train()
    with FlopCounterMode(display=False) as counter:
        diffusion.loss(model, x0, torch.Generator().manual_seed(0)).backward()
    model.eval()
    return counter.get_total_flops()


def autoencoder_step_flops(model, sections, batch_size: int) -> int:
    """FLOPs of one autoencoder training step (reconstruction and KL only: the perceptual and adversarial
    networks add their own share, reported by the run's wall time)."""
    x = torch.randn(batch_size, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    model.train()
    with FlopCounterMode(display=False) as counter:
        x_hat, posterior = model(x)
        ((x - x_hat).abs().mean() + 1e-6 * posterior.kl().mean()).backward()
    model.eval()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="RUN.key=value overrides, RUN in vae, pixel, latent")
    parser.add_argument("--out", default="/tmp/bench-latent")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("-n", type=int, default=1000, help="generated images per Frechet distance")
    parser.add_argument("--reuse", action="store_true", help="measure the runs already in --out")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    args = parser.parse_args()
    out = Path(args.out)
    common = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}

    for name in args.only:
        run_dir = out / name
        overrides = [o.split(".", 1)[1] for o in args.overrides if o.startswith(name + ".")]
        if name == "latent":
            overrides.append(f"autoencoder_run={out / 'vae'}")
        train_s = None
        if not args.reuse:
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.perf_counter()
            run_training(RUNS[name], run_dir, overrides=overrides, evaluate_after=False, progress=False)
            train_s = time.perf_counter() - t0
        model, sections = load_run(run_dir)
        train = sections["train"]
        row = {"benchmark": "chapter2", "run": name, "recipe": RUNS[name], "overrides": overrides,
               "steps": train.steps, "batch_size": train.batch_size,
               "train_wall_s": None if train_s is None else round(train_s, 1)}
        if name == "vae":
            metrics = run_evaluation(run_dir, n=500)
            row.update(metrics, gflops_per_step=round(autoencoder_step_flops(model, sections, train.batch_size) / 1e9, 2))
        else:
            t0 = time.perf_counter()
            samples = sample_from_run(model, sections, args.n, seed=0)
            sample_s = time.perf_counter() - t0
            fd = shapes_frechet(samples)
            denoiser = model.denoiser if name == "latent" else model
            flops = training_step_flops(denoiser, sections, train.batch_size)
            row.update(fd, sample_wall_s=round(sample_s, 1), gflops_per_step=round(flops / 1e9, 2),
                       train_pflops=round(flops * train.steps / 1e15, 3),
                       parameters=sum(p.numel() for p in denoiser.parameters()),
                       sampler=sections["sample"].sampler, sample_steps=sections["sample"].sample_steps)
        row.update(common)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
