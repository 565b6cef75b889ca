"""Forward + backward time of minidiff's U-Net against diffusers' UNet2DModel holding the same weights.

For each configuration the script builds a diffusers UNet2DModel that mirrors a minidiff preset exactly,
copies its weights into minidiff's UNet (minidiff.weights.rename_keys with UNET_KEY_MAP), checks that the
two give the same output, and then times one training step (forward, mean-square loss, backward) of
each, alternating between the two (A B, B A, A B, ...) in one process so that both see the same machine
load. It prints a markdown table of medians and the ratio minidiff / diffusers (below 1: minidiff is faster).
The toy preset folds 2x2 pixel patches into channels (patch_size=2), which UNet2DModel cannot; its diffusers side
is the UNet2DModel of the network inside the fold, wrapped in the same pixel_unshuffle / pixel_shuffle.

    python benchmarks/bench_unet_speed.py                      # every configuration, all CPU threads
    python benchmarks/bench_unet_speed.py --config toy --threads 1 --repeats 50 --json results.jsonl

Needs the `parity` extra (diffusers) and minidiff importable (pip install -e ".[parity]").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import diffusers
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from minidiff.models.unet import UNet, UNetConfig
from minidiff.weights import UNET_KEY_MAP, load_state_dict_strict, rename_keys, unet_config_from_diffusers

# name -> (minidiff preset, batch size). Image size is the preset's sample_size.
CONFIGS = {
    "ddpm-cifar10": (UNetConfig.ddpm_cifar10(), 8),
    "toy": (UNetConfig.toy(), 128),                       # folds 2x2 patches: diffusers' side folds them around it
    "toy-unfolded": (UNetConfig.toy(patch_size=1), 128),
}


def diffusers_kwargs(config: UNetConfig) -> dict:
    """UNet2DModel arguments for the network a UNetConfig describes (the inverse of unet_config_from_diffusers).

    diffusers' up_block_types[i] works at level n-1-i, so the up path lists the levels in reverse.
    """
    n = len(config.block_channels)
    return dict(
        sample_size=config.sample_size, in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=config.block_channels, layers_per_block=config.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpBlock2D" if n - 1 - i in config.up_levels else "UpBlock2D"
                             for i in range(n)),
        attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_groups, norm_eps=config.norm_eps,
        dropout=config.dropout, flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift,
        downsample_padding=config.downsample_padding, time_embedding_type="positional", act_fn="silu",
    )


class Folded(torch.nn.Module):
    """diffusers' UNet2DModel on p x p patches folded into channels, as minidiff's UNet does with patch_size=p."""

    def __init__(self, model: UNet2DModel, patch: int):
        super().__init__()
        self.model, self.patch = model, patch

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        out = self.model(F.pixel_unshuffle(x, self.patch), t).sample
        return SimpleNamespace(sample=F.pixel_shuffle(out, self.patch))


def build_pair(config: UNetConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(minidiff UNet, diffusers UNet2DModel) with identical weights."""
    torch.manual_seed(0)
    p = config.patch_size                  # diffusers has no patch fold: mirror the network inside it
    inner = dataclasses.replace(config, patch_size=1, in_channels=config.in_channels * p * p,
                                out_channels=config.out_channels * p * p, sample_size=config.sample_size // p)
    theirs = UNet2DModel(**diffusers_kwargs(inner))
    mirrored = unet_config_from_diffusers(dict(theirs.config))
    # the loader spells out the up-path attention levels; a preset may leave them as None ("as on the way down")
    same_levels = mirrored.up_levels == config.up_levels
    without_up = lambda c: dataclasses.replace(c, up_attention_levels=None)  # noqa: E731
    same_rest = without_up(mirrored) == without_up(inner)
    if not (same_levels and same_rest):
        raise ValueError(f"the diffusers mirror does not match the preset:\n  {mirrored}\n  {inner}")
    ours = UNet(config)
    load_state_dict_strict(ours, rename_keys(theirs.state_dict(), UNET_KEY_MAP), "the diffusers model")
    return ours, (Folded(theirs, p) if p > 1 else theirs)


def max_output_difference(ours, theirs, x: torch.Tensor, t: torch.Tensor) -> float:
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        return (ours(x, t) - theirs(x, t).sample).abs().max().item()


def training_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, diffusers: bool) -> float:
    """Seconds for forward + loss + backward."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(x, t).sample if diffusers else model(x, t)
    out.square().mean().backward()
    return time.perf_counter() - start


def bench(name: str, repeats: int, warmup: int, threads: int) -> dict:
    config, batch = CONFIGS[name]
    ours, theirs = build_pair(config)
    g = torch.Generator().manual_seed(1)
    size = config.sample_size
    x = torch.randn(batch, config.in_channels, size, size, generator=g)     # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=g)                       # (B,)

    difference = max_output_difference(ours, theirs, x, t)
    tolerance = 1e-4
    if difference > tolerance:
        raise RuntimeError(f"{name}: outputs differ by {difference:.2e} (> {tolerance}); not timing different networks")

    ours.train()        # timed as in training: dropout on (0.1 in the CIFAR-10 preset, the same in both)
    theirs.train()
    times = {"minidiff": [], "diffusers": []}
    for i in range(warmup + repeats):
        order = ("minidiff", "diffusers") if i % 2 == 0 else ("diffusers", "minidiff")
        for which in order:
            seconds = training_step(ours if which == "minidiff" else theirs, x, t, diffusers=which == "diffusers")
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
        torch=torch.__version__, diffusers=diffusers.__version__, machine=platform.machine(),
        cpu_count=os.cpu_count(), when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPU cores)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--json", default=None, help="append one JSON line per configuration to this file")
    args = parser.parse_args()

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]

    print("| config | batch | size | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms | ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads)
        print(f"| {name} | {result['batch']} | {result['size']} | {threads} | {result['minidiff_ms']:.1f} "
              f"| {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
