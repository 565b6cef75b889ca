"""Forward + backward time of minidiff's text-conditional U-Net against diffusers' UNet2DConditionModel.

The companion of bench_unet_speed.py (Chapter 1's unconditional U-Net), for Chapter 3's network with
cross-attention. For each configuration the script builds a diffusers UNet2DConditionModel that mirrors a
minidiff preset exactly, copies its weights into minidiff's UNet (minidiff.weights.rename_keys with
UNET_KEY_MAP), checks that the two give the same output for the same (x_t, t, context), and then times one
training step (forward, mean-square loss, backward) of each, alternating between the two (A B, B A, A B, ...)
in one process so that both see the same machine load. It prints a markdown table of medians and the ratio
minidiff / diffusers (below 1: minidiff is faster).

    python benchmarks/bench_cond_unet_speed.py --config toy --repeats 2        # a few seconds
    python benchmarks/bench_cond_unet_speed.py --config sd15-unet --repeats 5  # heavy: ~3.4 GB of weights per model

`sd15-unet` holds two 859,520,964-parameter networks (3.4 GB of float32 weights each); gradients are freed
after every timed step, so only one network's gradients (3.4 GB) and activations are alive at a time. Needs the `parity` extra (diffusers) and minidiff importable (pip install -e ".[parity]").
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
from diffusers import UNet2DConditionModel

from minidiff.models.unet import UNet, UNetConfig
from minidiff.weights import UNET_KEY_MAP, cond_unet_config_from_diffusers, load_state_dict_strict, rename_keys

# name -> (minidiff preset, batch size, text tokens L). Latent size is the preset's sample_size.
# toy: the sd-shapes recipe's batch; sd15-unet: one 512x512 image (64x64 latents) and CLIP's 77 tokens.
CONFIGS = {
    "toy": (UNetConfig.text_toy(), 32, 16),
    "sd15-unet": (UNetConfig.sd15(), 1, 77),
}


def diffusers_kwargs(config: UNetConfig) -> dict:
    """UNet2DConditionModel arguments for the network a UNetConfig describes (cond_unet_config_from_diffusers inverted).

    diffusers' up_block_types[i] works at level n-1-i, and its `attention_head_dim` is the number of heads."""
    n = len(config.block_channels)
    return dict(
        sample_size=config.sample_size, in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=config.block_channels, layers_per_block=config.layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in config.attention_levels else "DownBlock2D"
                               for i in range(n)),
        up_block_types=tuple("CrossAttnUpBlock2D" if n - 1 - i in config.up_levels else "UpBlock2D" for i in range(n)),
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=[config.heads_at(level) for level in range(n)],
        transformer_layers_per_block=[config.depth_at(level) for level in range(n)],
        use_linear_projection=config.use_linear_projection, norm_num_groups=config.norm_groups,
        norm_eps=config.norm_eps, dropout=config.dropout, flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift, downsample_padding=config.downsample_padding,
    )


def same_network(a: UNetConfig, b: UNetConfig) -> bool:
    """Whether two configs build the same network (per-level settings spelled out, up levels as a set)."""
    n = len(a.block_channels)
    per_level = lambda c: ([c.heads_at(i) for i in range(n)], [c.depth_at(i) for i in range(n)],  # noqa: E731
                           set(c.up_levels))
    rest = lambda c: {k: v for k, v in vars(c).items()  # noqa: E731
                      if k not in ("attention_heads", "transformer_depth", "up_attention_levels")}
    return len(b.block_channels) == n and per_level(a) == per_level(b) and rest(a) == rest(b)


def build_pair(config: UNetConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(minidiff UNet, diffusers UNet2DConditionModel) with identical weights."""
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**diffusers_kwargs(config))
    mirrored = cond_unet_config_from_diffusers(dict(theirs.config))
    if not same_network(mirrored, config):
        raise ValueError(f"the diffusers mirror does not match the preset:\n  {mirrored}\n  {config}")
    ours = UNet(config)
    load_state_dict_strict(ours, rename_keys(theirs.state_dict(), UNET_KEY_MAP), "the diffusers model")
    return ours, theirs


def run(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    if isinstance(model, UNet2DConditionModel):
        return model(x, t, encoder_hidden_states=context).sample
    return model(x, t, context)


def training_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> float:
    """Seconds for forward + loss + backward (the gradients are freed afterwards, outside the timing)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    run(model, x, t, context).square().mean().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def bench(name: str, repeats: int, warmup: int, threads: int) -> dict:
    config, batch, tokens = CONFIGS[name]
    ours, theirs = build_pair(config)
    g = torch.Generator().manual_seed(1)
    size = config.sample_size
    x = torch.randn(batch, config.in_channels, size, size, generator=g)          # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=g)                            # (B,)
    context = torch.randn(batch, tokens, config.cross_attention_dim, generator=g)  # (B, L, D)

    ours.eval()
    theirs.eval()
    with torch.no_grad():
        difference = (run(ours, x, t, context) - run(theirs, x, t, context)).abs().max().item()
    tolerance = 1e-4
    if difference > tolerance:
        raise RuntimeError(f"{name}: outputs differ by {difference:.2e} (> {tolerance}); not timing different networks")

    ours.train()        # timed as in training (no dropout in these presets, the same in both)
    theirs.train()
    times = {"minidiff": [], "diffusers": []}
    for i in range(warmup + repeats):
        order = ("minidiff", "diffusers") if i % 2 == 0 else ("diffusers", "minidiff")
        for which in order:
            seconds = training_step(ours if which == "minidiff" else theirs, x, t, context)
            if i >= warmup:
                times[which].append(seconds)

    minidiff_ms = 1000 * statistics.median(times["minidiff"])
    diffusers_ms = 1000 * statistics.median(times["diffusers"])
    return dict(
        config=name, batch=batch, size=f"{size}x{size}", tokens=tokens, threads=threads, repeats=repeats,
        warmup=warmup, parameters=sum(p.numel() for p in ours.parameters()), max_abs_diff=difference,
        minidiff_ms=round(minidiff_ms, 2), diffusers_ms=round(diffusers_ms, 2),
        ratio=round(minidiff_ms / diffusers_ms, 3),
        minidiff_ms_all=[round(1000 * s, 2) for s in times["minidiff"]],
        diffusers_ms_all=[round(1000 * s, 2) for s in times["diffusers"]],
        torch=torch.__version__, diffusers=diffusers.__version__, machine=platform.machine(),
        cpu_count=os.cpu_count(), when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="toy",
                        help="toy (default, seconds) or sd15-unet (heavy: ~16 GB, minutes); all runs both")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPU cores)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--json", default=None, help="append one JSON line per configuration to this file")
    args = parser.parse_args()

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]

    print("| config | batch | size | text tokens | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms "
          "| ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads)
        print(f"| {name} | {result['batch']} | {result['size']} | {result['tokens']} | {threads} "
              f"| {result['minidiff_ms']:.1f} | {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
