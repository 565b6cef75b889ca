"""Configs as dataclasses: `key=value` overrides from the command line, type-checked, and JSON round trips.

An unknown key, an ambiguous key or a value of the wrong type is a ValueError that names the fix.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def _parse(text: str, kind, key: str):
    """Parse one command-line value into the annotated type `kind`."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if text.lower() == "none" and type(None) in args:
            return None
        return _parse(text, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        inner = args[0] if args else str
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse(p.strip(), inner, key) for p in parts)
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise ValueError(f"{key} cannot be set from the command line")


def field_types(config_cls) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def apply_overrides(sections: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value`, `section.key=value` or `section.sub.key=value` strings to named dataclass instances.

    sections: e.g. {"model": UNetConfig(...), "train": TrainConfig(...)}; returns new instances. A bare key must
    belong to exactly one section; a dotted path walks into nested configs (CLIP's `model.text.causal=false`).
    """
    changes: dict[str, dict[str, Any]] = {name: {} for name in sections}   # nested: {field: value or {field: ...}}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value; write it as e.g. lr=1e-3")
        key, text = item.split("=", 1)
        if "." in key:
            section, *path = key.split(".")
            if section not in sections:
                raise ValueError(f"unknown config section {section!r} in {item!r}; sections are {', '.join(sections)}")
            owners = [section] if _has_path(sections[section], path) else []
        else:
            path = [key]
            owners = [s for s, cfg in sections.items() if key in field_types(type(cfg))]
        if not owners:
            known = sorted({f"{s}.{k}" for s, cfg in sections.items() for k in field_types(type(cfg))})
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(known)}")
        if len(owners) > 1:
            raise ValueError(f"config key {key!r} is ambiguous; write one of {', '.join(f'{o}.{key}' for o in owners)}")
        config, target = sections[owners[0]], changes[owners[0]]
        for name in path[:-1]:
            config, target = getattr(config, name), target.setdefault(name, {})
        target[path[-1]] = _parse(text, field_types(type(config))[path[-1]], key)
    return {s: _replace(cfg, changes[s]) for s, cfg in sections.items()}


def _has_path(config, path: list[str]) -> bool:
    for name in path:
        if not dataclasses.is_dataclass(config) or name not in field_types(type(config)):
            return False
        config = getattr(config, name)
    return True


def _replace(config, changes: dict[str, Any]):
    """One dataclasses.replace per config, nested configs first, so that validation sees all changes together."""
    nested = {k: _replace(getattr(config, k), v) for k, v in changes.items() if isinstance(v, dict)}
    return dataclasses.replace(config, **{**changes, **nested}) if changes else config


def to_dict(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def from_dict(config_cls, data: dict):
    """Rebuild a config from JSON, turning lists back into tuples; unknown keys are an error."""
    types_ = field_types(config_cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no fields {sorted(unknown)}; the config.json is from another version")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
