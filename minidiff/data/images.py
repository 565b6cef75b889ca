"""Pixel ranges, and any Hugging Face image dataset (by hub name or local folder) as tensors.

Diffusion works on images in [-1, 1]: the data step below maps pixels there, in plain sight,
rather than hiding it inside a network's forward.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped."""
    return ((x + 1) / 2).clamp(0, 1)


def pil_to_tensor(image, size: int, channels: int) -> torch.Tensor:
    """PIL image -> (C, size, size) in [0, 1]: convert the mode, resize the short side, centre-crop."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0                   # (H, W) or (H, W, C)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(array.copy())


def load_image_dataset(name_or_path: str, split: str = "train", image_column: str = "image", size: int = 32,
                       channels: int = 3, limit: int | None = None) -> torch.Tensor:
    """Any Hugging Face image dataset as a (N, C, size, size) tensor in [-1, 1].

    name_or_path: a folder written by `Dataset.save_to_disk` (no network), or a hub name such as
    'cifar10' (downloads it: for GPU users with internet; minidiff's tests never do this).
    """
    import datasets

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number of pixels of at least 1, got {size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be at least 1 image, got {limit!r}; pass None to load them all")
    path = Path(name_or_path)
    if path.exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(name_or_path, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{name_or_path} has no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    if image_column not in ds.column_names:
        raise ValueError(f"{name_or_path} has no column {image_column!r}; pass image_column= one of {ds.column_names}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    images = torch.stack([pil_to_tensor(img, size, channels) for img in ds[image_column]])  # (N, C, size, size)
    return to_model_range(images)
