"""Checkpoints: tensors in one safetensors file, everything else as JSON in its metadata.

Writes go through minidiff.io.atomic_write (a temporary file beside the checkpoint, fsync, then os.replace), so an
interrupted or failed save (a full disk) never destroys the last checkpoint. Nothing is ever unpickled.

A training checkpoint holds each network's weights under a prefix: `model.*`, `ema.*`, `optimizer.*` (AdamW's
moments, flattened by optimizer_tensors), and for the autoencoder's adversarial training also `discriminator.*`,
`d_optimizer.*` and `perceptual.*`. Its metadata holds {"step": steps done, "config": the run's whole config}.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minidiff.io import atomic_write

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing or unreadable; the message says what to do."""


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors (any dtype, contiguous copies on the CPU) and a JSON-able dict, atomically.

    A failed write (a full disk, a read-only folder) raises minidiff.io.FileError, one line, and leaves the
    previous checkpoint as it was."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"minidiff": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) from a checkpoint written by save_checkpoint; meta["step"] is an int."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first with `minidiff train RECIPE --out {path.parent}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("minidiff")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or foreign files raise several different error types
        raise CheckpointError(f"checkpoint {path} is corrupt or not a minidiff checkpoint ({type(e).__name__}); "
                              f"retrain, or restore it from a backup") from None
    if text is None:
        raise CheckpointError(f"{path} is a safetensors file without minidiff's metadata, not a minidiff checkpoint; "
                              f"pass the folder of a `minidiff train` run")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} holds a damaged config (not valid JSON: {e}); "
                              f"retrain, or restore it from a backup") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or isinstance(meta["step"], bool):
        raise CheckpointError(f"checkpoint {path} does not record the step it was saved at; "
                              f"retrain, or restore it from a backup")
    return tensors, meta


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state ({index: {name: tensor}}) into named tensors."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.clone()  # never share memory with the source
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
