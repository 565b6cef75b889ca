"""Why does DDIM trail DDPM on Lab 1's digits model? Training loss weighting, prediction target and x0 clipping.

Lab 1 (notebooks/01_ddpm.ipynb, section 6) trains `ddpm-digits` for 1250 steps and samples it with DDPM and DDIM.
This script trains the same short recipe in up to three ways, same seed and batches:

    eps-minsnr5   the recipe as the lab trains it: eps-prediction, Min-SNR-5 weighting
    eps-simple    eps-prediction, L_simple (min_snr_gamma=none): every timestep weighted alike
    v-minsnr5     v-prediction, Min-SNR-5 weighting

and, for each, measures

  * the unweighted error of the trained EMA network at chosen timesteps on the 297 held-out digits (one fixed
    noise draw): the eps error E||eps_hat - eps||^2 and the x0 error E||x0_hat - x0||^2 (x0_hat unclipped);
  * samples of DDPM (ancestral, beta_tilde) and DDIM (eta = 0) at each of --steps, x0 clipped to [-1, 1] at each
    step (the recipe's default), and for the lab's model also with clipping off (at --unclipped-steps) and with
    "DDIM, consistent clipping" (at --consistent-steps): DDIM whose eps estimate is recomputed from the clipped x0
    (diffusers' use_clipped_model_output), so that the step's x0 and eps describe the same x_t:
    recognizability, coverage and Frechet distance (minidiff/eval/digits.py), and "roughness", the mean absolute
    difference between neighbouring pixels, next to that of the real held-out digits (grain raises it).

    python benchmarks/bench_ddim_vs_ddpm.py --out /tmp/bench-ddim                  # all three variants
    python benchmarks/bench_ddim_vs_ddpm.py --out /tmp/bench-ddim --variants eps-minsnr5 eps-simple --steps 10 50 1000
    python benchmarks/bench_ddim_vs_ddpm.py --out /tmp/bench-ddim --reuse          # sample the runs already in --out

Each variant trains 1250 steps (about 100 s alone on 2 CPU cores; one thread here) and samples 297 digits per row.
Prints one JSON object per measurement and appends it to --json (default OUT/results.jsonl).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from minidiff.data import digits_tensors
from minidiff.eval.digits import digit_metrics
from minidiff.process.samplers import timesteps
from minidiff.recipes import load_run, run_training, sample_from_run

VARIANTS = {
    "eps-minsnr5": [],
    "eps-simple": ["min_snr_gamma=none"],
    "v-minsnr5": ["prediction=v"],
}
LOSS_TIMESTEPS = (0, 5, 20, 50, 100, 250, 500, 750, 900, 999)


def roughness(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of images (N, C, H, W) in [-1, 1]."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return float((dh + dw) / 2)


@torch.no_grad()
def per_timestep_error(model, diffusion, x0: torch.Tensor, timesteps=LOSS_TIMESTEPS, seed: int = 0) -> dict:
    """The trained network's unweighted eps and x0 errors at each timestep, on x0 (N, C, H, W)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))       # like x0
    snr = diffusion.schedule.snr()
    rows = {}
    for t in timesteps:
        t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)                     # (N,)
        x_t = diffusion.q_sample(x0, t_batch, eps)
        x0_hat, eps_hat = diffusion.predict_x0_eps(model(x_t, t_batch).float(), x_t, t_batch)
        weight = diffusion.loss_weight(t_batch)[0].item() if diffusion.min_snr_gamma else 1.0
        rows[t] = dict(snr=snr[t].item(), loss_weight=weight, eps_mse=(eps_hat - eps).pow(2).mean().item(),
                       x0_mse=(x0_hat - x0).pow(2).mean().item())
    return rows


