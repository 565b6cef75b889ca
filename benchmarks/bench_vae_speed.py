"""Forward + backward time of minidiff's Autoencoder against diffusers' AutoencoderKL holding the same weights.

The autoencoder counterpart of bench_unet_speed.py. For each configuration the script builds a diffusers
AutoencoderKL that mirrors a minidiff preset exactly, copies its weights into minidiff's Autoencoder the way
minidiff.load_pretrained does for AutoencoderKL folders (minidiff.weights.rename_keys with UNET_KEY_MAP, then
load_state_dict_strict), checks that the two give the same reconstruction, and then times one training step
of each, alternating between the two (A B, B A, A B, ...) in one process so that both see the same machine
load. It prints a markdown table of medians and the ratio minidiff / diffusers (below 1: minidiff is faster).

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
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.weights import UNET_KEY_MAP, autoencoder_config_from_diffusers, load_state_dict_strict, rename_keys

# name -> (minidiff preset, image size, batch size)
CONFIGS = {
    "toy": (AutoencoderConfig.toy(), 32, 32),
    "sd-vae": (AutoencoderConfig.sd_vae(), 128, 1),
}
KL_WEIGHT = 1e-6


def diffusers_kwargs(config: AutoencoderConfig) -> dict:
    """AutoencoderKL arguments for the network an AutoencoderConfig describes (the inverse of
    autoencoder_config_from_diffusers). diffusers fixes the GroupNorm eps at 1e-6, minidiff's default."""
    n = len(config.block_channels)
    return dict(
        in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.block_channels, layers_per_block=config.layers_per_block, act_fn="silu",
        latent_channels=config.latent_channels, norm_num_groups=config.norm_groups, sample_size=config.sample_size,
        scaling_factor=config.scaling_factor, shift_factor=config.shift_factor or None,
        use_quant_conv=config.use_quant_conv, use_post_quant_conv=config.use_post_quant_conv,
        mid_block_add_attention=True,
    )


def build_pair(config: AutoencoderConfig) -> tuple[Autoencoder, AutoencoderKL]:
    """(minidiff Autoencoder, diffusers AutoencoderKL) with identical weights."""
    if config.norm_eps != 1e-6:
        raise ValueError(f"diffusers' AutoencoderKL has GroupNorm eps 1e-6; the preset has {config.norm_eps}")
    torch.manual_seed(0)
    theirs = AutoencoderKL(**diffusers_kwargs(config))
    mirrored = autoencoder_config_from_diffusers(dict(theirs.config))
    if mirrored != config:
        raise ValueError(f"the diffusers mirror does not match the preset:\n  {mirrored}\n  {config}")
    ours = Autoencoder(config)
    load_state_dict_strict(ours, rename_keys(theirs.state_dict(), UNET_KEY_MAP), "the diffusers model")
    return ours, theirs


def max_reconstruction_difference(ours: Autoencoder, theirs: AutoencoderKL, x: torch.Tensor) -> float:
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        mine = ours.decode(ours.encode(x).mean)
        reference = theirs.decode(theirs.encode(x).latent_dist.mean).sample
        return (mine - reference).abs().max().item()


def training_step(model: torch.nn.Module, x: torch.Tensor, diffusers: bool) -> float:
    """Seconds for encode + decode (posterior mean) + loss + backward."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if diffusers:
        posterior = model.encode(x).latent_dist
        x_hat = model.decode(posterior.mean).sample
    else:
        posterior = model.encode(x)
        x_hat = model.decode(posterior.mean)
    loss = F.mse_loss(x_hat, x) + KL_WEIGHT * posterior.kl().mean()
    loss.backward()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(name: str, repeats: int, warmup: int, threads: int, batch: int | None, size: int | None) -> dict:
    config, default_size, default_batch = CONFIGS[name]
    batch, size = batch or default_batch, size or default_size
    if size % config.factor:
        raise ValueError(f"{name}: image size {size} is not a multiple of the autoencoder's factor {config.factor}")
    ours, theirs = build_pair(config)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, config.in_channels, size, size, generator=g) * 2 - 1    # (B, C, H, W) in [-1, 1]

    difference = max_reconstruction_difference(ours, theirs, x)
    tolerance = 1e-4
    if difference > tolerance:
        raise RuntimeError(f"{name}: reconstructions differ by {difference:.2e} (> {tolerance}); "
                           f"not timing different networks")

    ours.train()        # timed as in training (neither network has dropout or batch statistics)
    theirs.train()
    times = {"minidiff": [], "diffusers": []}
    for i in range(warmup + repeats):
        order = ("minidiff", "diffusers") if i % 2 == 0 else ("diffusers", "minidiff")
        for which in order:
            seconds = training_step(ours if which == "minidiff" else theirs, x, diffusers=which == "diffusers")
            if i >= warmup:
                times[which].append(seconds)

    minidiff_ms = 1000 * statistics.median(times["minidiff"])
    diffusers_ms = 1000 * statistics.median(times["diffusers"])
    return dict(
        config=name, batch=batch, size=f"{size}x{size}", threads=threads, repeats=repeats, warmup=warmup,
        parameters=sum(p.numel() for p in ours.parameters()), max_abs_diff=difference,
        minidiff_ms=round(minidiff_ms, 2), diffusers_ms=round(diffusers_ms, 2),
        ratio=round(minidiff_ms / diffusers_ms, 3),
        minidiff_ms_all=[round(1000 * s, 2) for s in times["minidiff"]],
        diffusers_ms_all=[round(1000 * s, 2) for s in times["diffusers"]],
        torch=torch.__version__, diffusers=diffusers.__version__, machine=platform.machine(), cpu=cpu_name(),
        cpu_count=os.cpu_count(), when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], action="append", default=None,
                        help="repeat to run several (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPU cores)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: toy 32, sd-vae 1)")
    parser.add_argument("--size", type=int, default=None, help="image height = width (default: toy 32, sd-vae 128)")
    parser.add_argument("--json", default=None, help="append one JSON line per configuration to this file")
    args = parser.parse_args()

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    chosen = args.config or ["all"]
    names = list(CONFIGS) if "all" in chosen else list(dict.fromkeys(chosen))

    print("| config | batch | size | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms | ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads, args.batch, args.size)
        print(f"| {name} | {result['batch']} | {result['size']} | {threads} | {result['minidiff_ms']:.1f} "
              f"| {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
