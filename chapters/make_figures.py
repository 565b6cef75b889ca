"""Draw the figures of the Chapter 0-3 readings from minidiff's own code, and write them as PNG files.

    python chapters/make_figures.py                      # every figure, trained runs read from runs/RECIPE
    python chapters/make_figures.py --chapter 1          # one chapter's figures
    python chapters/make_figures.py --runs /tmp/runs     # runs trained elsewhere (DIR/ddpm-digits, DIR/sd-shapes, ...)
    python chapters/make_figures.py --train-missing      # train a missing run first, with `minidiff train`
    python chapters/make_figures.py --no-runs            # only the figures that need no trained run (seconds)

Each figure is written to chapters/NN-slug/figures/NAME.png (or OUT/NN-slug/figures/NAME.png with --out OUT),
atomically. Two kinds of figure:

- drawn from the code alone: schedules, the forward process, the networks' shapes (traced with forward hooks),
  the Shapes world and ShapesEval, and the autoencoder with its reconstructions (the `vae-shapes` part that ships
  with minidiff). These always run.
- drawn from a trained run of a recipe (`samples.png` and friends, the guidance sweep, attention maps): the run is
  read from RUNS/RECIPE and sampled with the recipe's sampler and a fixed seed. A missing run is skipped with the
  command that trains it, unless --train-missing.

Every random draw is seeded, so a rerun draws the same pictures.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from minidiff.io import atomic_write  # noqa: E402
from minidiff.plotting import image_grid  # noqa: E402

CHAPTERS = Path(__file__).resolve().parent
DPI = 100                      # modest: every figure stays well under 300 KB
SEED = 0
PROMPT = "a red circle left of a blue square"        # Chapter 3's running example
GUIDANCE_SCALES = (1.0, 3.0, 5.0, 7.5)              # the scales of Chapter 3's measured sweep (section 8)


@dataclass
class Context:
    runs: Path                 # where trained runs live: RUNS/RECIPE
    train_missing: bool


class MissingRun(Exception):
    """A figure needs a finished run that is not there: MissingRun(what is wrong, the command that fixes it)."""


# ---------------------------------------------------------------------------- small drawing helpers


def show(ax, images: torch.Tensor, nrow: int | None = None, title: str | None = None, fontsize: int = 9) -> None:
    """(N, C, H, W) images in [-1, 1] as one grid on ax (no frame around a single image), pixels unsmoothed."""
    ax.imshow(image_grid(images, nrow, pad=1 if len(images) > 1 else 0), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize)


def shape_text(shape) -> str:
    """(1, 4, 8, 8) -> '1×4×8×8'."""
    return "×".join(str(int(s)) for s in shape)


def box(ax, x: float, y: float, text: str, color: str = "#dbe8f6", fontsize: float = 8, **kwargs):
    """A rounded box of text centred at (x, y), in data coordinates."""
    return ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, family="monospace",
                   bbox=dict(boxstyle="round,pad=0.4", facecolor=color, edgecolor="#555555", linewidth=0.8), **kwargs)


def arrow(ax, start, end, label: str = "", color: str = "#333333", rad: float = 0.0,
          fontsize: float = 7.5) -> None:
    """An arrow from start to end, each a point (x, y) or a box (then the arrow stops at its edge), with an
    optional label at its middle."""
    def where(end_point):
        if isinstance(end_point, tuple):
            return end_point, None
        return end_point.get_position(), end_point.get_bbox_patch()

    (xy_start, patch_a), (xy_end, patch_b) = where(start), where(end)
    ax.annotate("", xy=xy_end, xytext=xy_start,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0, connectionstyle=f"arc3,rad={rad}",
                                patchA=patch_a, patchB=patch_b, shrinkA=2, shrinkB=2))
    if label:
        ax.text((xy_start[0] + xy_end[0]) / 2, (xy_start[1] + xy_end[1]) / 2, label, ha="center", va="center",
                fontsize=fontsize, color=color, family="monospace",
                bbox=dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none"))


def diagram_axes(width: float, height: float, xlim: tuple[float, float], ylim: tuple[float, float]):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_axis_off()
    return fig, ax


def trace_shapes(modules: dict[str, torch.nn.Module], run: Callable[[], object]) -> dict[str, list]:
    """Call run() with a forward hook on each named module; returns {name: [(input shapes, output shape), ...]}
    in call order (a module called twice, e.g. once per sampling step, appears twice)."""
    seen: dict[str, list] = {name: [] for name in modules}
    hooks = []
    for name, module in modules.items():
        def hook(m, args, kwargs, out, name=name):
            inputs = [tuple(a.shape) for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
            output = out[0] if isinstance(out, tuple) else out
            seen[name].append((inputs, tuple(output.shape)))
        hooks.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


# ---------------------------------------------------------------------------- trained runs


def train_command(recipe: str, runs: Path, resume: bool = False) -> str:
    return f"minidiff train {recipe} --out {runs / recipe}" + (" --resume" if resume else "")


def run_state(folder: Path, recipe: str) -> tuple[str, str]:
    """('finished' | 'missing' | 'unfinished' | 'other', what it is in words) for the run folder of a recipe."""
    from minidiff.training.checkpoint import CHECKPOINT, load_checkpoint

    if not (folder / CHECKPOINT).is_file():
        return "missing", f"no {recipe} run in {folder}"
    _, meta = load_checkpoint(folder / CHECKPOINT)
    config = meta["config"]
    if config.get("recipe") != recipe:
        return "other", f"{folder} holds a {config.get('recipe')} run, not {recipe}"
    if meta["step"] < config["train"]["steps"]:      # an unfinished run would show weak samples as the recipe's
        return "unfinished", (f"the {recipe} run in {folder} stopped at step {meta['step']} of "
                              f"{config['train']['steps']}")
    return "finished", f"the {recipe} run in {folder}"


def trained_run(ctx: Context, recipe: str):
    """(model, sections) of the finished run RUNS/RECIPE; with --train-missing, trains (or finishes) it first."""
    from minidiff.recipes import load_run

    folder = ctx.runs / recipe
    state, why = run_state(folder, recipe)
    if state != "finished":
        command = train_command(recipe, ctx.runs, resume=state == "unfinished")
        if state == "other":
            raise MissingRun(why, f"{command}, after moving that run elsewhere")
        if not ctx.train_missing:
            raise MissingRun(why, command)
        print(f"{why}: {command}", flush=True)
        done = subprocess.run([sys.executable, "-m", "minidiff", *command.split()[1:]])
        if done.returncode != 0:
            raise ValueError(f"`{command}` stopped with exit status {done.returncode}; its message is above")
    return load_run(folder)


def run_metrics(ctx: Context, recipe: str) -> str:
    """The run's own evaluation (metrics.json, written by `minidiff train` or `minidiff eval`) in a few words."""
    from minidiff.io import read_json

    path = ctx.runs / recipe / "metrics.json"
    if not path.is_file():
        return ""
    m = read_json(path, "the run's metrics", "run `minidiff eval` on the run again")
    parts = []
    if "recognizability" in m:
        parts.append(f"recognizability {m['recognizability']:.2f} (real test digits {m['real_recognizability']:.2f})")
    if "frechet" in m:
        parts.append(f"Frechet distance {m['frechet']:.1f} (real-vs-real {m['real_frechet']:.1f})")
    if "sliced_wasserstein" in m:
        parts.append(f"sliced Wasserstein {m['sliced_wasserstein']:.3f} (real-vs-real {m['real_sliced_wasserstein']:.3f})")
    if "overall" in m:
        parts.append(f"ShapesEval overall {m['overall']:.2f} ({sum(m['counts'].values())} prompts of the "
                     f"{m['suite']} suite, w = {m['guidance_scale']:g})")
    return "the run's evaluation" + (f" on {m['n']} samples" if "n" in m else "") + ": " + ", ".join(parts) \
        if parts else ""


