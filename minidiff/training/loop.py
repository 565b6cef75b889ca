"""The training loop: one visible `for step in ...`, nothing hidden in callbacks, for every kind of run.

Each step: draw a batch and the noise from a generator seeded by (seed, step), compute the objective's loss,
clip gradients, take an AdamW step at the scheduled learning rate, update the EMA weights. Seeding by step is what
makes resuming exact: a resumed run draws the same batches and noise as an uninterrupted one, so with the model,
EMA and optimizer restored the loss trajectory is identical (CPU, at the same thread count).

The objective is anything with `loss(model, batch, generator) -> loss`: Chapter 1's GaussianDiffusion, Chapter 3's
text-conditional diffusion or CLIP's contrastive loss. An objective may also have
    betas          AdamW's (beta1, beta2) for its training (default: PyTorch's (0.9, 0.999));
    networks       {name: module}: networks it owns, saved in every checkpoint as `name.*` and restored on resume;
    discriminator  a second player, trained by its own optimizer right after the model's step (Chapter 2's
                   autoencoder). Such an objective has adversarial_at(step) (does the discriminator play at
                   this step?), loss(model, batch, generator, adversarial) -> (loss, fake, terms to log),
                   discriminator_loss(real, fake), and discriminator_lr (0: the model's lr).

Under torchrun (minidiff.training.distributed) each of N processes holds the model wrapped in
DistributedDataParallel and draws the same global batch from the same generator; the objective's
loss(model, batch, generator, shard=slice) then draws the timesteps and noise for the whole batch, as one process
would, and computes the loss on this process's B/N examples; DDP averages the gradients, so the run follows the
one-process run for the same batch_size within float rounding. Only rank 0 writes the log, checkpoints and grids.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minidiff.io import atomic_write_text, load_state_strict, remove_stale_temporaries
from minidiff.training import distributed
from minidiff.training.checkpoint import (CHECKPOINT, load_checkpoint, load_optimizer_tensors, optimizer_tensors,
                                          prefixed, save_checkpoint, unprefixed)

LR_SCHEDULES = ("constant", "cosine")
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
EXPLODING = 100.0      # a loss this many times the run's median is exploding: a checkpoint after it is not "good"
RESUME_FIX = "resume with the recipe and overrides the run was started with"


@dataclass
class TrainConfig:
    steps: int = 3000              # optimizer steps
    batch_size: int = 128          # the global batch: split across processes under torchrun
    lr: float = 2e-3               # peak learning rate
    lr_schedule: str = "cosine"    # after warmup: 'constant', or 'cosine' decay to 0
    warmup_steps: int = 100        # linear warmup from 0
    weight_decay: float = 0.0      # AdamW's decoupled weight decay
    fused: bool = False            # AdamW as one fused kernel: same update, other rounding, faster on a CPU
    grad_clip: float = 1.0         # max global gradient norm (0: no clipping)
    ema_decay: float = 0.999       # EMA of the weights, used for sampling
    seed: int = 0
    log_every: int = 10            # steps between lines in log.jsonl
    sample_every: int = 1000       # steps between sample grids in samples/ (0: never; the last is samples.png)
    checkpoint_every: int = 500    # steps between checkpoints (and always at the end)
    bf16: bool = True              # bf16 autocast on a GPU (ignored on the CPU, which trains in float32)
    device: str = "auto"           # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    shard: bool = False            # under torchrun: FSDP, each process keeps 1/N of the weights and AdamW moments

    def validate(self) -> None:
        """One-line errors for values the loop cannot train with, each naming the allowed range."""
        checks = [("steps", self.steps >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number above 0, e.g. 1e-3"),
                  ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
                  ("weight_decay", self.weight_decay >= 0, "0 or more"),
                  ("grad_clip", self.grad_clip >= 0, "0 (no clipping) or more"),
                  ("ema_decay", 0 <= self.ema_decay <= 1, "in [0, 1], e.g. 0.999"),
                  ("log_every", self.log_every >= 1, "at least 1"),
                  ("checkpoint_every", self.checkpoint_every >= 1, "at least 1"),
                  ("sample_every", self.sample_every >= 0, "0 (never) or more")]
        for key, ok, allowed in checks:
            if not ok:
                raise TrainingError(f"{key}={getattr(self, key)} is out of range; use a value {allowed}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        name, _, index = self.device.partition(":")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or (name == "cuda" and index.isdigit())):
            raise TrainingError(f"unknown device {self.device!r}; choose {DEVICES}")


class TrainingError(ValueError):
    """Training cannot go on; the message says what was kept and what to change."""


def resolve_device(name: str) -> torch.device:
    """The device for TrainConfig.device; under torchrun, 'auto' and 'cuda' mean this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={name} was asked for but no CUDA GPU is available; use device=cpu")
    if name == "cuda" and distributed.world_size() > 1:
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def data_parallel(model: torch.nn.Module, ema: torch.nn.Module, objective, config: TrainConfig,
                  device: torch.device):
    """(the network the objective calls, the keyword arguments of its loss): the model itself and {} in one
    process; under torchrun, the model in DistributedDataParallel, or with config.shard the model and its EMA
    sharded in place (FSDP), and {"shard": this process's examples}."""
    if distributed.world_size() == 1:
        return model, {}
    name = type(objective).__name__
    if getattr(objective, "discriminator", None) is not None:
        raise distributed.DistributedError(f"{name} trains a discriminator beside the model, which the "
                                           f"multi-process loop does not; train this run with one process")
    if "shard" not in inspect.signature(objective.loss).parameters:
        raise distributed.DistributedError(f"{name}'s loss needs every example of the batch (it cannot take "
                                           f"shard=); train this run with one process")
    shard = distributed.shard(config.batch_size)
    if config.shard:
        distributed.shard_model(model)
        distributed.shard_model(ema)       # the same layout: the EMA update stays one elementwise kernel per shard
        return model, {"shard": shard}
    ids = [device.index] if device.type == "cuda" else None
    return distributed.DataParallel(model, device_ids=ids), {"shard": shard}


