"""Forward + backward time of minidiff's Autoencoder against diffusers' AutoencoderKL holding the same weights.

The autoencoder counterpart of bench_unet_speed.py. For each configuration the script builds minidiff's
Autoencoder from a preset, converts it with the inverse converter (minidiff.models.autoencoder_diffusers.to_diffusers)
into a diffusers AutoencoderKL with the same weights, checks that the two give the same reconstruction, and then
times one training step of each, alternating between the two in one process (benchmarks/timing.py) so that both
see the same machine load. It prints a markdown table of medians and the ratio minidiff / diffusers (below 1:
minidiff is faster).

One training step: encode, take the posterior MEAN as z (no sampling: identical in both and deterministic),
decode, loss = mean-square reconstruction error + 1e-6 * KL(q(z|x) || N(0, I)) (summed per example, averaged
over the batch), backward. The adversarial and perceptual terms of LDM's loss are not part of it.

Configurations: "toy" (AutoencoderConfig.toy(), 32x32, batch 32) and "sd-vae" (AutoencoderConfig.sd_vae(),
the SD 1.x kl-f8 VAE, 128x128, batch 1: SD's 512x512 is too slow for a CPU benchmark; --size changes it).

    python benchmarks/bench_vae_speed.py                      # both configurations, all CPU threads
    python benchmarks/bench_vae_speed.py --config toy --threads 1 --repeats 50 --json results.jsonl
    python benchmarks/bench_vae_speed.py --config sd-vae --size 256 --repeats 5

Numbers go to benchmarks/RESULTS.md. Needs the `parity` extra (diffusers) and minidiff importable
(pip install -e ".[parity]").
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from timing import add_arguments, append_json, environment, interleaved, set_threads

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.autoencoder_diffusers import to_diffusers

# name -> (minidiff preset, image size, batch size)
CONFIGS = {
    "toy": (AutoencoderConfig.toy(), 32, 32),
    "sd-vae": (AutoencoderConfig.sd_vae(), 128, 1),
}
KL_WEIGHT = 1e-6
TOLERANCE = 1e-4


def build_pair(config: AutoencoderConfig) -> tuple[Autoencoder, AutoencoderKL]:
    """(minidiff Autoencoder, diffusers AutoencoderKL) with identical weights."""
    torch.manual_seed(0)
    ours = Autoencoder(config)
    state_dict, reference_config = to_diffusers(ours.state_dict(), config)
    theirs = AutoencoderKL.from_config(reference_config)
    theirs.load_state_dict(state_dict)     # strict: every key and shape
    return ours, theirs


def loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """encode, posterior mean as z, decode; MSE + KL_WEIGHT * KL, averaged over the batch."""
    if isinstance(model, AutoencoderKL):
        posterior = model.encode(x).latent_dist
        x_hat = model.decode(posterior.mean).sample
    else:
        posterior = model.encode(x)
        x_hat = model.decode(posterior.mean)
    return F.mse_loss(x_hat, x) + KL_WEIGHT * posterior.kl().mean()


def max_reconstruction_difference(ours: Autoencoder, theirs: AutoencoderKL, x: torch.Tensor) -> float:
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        mine = ours.decode(ours.encode(x).mean)
        reference = theirs.decode(theirs.encode(x).latent_dist.mean).sample
        return (mine - reference).abs().max().item()


def bench(name: str, repeats: int, warmup: int, threads: int, batch: int | None, size: int | None) -> dict:
    config, default_size, default_batch = CONFIGS[name]
    batch, size = batch or default_batch, size or default_size
    if size % config.factor:
        raise ValueError(f"{name}: image size {size} is not a multiple of the autoencoder's factor {config.factor}")
    ours, theirs = build_pair(config)
    models = {"minidiff": ours, "diffusers": theirs}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, config.in_channels, size, size, generator=g) * 2 - 1    # (B, C, H, W) in [-1, 1]

    difference = max_reconstruction_difference(ours, theirs, x)
    if difference > TOLERANCE:
        raise RuntimeError(f"{name}: reconstructions differ by {difference:.2e} (> {TOLERANCE}); "
                           f"not timing different networks")

    for model in models.values():
        model.train()   # timed as in training (neither network has dropout or batch statistics)
    steps = {which: (lambda which=which: loss(models[which], x).backward()) for which in models}
    timing = interleaved(steps, repeats, warmup, before=lambda which: models[which].zero_grad(set_to_none=True))
    return dict(config=name, batch=batch, size=f"{size}x{size}", threads=threads, repeats=repeats, warmup=warmup,
                parameters=sum(p.numel() for p in ours.parameters()), max_abs_diff=difference,
                **timing.record("minidiff", "diffusers"), **environment())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], action="append", default=None,
                        help="repeat to run several (default: all)")
    add_arguments(parser)
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: toy 32, sd-vae 1)")
    parser.add_argument("--size", type=int, default=None, help="image height = width (default: toy 32, sd-vae 128)")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    chosen = args.config or ["all"]
    names = list(CONFIGS) if "all" in chosen else list(dict.fromkeys(chosen))

    print("| config | batch | size | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms | ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads, args.batch, args.size)
        print(f"| {name} | {result['batch']} | {result['size']} | {threads} | {result['minidiff_ms']:.1f} "
              f"| {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        append_json(args.json, result)


if __name__ == "__main__":
    main()