def samples_grid(ctx: Context, recipe: str, n: int = 64, title: str = ""):
    """n samples of a trained image recipe, drawn with its own sampler and seed SEED, as an 8-wide grid."""
    from minidiff.recipes import sample_from_run

    model, sections = trained_run(ctx, recipe)
    images = sample_from_run(model, sections, n, seed=SEED)                      # (n, C, H, W) in [-1, 1]
    s = sections["sample"]
    fig, ax = plt.subplots(figsize=(5.2, 5.6))
    show(ax, images, nrow=8, title=f"{title or recipe}: {n} samples\n{s.sampler}, {s.sample_steps} steps, seed {SEED}")
    evaluation = run_metrics(ctx, recipe)
    if evaluation:
        ax.text(0.5, -0.02, "\n".join(textwrap.wrap(evaluation, 60)), ha="center", va="top", fontsize=8,
                transform=ax.transAxes)
    return fig


# ---------------------------------------------------------------------------- Chapter 0: the Shapes world


def scenes(ctx: Context):
    """One scene for the first prompt of each ShapesEval category in the v1 suite, under its caption."""
    from minidiff.data.captions import CATEGORIES
    from minidiff.eval.shapeseval import load_suite, render_prompts

    suite = load_suite("v1")
    entries = [next(e for e in suite if e["category"] == c) for c in CATEGORIES]
    pictures = render_prompts(entries, size=64, seed=SEED)                      # uint8 (64, 64, 3) each
    fig, axes = plt.subplots(1, len(entries), figsize=(2.0 * len(entries), 2.7))
    for ax, entry, picture in zip(axes, entries, pictures):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(entry["prompt"], 20)), fontsize=8.5)
        ax.set_xlabel(entry["category"].replace("_", " "), fontsize=8, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Shapes scenes drawn for one prompt of each ShapesEval category (rendered at 64 px)", fontsize=10)
    fig.tight_layout()
    return fig


def shapeseval(ctx: Context):
    """A degraded scene (as a small generator leaves it), the detector's findings on it, and verdicts."""
    from minidiff.eval.shapeseval import as_spec, check, degrade, detect, render_prompts

    image = degrade(render_prompts([PROMPT], size=32, seed=SEED), seed=SEED)[0]   # uint8 (32, 32, 3)
    detections = detect(image)
    prompts = [PROMPT, "a blue square left of a red circle", "a red circle", "two red circles",
               "a blue square on the right", "a red circle in the bottom left", "a green triangle"]
    fig, (ax, text_ax) = plt.subplots(1, 2, figsize=(9.0, 3.3), gridspec_kw=dict(width_ratios=[1, 1.7]))
    side = image.shape[0]
    ax.imshow(image, interpolation="nearest", extent=(0, side, side, 0))
    for k, d in enumerate(detections):
        x, y, r = d.x * side, d.y * side, d.r * side
        ax.add_patch(plt.Rectangle((x - r, y - r), 2 * r, 2 * r, fill=False, edgecolor="white", linewidth=1.2,
                                   linestyle="--"))
        ax.text(x - r, y - r - 0.6, f"{k + 1}", color="white", fontsize=9, va="bottom")
    for third in (side / 3, 2 * side / 3):                                          # the grid of named positions
        ax.axhline(third, color="#888888", lw=0.5, ls=":")
        ax.axvline(third, color="#888888", lw=0.5, ls=":")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"drawn for \"{PROMPT}\",\nblurred and noised (degrade), 32 px", fontsize=9)
    found = [f"{k + 1}: {d.size} {d.color} {d.shape} at the {d.position} (misfit {d.misfit:.2f})"
             for k, d in enumerate(detections)]
    lines = ["detections"] + found + ["", "prompt -> verdict (reason)"]
    for p in prompts:
        passed, reason = check(as_spec(p), detections)
        lines.append(f"{'PASS' if passed else 'FAIL'}  {p}" + ("" if passed else f"  ({reason})"))
    text_ax.set_axis_off()
    text_ax.text(0.0, 0.5, "\n".join(lines), va="center", ha="left", fontsize=8, family="monospace",
                 transform=text_ax.transAxes)
    fig.suptitle("ShapesEval: detect the objects, then check each prompt's claim against them", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- Chapter 1: DDPM


def schedules(ctx: Context):
    """alpha_bar(t) and log SNR(t) = log(alpha_bar / (1 - alpha_bar)) of the linear and cosine schedules."""
    from minidiff.process import NoiseSchedule

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    t = np.arange(1000)
    for name, style in (("linear", "-"), ("cosine", "--")):
        schedule = NoiseSchedule.make(name, 1000)
        ax1.plot(t, schedule.alpha_bar.numpy(), style, label=name)
        ax2.plot(t, schedule.snr().log().numpy(), style, label=name)
    ax1.set(xlabel="timestep t", ylabel="alpha_bar(t)", title="signal kept: alpha_bar(t)", ylim=(-0.02, 1.02))
    ax2.set(xlabel="timestep t", ylabel="log SNR(t)", title="log SNR(t) = log(alpha_bar / (1 - alpha_bar))")
    ax2.axhline(0, color="#888888", lw=0.6)
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Noise schedules, T = 1000", fontsize=10)
    fig.tight_layout()
    return fig


def forward(ctx: Context):
    """q(x_t | x_0) on one digit at eight timesteps, one row per schedule, the same noise eps in every panel."""
    from minidiff.data import digits_tensors
    from minidiff.process import GaussianDiffusion, NoiseSchedule

    x0 = digits_tensors("train", 16)[0][:1]                                        # (1, 1, 16, 16) in [-1, 1]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED))
    steps = (0, 50, 100, 200, 300, 500, 700, 999)
    names = ("linear", "cosine")
    fig, axes = plt.subplots(len(names), len(steps), figsize=(1.3 * len(steps) + 1.0, 1.5 * len(names) + 0.6),
                             squeeze=False)
    for row, name in enumerate(names):
        diffusion = GaussianDiffusion(NoiseSchedule.make(name, 1000))
        for ax, t in zip(axes[row], steps):
            x_t = diffusion.q_sample(x0, torch.tensor([t]), eps)                  # (1, 1, 16, 16)
            im = ax.imshow(x_t[0, 0].numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {t}", fontsize=9)
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="pixel value (shown clipped to [-1, 1])")
    fig.suptitle("The forward process x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, one digit, one eps",
                 fontsize=10)
    return fig


def unet(ctx: Context):
    """The toy U-Net's feature maps level by level, shapes traced with forward hooks on one 1×1×16×16 input."""
    from minidiff.models import UNet, UNetConfig

    config = UNetConfig.toy()
    model = UNet(config).eval()
    modules = {"conv_in": model.conv_in, "mid": model.mid_block, "conv_out": model.conv_out,
               "time": model.time_embedding}
    for path, blocks in (("down", model.down_blocks), ("up", model.up_blocks)):
        for i, level in enumerate(blocks):
            for j, resnet in enumerate(level.resnets):
                modules[f"{path}{i}.res{j}"] = resnet
                if level.attentions is not None:
                    modules[f"{path}{i}.attn{j}"] = level.attentions[j]
            if level.resample is not None:
                modules[f"{path}{i}.resample"] = level.resample
    x = torch.zeros(1, config.in_channels, config.sample_size, config.sample_size)
    seen = trace_shapes(modules, lambda: model(x, torch.tensor([500])))
    out_shape = lambda name: shape_text(seen[name][0][1][1:])                    # noqa: E731  (C×H×W)
    in_shape = lambda name: shape_text(seen[name][0][0][0][1:])                  # noqa: E731

    n = len(config.block_channels)
    fig, ax = diagram_axes(10.5, 6.0, (-1.2, 11.2), (-2.4 * n - 0.1, 2.0))
    p = config.patch_size
    top_in = box(ax, 0.9, 1.3, f"x_t  {shape_text(x.shape[1:])}\npixel_unshuffle (patch {p})\n"
                 f"-> {in_shape('conv_in')}\nconv_in -> {out_shape('conv_in')}", color="#f3f3f3")
    top_out = box(ax, 9.1, 1.3, f"conv_out -> {out_shape('conv_out')}\npixel_shuffle (patch {p})\n"
                  f"-> prediction  {shape_text(x.shape[1:])}", color="#f3f3f3")
    box(ax, 5.0, 1.3, f"t -> time embedding {shape_text(seen['time'][0][1][1:])}\n(added in every ResBlock)",
        color="#fff4d6")
    above_down, above_up = top_in, top_out
    for i in range(n):
        y = -2.4 * i - 0.4
        down = [f"ResBlock {in_shape(f'down{i}.res{j}')} -> {out_shape(f'down{i}.res{j}')}"
                + ("\n  + self-attention" if f"down{i}.attn{j}" in seen else "")
                for j in range(config.layers_per_block)]
        if f"down{i}.resample" in seen:
            down.append(f"Downsample -> {out_shape(f'down{i}.resample')}")
        up_index = n - 1 - i                                                     # up_blocks run widest first
        up = [f"ResBlock {in_shape(f'up{up_index}.res{j}')} -> {out_shape(f'up{up_index}.res{j}')}"
              + ("\n  + self-attention" if f"up{up_index}.attn{j}" in seen else "")
              for j in range(config.layers_per_block + 1)]
        if f"up{up_index}.resample" in seen:
            up.append(f"Upsample -> {out_shape(f'up{up_index}.resample')}")
        side = config.sample_size // p // 2 ** i
        down_box = box(ax, 0.9, y, f"level {i}  ({side}×{side})\n" + "\n".join(down), color="#dbe8f6")
        up_box = box(ax, 9.1, y, f"level {i}  ({side}×{side})\n" + "\n".join(up), color="#e3f1dc")
        arrow(ax, down_box, up_box, "skips: each down output, concatenated\non channels to one up ResBlock's input"
              if i == 0 else "skips", "#7a7a7a")
        arrow(ax, above_down, down_box)
        arrow(ax, up_box, above_up)
        above_down, above_up = down_box, up_box
    mid = box(ax, 5.0, -2.4 * (n - 1) - 1.8, f"middle: ResBlock, self-attention, ResBlock\n"
              f"{in_shape('mid')} -> {out_shape('mid')}", color="#f6e0e0")
    arrow(ax, above_down, mid, rad=0.25)
    arrow(ax, mid, above_up, rad=0.25)
    params = sum(q.numel() for q in model.parameters())
    ax.set_title(f"UNet(UNetConfig.toy()): {params:,} parameters; shapes C×H×W (batch left out), traced with "
                 f"forward hooks", fontsize=10)
    return fig


def samples_digits(ctx: Context):
    return samples_grid(ctx, "ddpm-digits")


def samples_2d(ctx: Context):
    """The ddpm-2d run's samples over points of its data distribution."""
    from minidiff.data import sample_2d
    from minidiff.recipes import sample_from_run

    model, sections = trained_run(ctx, "ddpm-2d")
    s, name = sections["sample"], sections["data"].dataset
    points = sample_from_run(model, sections, s.num_images, seed=SEED).numpy()     # (n, 2)
    data = sample_2d(name, s.num_images, torch.Generator().manual_seed(SEED)).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 4.2), sharex=True, sharey=True)
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.5, color="#888888")
    axes[0].set_title(f"data: {name}, {len(data)} points", fontsize=9)
    axes[1].scatter(data[:, 0], data[:, 1], s=2, alpha=0.25, color="#bbbbbb", label="data")
    axes[1].scatter(points[:, 0], points[:, 1], s=2, alpha=0.6, color="#d62728", label="samples")
    axes[1].set_title(f"{len(points)} samples ({s.sampler}, {s.sample_steps} steps) over the data", fontsize=9)
    axes[1].legend(fontsize=8, markerscale=4, loc="upper right")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.grid(alpha=0.3)
    fig.suptitle("ddpm-2d: the trained MLP's samples\n" + run_metrics(ctx, "ddpm-2d"), fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- Chapter 2: latent diffusion


def shipped_autoencoder():
    from minidiff.recipes import load_run
    from minidiff.recipes.base import shipped_part

    model, _ = load_run(shipped_part("vae-shapes"))
    return model


def autoencoder(ctx: Context):
    """Image -> encoder -> latent (one panel per channel) -> decoder -> reconstruction, shapes traced."""
    from minidiff.recipes.latent import heldout_scenes

    vae = shipped_autoencoder()
    image = heldout_scenes(1, vae.config.sample_size)[0]                          # (1, 3, 32, 32) in [-1, 1]
    modules = {"encoder.conv_in": vae.encoder.conv_in, "encoder.mid": vae.encoder.mid_block,
               "encoder.conv_out": vae.encoder.conv_out, "decoder.conv_in": vae.decoder.conv_in,
               "decoder.conv_out": vae.decoder.conv_out}
    modules.update({f"encoder.level{i}": level for i, level in enumerate(vae.encoder.down_blocks)})
    modules.update({f"decoder.level{i}": level for i, level in enumerate(vae.decoder.up_blocks)})
    result = {}

    def run():
        posterior = vae.encode(image)
        result["z"] = posterior.mode()                                           # (1, L, 8, 8): the mean mu(x)
        result["recon"] = vae.decode(result["z"]).clamp(-1, 1)                   # (1, 3, 32, 32)

    seen = trace_shapes(modules, run)
    shape = lambda name: shape_text(seen[name][0][1][1:])                        # noqa: E731
    z, recon = result["z"][0], result["recon"]
    L = z.shape[0]
    encoder_lines = [f"conv_in -> {shape('encoder.conv_in')}"]
    encoder_lines += [f"level {i} -> {shape(f'encoder.level{i}')}" for i in range(len(vae.encoder.down_blocks))]
    encoder_lines += [f"middle -> {shape('encoder.mid')}", f"conv_out -> {shape('encoder.conv_out')}",
                      f"= mean, logvar ({L} + {L})"]
    decoder_lines = [f"conv_in -> {shape('decoder.conv_in')}"]
    decoder_lines += [f"level {i} -> {shape(f'decoder.level{i}')}" for i in range(len(vae.decoder.up_blocks))]
    decoder_lines += [f"conv_out -> {shape('decoder.conv_out')}"]

    fig = plt.figure(figsize=(12.0, 3.9))
    grid = fig.add_gridspec(2, 9, width_ratios=[1.3, 1.5, 0.8, 0.8, 0.8, 0.8, 0.12, 1.9, 1.3], hspace=0.35,
                            wspace=0.25)
    ax_in = fig.add_subplot(grid[:, 0])
    show(ax_in, image, title=f"image\n{shape_text(image.shape[1:])}")
    ax_enc = fig.add_subplot(grid[:, 1])
    ax_enc.set_axis_off()
    ax_enc.text(0.5, 0.5, "encoder\n\n" + "\n".join(encoder_lines), ha="center", va="center", fontsize=7.5,
                family="monospace", transform=ax_enc.transAxes,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="#dbe8f6", edgecolor="#555555"))
    limit = z.abs().max().item()                                                 # one centred scale for all channels
    for c in range(L):
        ax = fig.add_subplot(grid[c // 2, 2 + 2 * (c % 2): 4 + 2 * (c % 2)])
        im = ax.imshow(z[c].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"channel {c}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_subplot(grid[:, 6])
    fig.colorbar(im, cax=cax, label="latent value")
    ax_dec = fig.add_subplot(grid[:, 7])
    ax_dec.set_axis_off()
    ax_dec.text(0.5, 0.5, "decoder\n\n" + "\n".join(decoder_lines), ha="center", va="center", fontsize=7.5,
                family="monospace", transform=ax_dec.transAxes,
                bbox=dict(boxstyle="round,pad=0.4", facecolor="#e3f1dc", edgecolor="#555555"))
    ax_out = fig.add_subplot(grid[:, 8])
    show(ax_out, recon, title=f"reconstruction\n{shape_text(recon.shape[1:])}")
    fig.suptitle(f"The shipped vae-shapes autoencoder (f = {vae.config.factor}): latent z = mean of q(z|x), "
                 f"{shape_text(z.shape)}; diffusion sees z × {vae.config.scaling_factor:.3f}", fontsize=10)
    return fig


def reconstructions(ctx: Context):
    """Eight held-out scenes over their reconstructions by the shipped autoencoder, PSNR under each."""
    from minidiff.recipes.latent import heldout_scenes
    from minidiff.training.autoencoder import psnr

    vae = shipped_autoencoder()
    images = heldout_scenes(8, vae.config.sample_size)[0]                         # (8, 3, 32, 32)
    with torch.no_grad():
        recon = vae(images, sample_posterior=False)[0].clamp(-1, 1)
    values = psnr(images, recon)                                                 # (8,) dB
    fig, axes = plt.subplots(2, len(images), figsize=(1.35 * len(images), 3.4))
    for k in range(len(images)):
        show(axes[0, k], images[k:k + 1])
        show(axes[1, k], recon[k:k + 1])
        axes[1, k].set_title(f"{values[k].item():.1f} dB", fontsize=8, y=-0.22)
    for ax, label in ((axes[0, 0], "original"), (axes[1, 0], "reconstruction")):
        ax.text(-0.08, 0.5, label, rotation=90, ha="right", va="center", fontsize=9, transform=ax.transAxes)
    fig.suptitle(f"vae-shapes (shipped): held-out test scenes and their reconstructions, "
                 f"mean PSNR {values.mean().item():.1f} dB", fontsize=10)
    fig.tight_layout()
    return fig


def samples_ldm(ctx: Context):
    return samples_grid(ctx, "ldm-shapes", title="ldm-shapes (latent diffusion)")


def samples_pixel(ctx: Context):
    return samples_grid(ctx, "ddpm-shapes", title="ddpm-shapes (pixel diffusion)")


# ---------------------------------------------------------------------------- Chapter 3: text conditioning


def sd_shapes_from_parts(out: Path):
    """An sd-shapes TextToImage built as the recipe builds it, with the shipped autoencoder and CLIP (the U-Net
    untrained: for shapes only), and its sections."""
    from minidiff.recipes.base import kind_of, load_sections, make_run_config
    from minidiff.recipes.latent import autoencoder_tensors
    from minidiff.recipes.text import build_text_model, clip_text_tensors

    run_config = make_run_config("sd-shapes")
    with redirect_stdout(io.StringIO()):                     # "using the shipped ... part" is for `minidiff train`
        run_config = kind_of(run_config).prepare(run_config, out, progress=False, retrain_parts=False, resume=False)
    sections = load_sections(run_config)
    torch.manual_seed(SEED)
    model = build_text_model(sections, out, autoencoder_tensors(run_config), clip_text_tensors(run_config))
    return model.eval(), sections


def pipeline(ctx: Context):
    """Stable Diffusion's pipeline on Shapes, every tensor's shape traced through one guided sampling step."""
    from minidiff.blocks.attention import Attention

    with tempfile.TemporaryDirectory() as folder:
        model, sections = sd_shapes_from_parts(Path(folder))
    s, g = sections["sample"], sections["guidance"]
    cross = {name: m for name, m in model.denoiser.named_modules()
             if isinstance(m, Attention) and name.endswith("attn2")}
    modules = {"text_encoder": model.text_encoder, "denoiser": model.denoiser, "decoder": model.autoencoder.decoder,
               **cross}
    ids = model.tokenizer([PROMPT], context_length=model.context_length)          # (1, L)
    seen = trace_shapes(modules, lambda: model.generate([PROMPT], sections["diffusion"].build(),
                                                        guidance_scale=g.guidance_scale, sampler=s.sampler,
                                                        steps=1, seed=SEED))
    context = seen["text_encoder"][0][1]                                          # (1, L, D)
    unet_in, unet_out = seen["denoiser"][0]                                       # ([z_t, t, context], prediction)
    queries = sorted({m[0][0] for name in cross for m in seen[name][:1]}, key=lambda q: -q[1])  # (2B, h*w, C)
    queries = " and ".join(f"{shape_text(q)} at {round(q[1] ** 0.5)}×{round(q[1] ** 0.5)}" for q in queries)
    latent = unet_out[1:]
    image = seen["decoder"][0][1]
    words = len(model.tokenizer.encode(PROMPT))

    fig, ax = diagram_axes(12.0, 3.9, (0, 12), (0.9, 4.8))
    prompt = box(ax, 1.2, 4.2, f"prompt\n\"{PROMPT}\"", color="#f3f3f3", fontsize=7.5)
    tokenizer = box(ax, 4.0, 4.2, f"BPE tokenizer\nids {shape_text(ids.shape)}\n({words} tokens + BOS, EOS,\n"
                    f"padded with EOS)")
    encoder = box(ax, 7.0, 4.2, f"CLIP text encoder\n(frozen, shipped clip-shapes)\n-> token embeddings\n"
                  f"context {shape_text(context)}")
    null = box(ax, 10.4, 4.2, f"empty prompt \"\" -> same\nnull context {shape_text(context)}", color="#f3f3f3")
    noise = box(ax, 0.75, 1.9, f"noise z_T\n{shape_text(latent)}\n(seed)", color="#f3f3f3")
    loop = box(ax, 4.75, 1.9,
               f"sampler loop: {s.sample_steps} {s.sampler.upper()} steps, z_t -> z_(t-1)\n"
               f"U-Net(z_t, t, context and null context), one batch:\n"
               f"  in {shape_text(unet_in[0])}, out {shape_text(unet_out)}\n"
               f"  cross-attention: queries from the pixels,\n"
               f"    {queries}\n"
               f"    keys and values from context {shape_text(unet_in[-1])}\n"
               f"guidance: eps = eps_null + w (eps_text - eps_null), w = {g.guidance_scale:g}",
               color="#e3f1dc", fontsize=7.5)
    decoder = box(ax, 9.15, 1.9, f"VAE decoder\n(shipped vae-shapes)\nz_0 / scale {shape_text(latent)}",
                  color="#dbe8f6")
    picture = box(ax, 11.25, 1.9, f"image\n{shape_text(image[1:])}\nin [-1, 1]", color="#f3f3f3")
    arrow(ax, prompt, tokenizer)
    arrow(ax, tokenizer, encoder)
    arrow(ax, encoder, loop, "context")
    arrow(ax, null, loop, "null context")
    arrow(ax, noise, loop)
    arrow(ax, loop, decoder)
    arrow(ax, decoder, picture)
    ax.set_title("sd-shapes: Stable Diffusion's pipeline, shapes traced from the recipe's models (one prompt; "
                 "guidance runs the U-Net on two)", fontsize=10)
    return fig


def sd_shapes_run(ctx: Context):
    return trained_run(ctx, "sd-shapes")


def guidance(ctx: Context):
    """One prompt, four seeds, the same noise at each guidance scale; ShapesEval's verdict under each image."""
    from minidiff.eval.shapeseval import score

    model, sections = sd_shapes_run(ctx)
    s, g = sections["sample"], sections["guidance"]
    seeds = (0, 1, 2, 3)
    config = model.denoiser.config
    noise = torch.cat([torch.randn((1, config.in_channels, config.sample_size, config.sample_size),
                                   generator=torch.Generator().manual_seed(seed)) for seed in seeds])  # (4, 4, 8, 8)
    fig, axes = plt.subplots(len(seeds), len(GUIDANCE_SCALES), figsize=(1.9 * len(GUIDANCE_SCALES), 2.1 * len(seeds)))
    for col, w in enumerate(GUIDANCE_SCALES):
        with torch.no_grad():                 # as generate(..., seed=seed, guidance_scale=w) for each seed, batched
            images = model.generate([PROMPT] * len(seeds), sections["diffusion"].build(), guidance_scale=w,
                                    negative_prompt=g.negative_prompt, guidance_rescale=g.guidance_rescale,
                                    sampler=s.sampler, steps=s.sample_steps, eta=s.eta, clip_x0=s.clip_x0,
                                    variance=s.variance, latents=noise)             # (4, 3, 32, 32)
        verdicts = score(images, [PROMPT] * len(seeds))["per_prompt"]
        for row, seed in enumerate(seeds):
            passed = verdicts[row]["passed"]
            show(axes[row, col], images[row:row + 1])
            axes[row, col].set_title(("w = " + f"{w:g}" + ("  (recipe)" if w == sections["guidance"].guidance_scale
                                                           else "") + "\n" if row == 0 else "")
                                     + f"seed {seed}: {'pass' if passed else 'fail'}", fontsize=8)
    fig.suptitle(f"sd-shapes, \"{PROMPT}\": classifier-free guidance scale w\n"
                 f"({s.sampler}, {s.sample_steps} steps; one seed per row: the same noise in every column; "
                 f"pass/fail: ShapesEval)", fontsize=9)
    fig.tight_layout()
    return fig


def samples_text(ctx: Context):
    """Four images for each of the recipe's grid prompts, with the recipe's guidance, under the prompt."""
    from minidiff.recipes.text import GRID_PROMPTS, generate

    model, sections = sd_shapes_run(ctx)
    images = generate(model, sections, [p for p in GRID_PROMPTS for _ in range(4)], seed=SEED)   # (32, 3, 32, 32)
    fig, axes = plt.subplots(2, len(GRID_PROMPTS) // 2, figsize=(10.0, 6.0))
    for k, (ax, prompt) in enumerate(zip(axes.flat, GRID_PROMPTS)):
        show(ax, images[4 * k:4 * k + 4], nrow=2, title="\n".join(textwrap.wrap(prompt, 22)), fontsize=9)
    s, g = sections["sample"], sections["guidance"]
    fig.suptitle(f"sd-shapes: four samples per prompt ({s.sampler}, {s.sample_steps} steps, guidance "
                 f"w = {g.guidance_scale:g}, seed {SEED})\n{run_metrics(ctx, 'sd-shapes')}", fontsize=10)
    fig.tight_layout()
    return fig


def attention(ctx: Context):
    """Cross-attention maps of the 8×8 layer of the first up block, one panel per token, one shared scale."""
    from minidiff.pipelines.text_to_image import cross_attention_maps
    from minidiff.recipes.text import generate

    model, sections = sd_shapes_run(ctx)
    image = generate(model, sections, [PROMPT], seed=1)                            # (1, 3, 32, 32)
    context = model.encode_prompts([PROMPT])                                       # (1, L, D)
    ids = model.tokenizer([PROMPT], context_length=model.context_length)[0].tolist()
    tokens = [model.tokenizer.id_to_token[i].replace("</w>", "") for i in ids]
    shown = len(model.tokenizer.encode(PROMPT)) + 2                               # BOS, the words, the first EOS
    with torch.no_grad():
        z0 = model.encode(image)                                                   # (1, 4, 8, 8) scaled
        t = torch.tensor([500])
        z_t = sections["diffusion"].build().q_sample(z0, t, torch.randn(z0.shape,
                                                                         generator=torch.Generator().manual_seed(SEED)))
    maps = cross_attention_maps(model.denoiser, z_t, t, context)
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    layer = maps[name][0, :shown]                                                   # (shown, 8, 8)
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0.0, vmax=layer.max().item())   # one scale for every token
    fig, axes = plt.subplots(1, shown + 1, figsize=(1.35 * (shown + 1) + 0.8, 2.2))
    show(axes[0], image, title="the sample", fontsize=8)
    for j, ax in enumerate(axes[1:]):
        im = ax.imshow(layer[j].numpy(), cmap="magma", norm=norm, interpolation="nearest")
        ax.set_title(tokens[j].replace("<|startoftext|>", "BOS").replace("<|endoftext|>", "EOS"), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01, label="attention weight")
    fig.suptitle(f"sd-shapes cross-attention, {name} (8×8), t = {t.item()}, heads averaged;\n"
                 f"one colour scale for all tokens (square-root spaced, so small weights stay visible); "
                 f"each position's weights sum to 1 over all {model.context_length} tokens",
                 fontsize=9)
    return fig


# ---------------------------------------------------------------------------- the list, and writing


@dataclass
class Figure:
    chapter: str               # the chapter folder, e.g. "01-ddpm"
    name: str                  # file name in its figures/ folder
    draw: Callable[[Context], object]
    recipe: str | None = None  # the trained run it needs, if any


FIGURES = [
    Figure("00-shapes-world", "scenes.png", scenes),
    Figure("00-shapes-world", "shapeseval.png", shapeseval),
    Figure("01-ddpm", "schedules.png", schedules),
    Figure("01-ddpm", "forward.png", forward),
    Figure("01-ddpm", "unet.png", unet),
    Figure("01-ddpm", "samples.png", samples_digits, "ddpm-digits"),
    Figure("01-ddpm", "samples-2d.png", samples_2d, "ddpm-2d"),
    Figure("02-latent-diffusion", "autoencoder.png", autoencoder),
    Figure("02-latent-diffusion", "reconstructions.png", reconstructions),
    Figure("02-latent-diffusion", "samples.png", samples_ldm, "ldm-shapes"),
    Figure("02-latent-diffusion", "samples-pixel.png", samples_pixel, "ddpm-shapes"),
    Figure("03-text-conditioning", "pipeline.png", pipeline),
    Figure("03-text-conditioning", "guidance.png", guidance, "sd-shapes"),
    Figure("03-text-conditioning", "samples.png", samples_text, "sd-shapes"),
    Figure("03-text-conditioning", "attention.png", attention, "sd-shapes"),
]


def save(fig, path: Path) -> None:
    """Write fig as PNG atomically, without the matplotlib version in its metadata (reruns give the same bytes)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight",
                                               metadata={"Software": None}))
    plt.close(fig)


def make(figures: list[Figure], out: Path, ctx: Context) -> dict[str, str]:
    """Draw and write each figure; returns {path: 'written' or why it was skipped}."""
    results = {}
    for figure in figures:
        path = out / figure.chapter / "figures" / figure.name
        start = time.perf_counter()
        try:
            fig = figure.draw(ctx)
        except MissingRun as missing:
            why, command = missing.args
            results[str(path)] = f"skipped: {why}; train it with `{command}` (or pass --train-missing)"
            print(f"{path}: {results[str(path)]}", flush=True)
            continue
        save(fig, path)
        results[str(path)] = "written"
        print(f"{path}: written in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 1024:.0f} KB)",
              flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the figures of the Chapter 0-3 readings.")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder of trained runs, RUNS/RECIPE")
    parser.add_argument("--chapter", type=int, action="append", help="only this chapter (repeatable)")
    parser.add_argument("--out", type=Path, default=CHAPTERS, help="root of the chapter folders (default: chapters/)")
    parser.add_argument("--train-missing", action="store_true", help="train a missing run with `minidiff train`")
    parser.add_argument("--no-runs", action="store_true", help="only the figures that need no trained run")
    args = parser.parse_args(argv)
    known = sorted({int(f.chapter[:2]) for f in FIGURES})
    if args.chapter and set(args.chapter) - set(known):
        parser.error(f"no figures for chapter {sorted(set(args.chapter) - set(known))}; "
                     f"choose from {', '.join(map(str, known))}")
    torch.set_num_threads(1)                                   # small models: one thread is as fast, and fair
    figures = [f for f in FIGURES if (not args.chapter or int(f.chapter[:2]) in args.chapter)
               and not (args.no_runs and f.recipe)]
    start = time.perf_counter()
    try:
        results = make(figures, args.out, Context(args.runs, args.train_missing))
    except ValueError as e:                        # minidiff's one-line errors (a corrupt run, a failed training)
        print(f"make_figures: error: {e}", file=sys.stderr)
        return 2
    written = sum(r == "written" for r in results.values())
    print(f"{written} of {len(figures)} figures written in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
