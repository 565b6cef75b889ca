"""Checkpoints: tensors in one safetensors file, everything else as JSON in its metadata.

Writes are atomic (a temporary file in the same folder, then os.replace), so an interrupted save
never destroys the last good checkpoint. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing or unreadable; the message says what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors (any dtype, contiguous copies on the CPU) and a JSON-able dict, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={"minidiff": json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) from a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first with `minidiff train RECIPE --out {path.parent}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["minidiff"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or foreign files raise several different error types
        raise CheckpointError(f"checkpoint {path} is corrupt or not a minidiff checkpoint ({type(e).__name__}); "
                              f"retrain, or restore it from a backup") from None
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
