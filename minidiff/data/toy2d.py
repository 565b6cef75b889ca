"""2D toy distributions: small enough to watch diffusion destroy and rebuild a whole distribution.

Each sampler returns (n, 2) points scaled to roughly unit standard deviation per axis.
"""
from __future__ import annotations

import math
from numbers import Integral

import torch

DISTRIBUTIONS = ("swiss_roll", "two_moons", "eight_gaussians")


def sample_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) from one of DISTRIBUTIONS."""
    if not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a whole number of at least 1, got {n!r}; ask for one point or more")
    g = generator
    if name == "swiss_roll":
        theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))                 # (n,)
        points = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 7.0
        return points + 0.05 * torch.randn(n, 2, generator=g)
    if name == "two_moons":
        upper = torch.rand(n, generator=g) < 0.5
        angle = math.pi * torch.rand(n, generator=g)
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        points = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
        return points + 0.05 * torch.randn(n, 2, generator=g)
    if name == "eight_gaussians":
        k = torch.randint(0, 8, (n,), generator=g).float()
        centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1) * 1.4
        return centers + 0.1 * torch.randn(n, 2, generator=g)
    raise ValueError(f"unknown 2D distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def toy2d_dataset(name: str, n: int = 10000, seed: int = 0):
    """The same points as a Hugging Face `datasets.Dataset` with columns 'x' and 'y'."""
    from datasets import Dataset

    points = sample_2d(name, n, torch.Generator().manual_seed(seed)).numpy()
    return Dataset.from_dict({"x": points[:, 0], "y": points[:, 1]})
