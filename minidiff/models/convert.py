"""What every converter between minidiff and a reference layout (diffusers, transformers) shares.

A converter lives beside its network (`unet_diffusers.py` beside `unet.py`, `clip_transformers.py` beside
`clip.py`) and holds four things: the translation of the reference's config.json into the minidiff config
(refusing, in one line, every option minidiff does not implement), the key map from the reference's weight names to
minidiff's, and the inverse of both (`to_diffusers` / `to_transformers`: a minidiff state dict and config -> the
reference's state dict and config dict), which the parity tests and speed benchmarks use to build the reference
network from a minidiff one. A `Converter` bundles them for one reference class; `minidiff.weights` keeps the
registry {class name in config.json -> Converter} and the folder reading around it.

A config.json is input from outside: it may hold a list where a number belongs, a string for a channel count, a
zero, or widths that would allocate tens of gigabytes. The readers below (`integer`, `integers`, `number`, `flag`,
`text`, `texts`) check each value's type and range as it is read, so a converter never passes such a value on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

MISSING = object()         # a `default` meaning "this key is required"
MAX_WIDTH = 1 << 20        # channels, widths, vocabulary sizes: far above any published model (SD: 1280, CLIP: 49,408)
MAX_REPEATS = 1000         # layers, blocks, levels, heads: far above any published model (SD: 2 per level, CLIP: 12-32)


class PretrainedError(ValueError):
    """A folder or config that cannot be loaded or converted; the message says why and what to do."""


# ---------------------------------------------------------------------------- typed readers of config.json values


def _value(config: dict, key: str, default):
    if key in config:
        return config[key]
    if default is MISSING:
        raise PretrainedError(f"config has no {key}; re-save the model with save_pretrained, which writes every key")
    return default


def _bad(key: str, value, expected: str) -> PretrainedError:
    return PretrainedError(f"config has {key}={value!r}; expected {expected}: fix the file or re-save the model")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)       # JSON true is not a channel count


def integer(config: dict, key: str, default=MISSING, minimum: int = 1, maximum: int = MAX_WIDTH) -> int:
    """config[key] as an int in [minimum, maximum] (default if the key is absent; None passes through)."""
    value = _value(config, key, default)
    if value is None and default is None:
        return None
    if not _is_int(value) or not minimum <= value <= maximum:
        raise _bad(key, value, f"an integer from {minimum} to {maximum}")
    return value


def integers(config: dict, key: str, default=MISSING, minimum: int = 1, maximum: int = MAX_WIDTH) -> tuple[int, ...]:
    """config[key] as a non-empty tuple of ints in [minimum, maximum], at most MAX_REPEATS long."""
    value = _value(config, key, default)
    if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_REPEATS
            or not all(_is_int(v) and minimum <= v <= maximum for v in value)):
        raise _bad(key, value, f"a list of integers from {minimum} to {maximum}")
    return tuple(value)


def integer_or_list(config: dict, key: str, default=MISSING, minimum: int = 1,
                    maximum: int = MAX_WIDTH) -> int | tuple[int, ...]:
    """diffusers' per-level settings: one int for every level, or a list of them."""
    value = _value(config, key, default)
    if value is None and default is None:
        return None
    read = integers if isinstance(value, (list, tuple)) else integer
    return read({key: value}, key, MISSING, minimum, maximum)


def number(config: dict, key: str, default=MISSING, minimum: float = -math.inf, maximum: float = math.inf,
           strictly_positive: bool = False) -> float:
    """config[key] as a finite float in [minimum, maximum] (> 0 if strictly_positive); ints are accepted."""
    value = _value(config, key, default)
    if value is None and default is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not minimum <= value <= maximum or (strictly_positive and value <= 0)):
        bounds = "a positive number" if strictly_positive else f"a number from {minimum} to {maximum}"
        raise _bad(key, value, bounds)
    return float(value)


def flag(config: dict, key: str, default=MISSING) -> bool:
    """config[key] as true or false."""
    value = _value(config, key, default)
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def text(config: dict, key: str, default=MISSING) -> str | None:
    """config[key] as a string (or None, where the default is None)."""
    value = _value(config, key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise _bad(key, value, "a string")
    return value


def texts(config: dict, key: str, default=MISSING) -> tuple[str, ...]:
    """config[key] as a non-empty tuple of strings (block types, say)."""
    value = _value(config, key, default)
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_REPEATS or not all(
            isinstance(v, str) for v in value):
        raise _bad(key, value, "a list of strings")
    return tuple(value)


def require(config: dict, key: str, expected, network: str, reference: str = "diffusers") -> None:
    """Refuse an option minidiff's network does not implement: config[key] (absent: expected) must be `expected`."""
    value = config.get(key, expected)
    if value != expected:
        raise PretrainedError(f"{reference} config has {key}={value!r}, which minidiff's {network} does not support "
                              f"(it needs {expected!r})")


# ---------------------------------------------------------------------------- weight names


def rename_keys(state_dict: dict[str, Any], key_map: list[tuple[str, str]]) -> dict[str, Any]:
    """Apply every (regex, replacement) of key_map, in order, to every key; the values are kept as they are
    (tensors, or just their shapes when a file's header is checked before loading)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in key_map:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


@dataclass(frozen=True)
class Converter:
    """One reference class (config.json's `_class_name` or `architectures[0]`) and how it becomes a minidiff network.

    config_from: the reference's config dict -> the minidiff config (PretrainedError for anything refused).
    keys_from:   the reference's {name: value} -> minidiff's {name: value}, renaming only (values are untouched).
    to_reference: a minidiff state dict and config -> (the reference's state dict, its config dict), the inverse.
    """
    reference: str
    network: Callable[[Any], nn.Module]
    config_from: Callable[[dict], Any]
    keys_from: Callable[[dict], dict]
    to_reference: Callable[[dict[str, torch.Tensor], Any], tuple[dict[str, torch.Tensor], dict]]
