"""The training loop: one visible `for step in ...`, nothing hidden in callbacks.

Each step: draw a batch and the noise from a generator seeded by (seed, step), compute the diffusion
loss, clip gradients, take an AdamW step at the scheduled learning rate, update the EMA weights.
Seeding by step is what makes resuming exact: a resumed run draws the same batches and noise as an
uninterrupted one, so with the model, EMA and optimizer restored the loss trajectory is identical (CPU).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minidiff.process import GaussianDiffusion
from minidiff.training.checkpoint import (CHECKPOINT, load_checkpoint, load_optimizer_tensors, optimizer_tensors,
                                          prefixed, save_checkpoint, unprefixed)

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    steps: int = 3000              # optimizer steps
    batch_size: int = 128
    lr: float = 2e-3               # peak learning rate
    lr_schedule: str = "cosine"    # after warmup: 'constant', or 'cosine' decay to 0
    warmup_steps: int = 100        # linear warmup from 0
    weight_decay: float = 0.0      # AdamW's decoupled weight decay
    fused: bool = False            # AdamW as one fused kernel: same update, other rounding, faster on a CPU
    grad_clip: float = 1.0         # max global gradient norm
    ema_decay: float = 0.999       # EMA of the weights, used for sampling
    seed: int = 0
    log_every: int = 10            # steps between lines in log.jsonl
    sample_every: int = 1000       # steps between sample grids in samples/ (0: never; the last is samples.png)
    checkpoint_every: int = 500    # steps between checkpoints (and always at the end)
    bf16: bool = True              # bf16 autocast on a GPU (ignored on the CPU, which trains in float32)
    device: str = "auto"           # 'auto', 'cpu', 'cuda', 'cuda:1', ...


class TrainingError(ValueError):
    """Training cannot go on; the message says what was kept and what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={name} was asked for but no CUDA GPU is available; use device=cpu")
    return torch.device(name)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup to `lr`, then constant or cosine decay to 0 at the last step."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise TrainingError(f"unknown lr_schedule {config.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter at once (one foreach kernel)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """Warm the EMA up: early on the average would mostly remember the random initialisation."""
    return min(config.ema_decay, (1 + step) / (10 + step))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def prepare_log(log_path: Path, resume_step: int | None) -> None:
    """A fresh log, or on resume the log without the lines written after the checkpoint (they will be recomputed)."""
    if resume_step is not None and log_path.exists():
        lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] < resume_step]
        log_path.write_text("".join(ln + "\n" for ln in lines))
    elif resume_step is None and log_path.exists():
        log_path.unlink()


def progress_bar(start: int, config: TrainConfig, progress: bool, desc: str):
    """The steps start..config.steps under a tqdm bar (disabled when not progress). One redraw a second at most: in
    a notebook every redraw is a message that waits until the cell ends, and nbval fails a cell whose queue overflowed."""
    return tqdm(range(start, config.steps), initial=start, total=config.steps, unit="step", disable=not progress,
                desc=desc, dynamic_ncols=True, mininterval=1.0)


def end_step(step: int, record: dict, config: TrainConfig, log, bar, t0: float, checkpoint: Callable[[int], None],
             on_sample: Callable | None, ema: torch.nn.Module) -> bool:
    """The bookkeeping that closes every step: a log line every log_every steps, a checkpoint every
    checkpoint_every steps and at the end, a sample grid every sample_every steps except at the end (every recipe
    draws its final grid, samples.png, right after training). True if it saved a checkpoint."""
    if step % config.log_every == 0:
        log.write(json.dumps({"step": step, **record, "lr": learning_rate(config, step),
                              "time_s": round(time.perf_counter() - t0, 3)}) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
    done = step + 1
    saved = done % config.checkpoint_every == 0 or done == config.steps
    if saved:
        checkpoint(done)
    if on_sample and config.sample_every and done % config.sample_every == 0 and done != config.steps:
        ema.eval()
        on_sample(ema, done)
    return saved


def train(model: torch.nn.Module, diffusion: GaussianDiffusion, data: torch.Tensor | tuple[torch.Tensor, ...],
          config: TrainConfig, run_dir: str | Path, run_config: dict, resume: bool = False,
          on_sample: Callable[[torch.nn.Module, int], None] | None = None, progress: bool = True):
    """Train `model` on `data` (N, ...) with the diffusion loss; checkpoints and logs go to run_dir.

    `diffusion` is anything with a `loss(model, batch, generator)` method: the GaussianDiffusion of Chapters 1-2,
    or (Chapter 3) a text-conditional objective or CLIP's contrastive one. `data` is one tensor, or a tuple of
    tensors with the same first dimension N (images and their captions' tokens) whose rows are drawn together.

    run_config: the whole run's config, stored in every checkpoint. on_sample(ema_model, step) is
    called every `sample_every` steps but the last. Returns (model, ema_model, losses) where losses are this
    call's (step, loss) pairs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=config.fused)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)

    start, log_path = 0, run_dir / "log.jsonl"
    if resume:
        tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(unprefixed(tensors, "model"))
        ema.load_state_dict(unprefixed(tensors, "ema"))
        load_optimizer_tensors(optimizer, unprefixed(tensors, "optimizer"))
        start = meta["step"]
    prepare_log(log_path, start if resume else None)

    def checkpoint(step: int) -> None:
        tensors = {**prefixed(model.state_dict(), "model"), **prefixed(ema.state_dict(), "ema"),
                   **prefixed(optimizer_tensors(optimizer), "optimizer")}
        save_checkpoint(run_dir / CHECKPOINT, tensors, {"step": step, "config": run_config})

    data = tuple(d.to(device) for d in data) if isinstance(data, tuple) else data.to(device)
    num_examples = (data[0] if isinstance(data, tuple) else data).shape[0]
    losses, last_saved = [], start
    bar = progress_bar(start, config, progress, "train")
    t0 = time.perf_counter()
    model.train()
    with open(log_path, "a") as log:
        for step in bar:
            generator = torch.Generator().manual_seed(_step_seed(config.seed, step))
            torch.manual_seed(_step_seed(config.seed, step))             # dropout draws from the global RNG
            index = torch.randint(0, num_examples, (config.batch_size,), generator=generator).to(device)
            x0 = tuple(d[index] for d in data) if isinstance(data, tuple) else data[index]   # (B, ...)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)

            with autocast:
                loss = diffusion.loss(model, x0, generator)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {step}; the last good checkpoint "
                                    f"(step {last_saved}) is kept in {run_dir}; lower the learning rate "
                                    f"(lr={config.lr / 4:g}) and continue with --resume")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(config, step))

            value = loss.item()
            losses.append((step, value))
            if end_step(step, {"loss": value}, config, log, bar, t0, checkpoint, on_sample, ema):
                last_saved = step + 1
    model.eval()
    ema.eval()
    return model, ema, losses
