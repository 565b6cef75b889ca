"""The real handwritten digits that scikit-learn ships (no download): 1797 grayscale 8x8 images, 0-9.

Alpaydin & Kaynak 1998, UCI "Optical Recognition of Handwritten Digits" (the test half), pixel values 0..16.
minidiff serves them as a Hugging Face `datasets.DatasetDict` with a fixed train / test split, and
`digits_tensors` turns a split into model-ready tensors: resize, then map pixels to [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minidiff.data.images import to_model_range

NUM_TEST = 297      # held out for the digit classifier and the real-vs-real baselines
SPLIT_SEED = 0


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """pixels (N, 8, 8) float32 in [0, 1] and labels (N,) int64 of one split, straight from scikit-learn's arrays
    (a few milliseconds; building a `datasets.Dataset` around them takes a hundred times longer)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)            # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    index = {"test": order[:NUM_TEST], "train": order[NUM_TEST:]}[split]
    return pixels[index], labels[index]


def digits_dataset():
    """DatasetDict with 'train' (1500) and 'test' (297) splits; columns 'pixels' (8x8 floats in [0, 1]) and 'label'."""
    from datasets import Dataset, DatasetDict

    def make(split):
        pixels, labels = _digits_split(split)
        return Dataset.from_dict({"pixels": pixels, "label": labels})

    return DatasetDict(train=make("train"), test=make("test"))


def digits_tensors(split: str = "train", size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, size, size) in [-1, 1], labels (N,)) for one split: the rows of digits_dataset()[split].

    The 8x8 originals are upsampled with bilinear interpolation; then the visible data step
    `to_model_range` maps [0, 1] to [-1, 1], the range the diffusion process assumes.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown digits split {split!r}; choose 'train' or 'test'")
    if size < 8:
        raise ValueError(f"digits are 8x8; size must be at least 8, got {size}")
    pixels, labels = _digits_split(split)
    x = torch.from_numpy(pixels)[:, None]                                       # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return to_model_range(x), torch.from_numpy(labels)
