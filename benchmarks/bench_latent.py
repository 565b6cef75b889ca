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
training (which is paid once and reused by every latent model). Wall time per step is measured apart, with
--step-timing: one training step of each U-Net, alternating pixel and latent in one process (A B, B A, ...),
so that both see the same machine load (the training runs' own wall times depend on what else ran).

    python benchmarks/bench_latent.py --out /tmp/bench-latent --json results.jsonl
    python benchmarks/bench_latent.py --out /tmp/bench-latent --only latent latent.steps=1500   # one run, overridden
    python benchmarks/bench_latent.py --step-timing --repeats 30                                # seconds per step

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


def autoencoder_step_flops(sections, use_gan: bool) -> int:
    """FLOPs of one training step of the autoencoder as the recipe trains it: the loss (reconstruction, perceptual
    distance, KL, and with use_gan the adversarial term and its adaptive weight), its backward, and the
    discriminator's hinge step. Counted on freshly built networks of the run's configs (FLOPs do not depend on
    the weights)."""
    import dataclasses

    from minidiff.models import Autoencoder
    from minidiff.models.discriminator import PatchDiscriminator
    from minidiff.models.perceptual import PerceptualConfig, PerceptualNet, perceptual_distance
    from minidiff.training.autoencoder import autoencoder_loss, hinge_discriminator_loss

    config, loss, train = sections["model"], sections["loss"], sections["train"]
    model = Autoencoder(config)
    net = PerceptualNet(PerceptualConfig(in_channels=config.in_channels)).requires_grad_(False)
    discriminator = PatchDiscriminator(dataclasses.replace(sections["discriminator"], in_channels=config.in_channels))
    x = torch.randn(train.batch_size, config.in_channels, config.sample_size, config.sample_size)
    distance = (lambda a, b: perceptual_distance(net, a, b)) if loss.perceptual_weight > 0 else None
    with FlopCounterMode(display=False) as counter:
        total, x_hat, _ = autoencoder_loss(model, x, loss, distance, discriminator, torch.Generator().manual_seed(0),
                                           use_gan)
        total.backward()
        if use_gan:
            hinge_discriminator_loss(discriminator(x), discriminator(x_hat.detach())).backward()
    return counter.get_total_flops()


def interleaved_step_times(repeats: int, batch_size: int = 32) -> dict:
    """Median seconds of one training step (loss, backward, AdamW step) of the pixel and the latent U-Net."""
    import statistics

    from minidiff.models import UNet, UNetConfig
    from minidiff.process import GaussianDiffusion, NoiseSchedule

    diffusion = GaussianDiffusion(NoiseSchedule.make("cosine"))
    steps = {}
    for name, config in [("pixel", UNetConfig.shapes_toy()), ("latent", UNetConfig.latent_toy())]:
        torch.manual_seed(0)
        model = UNet(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x0 = torch.randn(batch_size, config.in_channels, config.sample_size, config.sample_size)

        def step(model=model, optimizer=optimizer, x0=x0):
            loss = diffusion.loss(model, x0, torch.Generator().manual_seed(0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        steps[name] = step
    times = {name: [] for name in steps}
    for name in steps:                                   # warm-up
        steps[name]()
    for i in range(repeats):
        for name in (["pixel", "latent"] if i % 2 == 0 else ["latent", "pixel"]):
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    pixel, latent = statistics.median(times["pixel"]), statistics.median(times["latent"])
    return {"benchmark": "chapter2-step-timing", "batch_size": batch_size, "repeats": repeats,
            "pixel_s_per_step": pixel, "latent_s_per_step": latent, "latent_over_pixel": latent / pixel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="RUN.key=value overrides, RUN in vae, pixel, latent")
    parser.add_argument("--out", default="/tmp/bench-latent")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("-n", type=int, default=1000, help="generated images per Frechet distance")
    parser.add_argument("--reuse", action="store_true", help="measure the runs already in --out")
    parser.add_argument("--json", help="append results to this JSON-lines file")
    parser.add_argument("--step-timing", action="store_true", help="only time one training step of each U-Net")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps of each U-Net with --step-timing")
    args = parser.parse_args()
    out = Path(args.out)
    common = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    if args.step_timing:
        row = {**interleaved_step_times(args.repeats), **common}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
        return

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
            before, after = autoencoder_step_flops(sections, False), autoencoder_step_flops(sections, True)
            gan_steps = max(0, train.steps - sections["loss"].disc_start) if sections["loss"].disc_weight > 0 else 0
            row.update(metrics, gflops_per_step=round(before / 1e9, 2), gflops_per_step_with_gan=round(after / 1e9, 2),
                       train_pflops=round((before * (train.steps - gan_steps) + after * gan_steps) / 1e15, 4))
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