@torch.no_grad()
def ddim_consistent(model, diffusion, n: int, shape: tuple, steps: int, seed: int) -> torch.Tensor:
    """DDIM (eta = 0) with x0_hat clipped to [-1, 1] and eps_hat recomputed from it: eps = (x_t - a x0) / s."""
    alpha_bar = diffusion.schedule.alpha_bar
    ts = timesteps(diffusion.num_steps, steps)
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))      # (N, C, H, W), as `sample`
    for i, t in enumerate(ts):
        t_batch = torch.full((n,), t, dtype=torch.long)
        x0_hat, _ = diffusion.predict_x0_eps(model(x, t_batch).float(), x, t_batch)
        x0_hat = x0_hat.clamp(-1, 1)
        eps_hat = (x - alpha_bar[t].sqrt() * x0_hat) / (1 - alpha_bar[t]).sqrt()
        alpha_bar_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat    # DDIM eq. 12, sigma = 0
    return x.clamp(-1, 1)


def emit(record: dict, path: Path) -> None:
    print(json.dumps(record), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench-ddim")
    parser.add_argument("--train-steps", type=int, default=1250, help="Lab 1 trains 1250 (the recipe 2500)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 50, 250, 1000], help="sampling steps")
    parser.add_argument("--unclipped-steps", nargs="*", type=int, default=[10, 1000],
                        help="sampling steps at which the lab's model is also sampled with x0 clipping off")
    parser.add_argument("--consistent-steps", nargs="*", type=int, default=[10, 50, 1000],
                        help="sampling steps at which the lab's model is also sampled with DDIM, consistent clipping")
    parser.add_argument("--only-consistent", action="store_true", help="with --reuse: only the consistent-DDIM rows")
    parser.add_argument("-n", type=int, default=297, help="samples per row (297: as many as the real test digits)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampling noise (Lab 1's table uses 1)")
    parser.add_argument("--reuse", action="store_true", help="skip training and measure the runs in --out")
    parser.add_argument("--json", help="JSON-lines file to append to (default OUT/results.jsonl)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Path(args.json or out / "results.jsonl")
    stamp = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
                 torch=torch.__version__, threads=torch.get_num_threads())
    emit(dict(kind="setup", **stamp, train_steps=args.train_steps, n=args.n, seed=args.seed), log)
    test_images, _ = digits_tensors("test", 16)                                      # (297, 1, 16, 16)
    emit(dict(kind="real", roughness=roughness(test_images)), log)

    for name in args.variants:
        run = out / name
        if not args.reuse:
            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            run_training("ddpm-digits", run, overrides=[f"steps={args.train_steps}", "sample_every=0"]
                         + VARIANTS[name], evaluate_after=False, progress=False)
            emit(dict(kind="train", variant=name, seconds=round(time.perf_counter() - t0, 1)), log)
        model, sections = load_run(run)
        model.eval()
        diffusion = sections["diffusion"].build()
        runs = [] if args.only_consistent else [(sampler, True, steps) for steps in args.steps
                                                for sampler in ("ddpm", "ddim")]
        if not args.only_consistent:
            emit(dict(kind="per_timestep", variant=name, errors=per_timestep_error(model, diffusion, test_images)), log)
        if name == "eps-minsnr5":
            if not args.only_consistent:
                runs += [(sampler, False, steps) for steps in args.unclipped_steps for sampler in ("ddpm", "ddim")]
            runs += [("ddim-consistent", True, steps) for steps in args.consistent_steps]
        for sampler, clip_x0, steps in runs:
            t0 = time.perf_counter()
            if sampler == "ddim-consistent":
                x = ddim_consistent(model, diffusion, args.n, tuple(test_images.shape[1:]), steps, args.seed)
            else:
                x = sample_from_run(model, sections, args.n, seed=args.seed, sampler=sampler, sample_steps=steps,
                                    clip_x0=clip_x0)
            m = digit_metrics(x)
            emit(dict(kind="sample", variant=name, sampler=sampler, steps=steps, clip_x0=clip_x0,
                      recognizability=round(m["recognizability"], 3),
                      real_recognizability=round(m["real_recognizability"], 3),
                      coverage=round(m["coverage"], 3), frechet=round(m["frechet"], 2),
                      real_frechet=round(m["real_frechet"], 2), roughness=round(roughness(x), 4),
                      seconds=round(time.perf_counter() - t0, 1)), log)


if __name__ == "__main__":
    main()
