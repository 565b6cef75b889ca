"""Forward + backward time of minidiff's U-Net against diffusers' UNet2DModel holding the same weights.

For each configuration the script builds minidiff's UNet from a preset, converts it with the inverse converter
(minidiff.models.unet_diffusers.to_diffusers) into a diffusers UNet2DModel with the same weights, checks that the
two give the same output, and then times one training step (forward, mean-square loss, backward) of each,
alternating between the two in one process (benchmarks/timing.py) so that both see the same machine load. It
prints a markdown table of medians and the ratio minidiff / diffusers (below 1: minidiff is faster).
The toy preset folds 2x2 pixel patches into channels (patch_size=2), which UNet2DModel cannot; its diffusers side
is the UNet2DModel of the network inside the fold, wrapped in the same pixel_unshuffle / pixel_shuffle.

    python benchmarks/bench_unet_speed.py                      # every configuration, all CPU threads
    python benchmarks/bench_unet_speed.py --config toy --threads 1 --repeats 50 --json results.jsonl

Needs the `parity` extra (diffusers) and minidiff importable (pip install -e ".[parity]").
"""
from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from timing import add_arguments, append_json, environment, interleaved, set_threads

from minidiff.models.unet import UNet, UNetConfig
from minidiff.models.unet_diffusers import to_diffusers

# name -> (minidiff preset, batch size). Image size is the preset's sample_size.
CONFIGS = {
    "ddpm-cifar10": (UNetConfig.ddpm_cifar10(), 8),
    "toy": (UNetConfig.toy(), 128),                       # folds 2x2 patches: diffusers' side folds them around it
    "toy-unfolded": (UNetConfig.toy(patch_size=1), 128),
}
TOLERANCE = 1e-4


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
    ours = UNet(config)
    p = config.patch_size                  # diffusers has no patch fold: convert the network inside it
    inner = dataclasses.replace(config, patch_size=1, in_channels=config.in_channels * p * p,
                                out_channels=config.out_channels * p * p, sample_size=config.sample_size // p)
    state_dict, reference_config = to_diffusers(ours.state_dict(), inner)
    theirs = UNet2DModel.from_config(reference_config)
    theirs.load_state_dict(state_dict)     # strict: every key and shape
    return ours, (Folded(theirs, p) if p > 1 else theirs)


def bench(name: str, repeats: int, warmup: int, threads: int) -> dict:
    config, batch = CONFIGS[name]
    ours, theirs = build_pair(config)
    models = {"minidiff": ours, "diffusers": theirs}
    g = torch.Generator().manual_seed(1)
    size = config.sample_size
    x = torch.randn(batch, config.in_channels, size, size, generator=g)     # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=g)                       # (B,)
    outputs = {"minidiff": lambda: ours(x, t), "diffusers": lambda: theirs(x, t).sample}

    for model in models.values():
        model.eval()
    with torch.no_grad():
        difference = (outputs["minidiff"]() - outputs["diffusers"]()).abs().max().item()
    if difference > TOLERANCE:
        raise RuntimeError(f"{name}: outputs differ by {difference:.2e} (> {TOLERANCE}); not timing different networks")

    for model in models.values():
        model.train()   # timed as in training: dropout on (0.1 in the CIFAR-10 preset, the same in both)
    steps = {which: (lambda which=which: outputs[which]().square().mean().backward()) for which in models}
    timing = interleaved(steps, repeats, warmup, before=lambda which: models[which].zero_grad(set_to_none=True))
    return dict(config=name, batch=batch, size=f"{size}x{size}", threads=threads, repeats=repeats, warmup=warmup,
                parameters=sum(p.numel() for p in ours.parameters()), max_abs_diff=difference,
                **timing.record("minidiff", "diffusers"), **environment())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    add_arguments(parser)
    args = parser.parse_args()

    threads = set_threads(args.threads)
    names = list(CONFIGS) if args.config == "all" else [args.config]

    print("| config | batch | size | threads | minidiff fwd+bwd ms | diffusers fwd+bwd ms | ratio minidiff/diffusers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        result = bench(name, args.repeats, args.warmup, threads)
        print(f"| {name} | {result['batch']} | {result['size']} | {threads} | {result['minidiff_ms']:.1f} "
              f"| {result['diffusers_ms']:.1f} | {result['ratio']:.3f} |", flush=True)
        append_json(args.json, result)


if __name__ == "__main__":
    main()
