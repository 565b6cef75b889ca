"""Forward + backward time of minidiff's text-conditional U-Net against diffusers' UNet2DConditionModel.

The companion of bench_unet_speed.py (Chapter 1's unconditional U-Net), for Chapter 3's network with
cross-attention. For each configuration the script builds minidiff's UNet from a preset, converts it with the
inverse converter (minidiff.models.unet_diffusers.to_diffusers) into a diffusers UNet2DConditionModel with the
same weights, checks that the two give the same output for the same (x_t, t, context), and then times one
training step (forward, mean-square loss, backward) of each, alternating between the two in one process
(benchmarks/timing.py) so that both see the same machine load. It prints a markdown table of medians and the
ratio minidiff / diffusers (below 1: minidiff is faster).

    python benchmarks/bench_cond_unet_speed.py --config toy --repeats 2        # a few seconds
    python benchmarks/bench_cond_unet_speed.py --config sd15-unet --repeats 5  # heavy: ~3.4 GB of weights per model

`sd15-unet` holds two 859,520,964-parameter networks (3.4 GB of float32 weights each); gradients are freed
after every timed step, so only one network's gradients (3.4 GB) and activations are alive at a time. Needs the
`parity` extra (diffusers) and minidiff importable (pip install -e ".[parity]").
"""
from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel
from timing import add_arguments, append_json, environment, interleaved, set_threads

from minidiff.models.unet import UNet, UNetConfig
from minidiff.models.unet_diffusers import to_diffusers

# name -> (minidiff preset, batch size, text tokens L). Latent size is the preset's sample_size.
# toy: the sd-shapes recipe's batch; sd15-unet: one 512x512 image (64x64 latents) and CLIP's 77 tokens.
CONFIGS = {
    "toy": (UNetConfig.text_toy(), 32, 16),
    "sd15-unet": (UNetConfig.sd15(), 1, 77),
}
TOLERANCE = 1e-4


def build_pair(config: UNetConfig) -> tuple[UNet, UNet2DConditionModel]:
    """(minidiff UNet, diffusers UNet2DConditionModel) with identical weights."""
    torch.manual_seed(0)
    ours = UNet(config)
    state_dict, reference_config = to_diffusers(ours.state_dict(), config)
    theirs = UNet2DConditionModel.from_config(reference_config)
    theirs.load_state_dict(state_dict)     # strict: every key and shape
    return ours, theirs


def bench(name: str, repeats: int, warmup: int, threads: int) -> dict:
    config, batch, tokens = CONFIGS[name]
    ours, theirs = build_pair(config)
    models = {"minidiff": ours, "diffusers": theirs}
    g = torch.Generator().manual_seed(1)
    size = config.sample_size
    x = torch.randn(batch, config.in_channels, size, size, generator=g)          # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=g)                            # (B,)
    context = torch.randn(batch, tokens, config.cross_attention_dim, generator=g)  # (B, L, D)
    outputs = {"minidiff": lambda: ours(x, t, context),
               "diffusers": lambda: theirs(x, t, encoder_hidden_states=context).sample}

    for model in models.values():
        model.eval()
    with torch.no_grad():
        difference = (outputs["minidiff"]() - outputs["diffusers"]()).abs().max().item()
    if difference > TOLERANCE:
        raise RuntimeError(f"{name}: outputs differ by {difference:.2e} (> {TOLERANCE}); not timing different networks")

    for model in models.values():
        model.train()   # timed as in training (no dropout in these presets, the same in both)
    steps = {which: (lambda which=which: outputs[which]().square().mean().backward()) for which in models}
    free_gradients = lambda which: models[which].zero_grad(set_to_none=True)  # noqa: E731
    timing = interleaved(steps, repeats, warmup, before=free_gradients, after=free_gradients)
    return dict(config=name, batch=batch, size=f"{size}x{size}", tokens=tokens, threads=threads, repeats=repeats,
                warmup=warmup, parameters=sum(p.numel() for p in ours.parameters()), max_abs_diff=difference,
                **timing.record("minidiff", "diffusers"), **environment())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="toy",
                        help="toy (default, seconds) or sd15-unet (heavy: ~16 GB, minutes); all runs both")
    add_arguments(parser)
    args = parser.parse_args()

    threads = set_threads(args.threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]

    print("| config | batch | size | text tokens | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms "
          "| ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads)
        print(f"| {name} | {result['batch']} | {result['size']} | {result['tokens']} | {threads} "
              f"| {result['minidiff_ms']:.1f} | {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        append_json(args.json, result)


if __name__ == "__main__":
    main()