# Reading and writing a module's full weights: directly, or for a sharded (FSDP) module by gathering its shards
# (every process must call these then) and by giving each process its shard of a full state.

def full_state(module: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The module's state dict with full tensors (for a sharded module: on rank 0 only, {} elsewhere)."""
    return distributed.gathered_state(module) if sharded else module.state_dict()


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 template: torch.nn.Module | None = None) -> None:
    """Load a full state strictly (minidiff.io.load_state_strict); a sharded module is checked against its
    unsharded template (on the meta device: keys, shapes and values only), then keeps its shard."""
    load_state_strict(module if template is None else template, state, source, RESUME_FIX)
    if template is not None:
        distributed.scatter_state(module, state)


def unsharded(module: torch.nn.Module, template: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of a sharded module, with its full weights, in every process."""
    plain = copy.deepcopy(template)
    plain.load_state_dict(distributed.gathered_state(module, everywhere=True), assign=True)
    return plain


def optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, sharded: bool) -> dict:
    """The optimizer's state as named tensors `{parameter index}.{name}` (gathered on rank 0 when sharded)."""
    if not sharded:
        return optimizer_tensors(optimizer)
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    state = distributed.gathered_optimizer_state(model, optimizer)
    return {f"{index[name]}.{key}": value for name, values in state.items() for key, value in values.items()}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, tensors: dict,
                         sharded: bool) -> None:
    if not sharded:
        load_optimizer_tensors(optimizer, tensors)
        return
    names, state = [name for name, _ in model.named_parameters()], {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(names[int(index)], {})[name] = value
    distributed.scatter_optimizer_state(model, optimizer, state)


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


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s generator: its batch, noise and timesteps depend on (seed, step) only."""
    return (seed * 1_000_003 + step) % (2**63)


def prepare_log(log_path: Path, resume_step: int | None) -> list[dict]:
    """A fresh log, or on resume the log without the lines written after the checkpoint (they will be recomputed).

    Returns the records kept. A line that is not JSON (the last line torn by a crash) is dropped with one warning."""
    if resume_step is None:
        log_path.unlink(missing_ok=True)
        return []
    if not log_path.exists():
        return []
    records, torn = [], 0
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] < resume_step:
            records.append(record)
    if torn:
        print(f"minidiff: warning: skipped {torn} unreadable line(s) of {log_path} (a write cut short by a crash)",
              file=sys.stderr)
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def progress_bar(start: int, config: TrainConfig, progress: bool, desc: str):
    """The steps start..config.steps under a tqdm bar (disabled when not progress). One redraw a second at most: in
    a notebook every redraw is a message that waits until the cell ends, and nbval fails a cell whose queue
    overflowed."""
    return tqdm(range(start, config.steps), initial=start, total=config.steps, unit="step", disable=not progress,
                desc=desc, dynamic_ncols=True, mininterval=1.0)


def end_step(step: int, record: dict, config: TrainConfig, log, bar, t0: float, checkpoint: Callable[[int], None],
             on_sample: Callable | None, ema: torch.nn.Module) -> bool:
    """The bookkeeping that closes every step: a log line every log_every steps, a checkpoint every
    checkpoint_every steps and at the end, a sample grid every sample_every steps except at the end (every recipe
    draws its final grid, samples.png, right after training). True if it saved a checkpoint.

    Under torchrun only rank 0 writes: the other processes pass log=None and on_sample=None and their checkpoint()
    writes nothing."""
    if step % config.log_every == 0 and log is not None:
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


def non_finite_message(value: float, step: int, checkpoint_step: int | None, losses: list[tuple[int, float]],
                       config: TrainConfig, run_dir: Path, run_config: dict) -> str:
    """What to say when the loss became NaN or infinite: which checkpoint is kept, whether it is worth keeping, and
    the command that works (a fresh run with a lower learning rate; --resume keeps the run's lr).

    losses: the run's (step, loss) so far. A checkpoint is called good only if the losses before it were finite
    and, since the checkpoint before it, below EXPLODING times the run's median."""
    fresh = (f"start a fresh run with a lower learning rate: `minidiff train {run_config.get('recipe', 'RECIPE')} "
             f"--out NEW_FOLDER lr={config.lr / 4:g}` (and your other overrides)")
    if checkpoint_step is None:
        return f"loss became {value} at step {step}, before any checkpoint was saved; {fresh}"
    before = [loss for s, loss in losses if s < checkpoint_step]
    recent = [loss for s, loss in losses if checkpoint_step - config.checkpoint_every <= s < checkpoint_step]
    finite = all(math.isfinite(loss) for loss in before)
    limit = EXPLODING * statistics.median(before) if before and finite else math.inf
    if finite and all(loss < limit for loss in recent):
        return (f"loss became {value} at step {step}; the last good checkpoint (step {checkpoint_step}) is kept "
                f"in {run_dir}; {fresh}")
    worst = max(recent or before, key=lambda loss: loss if math.isfinite(loss) else math.inf)
    return (f"loss became {value} at step {step}; the checkpoint of step {checkpoint_step} in {run_dir} was saved "
            f"while the loss was already exploding (up to {worst:.3g}), so do not build on it; {fresh}")


def train(model: torch.nn.Module, objective, data: torch.Tensor | tuple[torch.Tensor, ...], config: TrainConfig,
          run_dir: str | Path, run_config: dict, resume: bool = False,
          on_sample: Callable[[torch.nn.Module, int], None] | None = None, progress: bool = True):
    """Train `model` on `data` (N, ...) with `objective` (see the module's docstring); checkpoints and logs go to
    run_dir (rank 0's job under torchrun; every process trains and returns the same model).

    `data` is one tensor, or a tuple of tensors with the same first dimension N (images and their captions' tokens)
    whose rows are drawn together. run_config: the whole run's config, stored in every checkpoint.
    on_sample(ema_model, step) is called every `sample_every` steps but the last. Returns (model, ema_model, logs)
    where logs are this call's records, one dict per step: {"step", "loss", and the objective's other terms}.
    """
    config.validate()
    run_dir, main = Path(run_dir), distributed.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)              # left by a run killed while it saved
    device = resolve_device(config.device)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    fsdp = config.shard and distributed.world_size() > 1
    template = copy.deepcopy(ema).to("meta") if fsdp else None       # the unsharded layout, without memory
    network, sharded = data_parallel(model, ema, objective, config, device)
    betas = getattr(objective, "betas", (0.9, 0.999))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                                  fused=config.fused)
    if hasattr(objective, "to"):
        objective.to(device)
    networks = getattr(objective, "networks", {})     # saved and restored with the model
    discriminator = getattr(objective, "discriminator", None)
    d_optimizer = None
    if discriminator is not None:                     # AdamW's default weight decay (0.01), as it has always been
        d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=objective.discriminator_lr or config.lr,
                                        betas=betas)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)

    start, checkpoint_path, log_path = 0, run_dir / CHECKPOINT, run_dir / "log.jsonl"
    if resume:
        tensors, meta = load_checkpoint(checkpoint_path)
        for name, module in {"model": model, "ema": ema}.items():
            load_weights(module, unprefixed(tensors, name), f"{checkpoint_path} ({name}.*)", template)
        for name, module in networks.items():
            load_weights(module, unprefixed(tensors, name), f"{checkpoint_path} ({name}.*)")
        load_optimizer_state(optimizer, model, unprefixed(tensors, "optimizer"), fsdp)
        if d_optimizer is not None:
            load_optimizer_tensors(d_optimizer, unprefixed(tensors, "d_optimizer"))
        start = meta["step"]
    earlier = prepare_log(log_path, start if resume else None) if main else []

    def checkpoint(step: int) -> None:
        if not (main or fsdp):                         # under FSDP every process sends its shards to rank 0
            return
        tensors = {**prefixed(full_state(model, fsdp), "model"), **prefixed(full_state(ema, fsdp), "ema"),
                   **prefixed(optimizer_state(optimizer, model, fsdp), "optimizer")}
        if d_optimizer is not None:
            tensors.update(prefixed(optimizer_tensors(d_optimizer), "d_optimizer"))
        for name, module in networks.items():
            tensors.update(prefixed(module.state_dict(), name))
        if main:
            save_checkpoint(checkpoint_path, tensors, {"step": step, "config": run_config})

    sample = on_sample if main else None
    if fsdp and on_sample is not None:
        def sample(sharded_ema: torch.nn.Module, step: int) -> None:   # every process gathers, rank 0 draws
            plain = unsharded(sharded_ema, template)
            if main:
                on_sample(plain.eval(), step)

    data = tuple(d.to(device) for d in data) if isinstance(data, tuple) else data.to(device)
    num_examples = (data[0] if isinstance(data, tuple) else data).shape[0]
    losses = [(r["step"], r["loss"]) for r in earlier if isinstance(r.get("loss"), (int, float))]
    logs, last_saved = [], start if resume else None
    bar = progress_bar(start, config, progress and main, "train")
    t0 = time.perf_counter()
    model.train()
    with open(log_path, "a") if main else contextlib.nullcontext() as log:
        for step in bar:
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            torch.manual_seed(step_seed(config.seed, step))             # dropout draws from the global RNG
            index = torch.randint(0, num_examples, (config.batch_size,), generator=generator).to(device)
            batch = tuple(d[index] for d in data) if isinstance(data, tuple) else data[index]   # (B, ...) global
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # 1. the model: the objective's loss, one AdamW step, the EMA
            game = hasattr(objective, "adversarial_at")      # the autoencoder's: terms to log, maybe a judge
            adversarial = discriminator is not None and objective.adversarial_at(step)
            with autocast:
                if not game:
                    loss, terms = objective.loss(network, batch, generator, **sharded), {}
                else:
                    if discriminator is not None:
                        discriminator.eval().requires_grad_(False)   # a fixed judge while the model learns
                    loss, fake, terms = objective.loss(network, batch, generator, adversarial)
            value = distributed.all_reduce_mean(loss.detach()).item()    # every process stops together
            if not math.isfinite(value):
                raise TrainingError(non_finite_message(value, step, last_saved, losses, config, run_dir, run_config))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(config, step))

            # 2. the discriminator, if the objective has one, on the same real batch and the model's fakes
            if adversarial:
                discriminator.train().requires_grad_(True)
                for group in d_optimizer.param_groups:
                    group["lr"] = (objective.discriminator_lr or config.lr) * lr / config.lr
                with autocast:
                    d_loss = objective.discriminator_loss(batch, fake.detach())
                d_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                d_optimizer.step()
                terms["d_loss"] = d_loss.item()

            record = {"loss": value, **terms}
            losses.append((step, value))
            logs.append({"step": step, **record})
            if end_step(step, record, config, log, bar, t0, checkpoint, sample, ema):
                last_saved = step + 1
    if fsdp:
        model, ema = unsharded(model, template), unsharded(ema, template)
    model.eval()
    ema.eval()
    return model, ema, logs
