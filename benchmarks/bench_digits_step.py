"""What one `ddpm-digits` training step costs: per batch size, with AdamW's reference loop against its fused
kernel, and with the toy U-Net's 2x2 patch fold against the same network unfolded.

Times the recipe's step as the training loop takes it (diffusion loss, backward, gradient clipping, AdamW, EMA
update) on random 16x16 images, every setting in turn inside each of `--rounds` rounds, so that a machine that
speeds up or slows down affects all settings alike. Prints one JSON line per setting: the median seconds per step
and per image.

    python benchmarks/bench_digits_step.py                       # batch 32, 64, 96, 128; fused AdamW
    python benchmarks/bench_digits_step.py --batches 64 --compare-fused
    python benchmarks/bench_digits_step.py --batches 96 192 --compare-patch
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from minidiff.models import UNet, UNetConfig
from minidiff.process import GaussianDiffusion, NoiseSchedule
from minidiff.training.loop import update_ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 64, 96, 128])
    parser.add_argument("--compare-fused", action="store_true", help="also time AdamW's reference (unfused) loop")
    parser.add_argument("--compare-patch", action="store_true",
                        help="also time the toy U-Net without its 2x2 patch fold (patch_size=1)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    diffusion = GaussianDiffusion(NoiseSchedule.make("cosine", 1000), "eps", min_snr_gamma=5.0)
    data = torch.randn(1500, 1, 16, 16)
    generator = torch.Generator().manual_seed(0)
    settings = [(b, fused, patch) for b in args.batches for fused in ([True, False] if args.compare_fused else [True])
                for patch in ([2, 1] if args.compare_patch else [2])]
    models = {}
    for setting in settings:
        torch.manual_seed(0)
        model = UNet(UNetConfig.toy(patch_size=setting[2]))
        models[setting] = (model, copy.deepcopy(model).requires_grad_(False),
                           torch.optim.AdamW(model.parameters(), lr=1e-4, fused=setting[1]))

    def step(batch: int, fused: bool, patch: int) -> None:
        model, ema, optimizer = models[(batch, fused, patch)]
        loss = diffusion.loss(model, data[torch.randint(0, len(data), (batch,), generator=generator)], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, 0.999)
        loss.item()

    times = {s: [] for s in settings}
    for _ in range(args.rounds):
        for setting in settings:
            for _ in range(2):                                  # warm-up
                step(*setting)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(*setting)
            times[setting].append((time.perf_counter() - t0) / args.steps)
    for (batch, fused, patch), values in times.items():
        seconds = statistics.median(values)
        print(json.dumps({"benchmark": "digits-step", "batch": batch, "fused_adamw": fused, "patch_size": patch,
                          "s_per_step": round(seconds, 4), "ms_per_image": round(1000 * seconds / batch, 3),
                          "threads": torch.get_num_threads(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
