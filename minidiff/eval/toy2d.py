"""Judging generated 2D point clouds: the sliced Wasserstein distance to the true distribution.

For the 2D toys we can draw as many true samples as we like, so no classifier is needed: compare the
generated cloud with fresh samples of the true distribution directly. In one dimension the Wasserstein
distance is easy: sort both samples and match them in order. The sliced Wasserstein distance
(Rabin et al. 2011; Bonneel et al. 2015) projects both clouds onto many directions and averages those
1-D distances.

    SW_1(a, b) = mean_k W_1(<a, u_k>, <b, u_k>),    W_1(x, y) = integral_0^1 |F_x^{-1}(q) - F_y^{-1}(q)| dq

with u_k unit vectors and F^{-1} the quantile functions. This file uses W_1 (not W_2), so the result is in
the units of the data: shifting a cloud by c along one axis gives SW_1 = |c| * mean_k |cos(phi_k)| -> |c| 2/pi.

Two finite samples of the *same* distribution are at SW > 0, more so the smaller they are, so
`toy2d_metrics` always reports, next to it, the distance that fresh true samples of the same size score.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from minidiff.data.toy2d import sample_2d

NUM_BASELINE_SAMPLES = 10       # fresh true samples averaged into the baseline


def check_points(points: torch.Tensor, what: str = "points") -> None:
    """Raise a ValueError naming the problem unless points is a finite float (N >= 1, 2) tensor."""
    if not isinstance(points, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(points).__name__}; use torch.as_tensor({what})")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{what} must have shape (N, 2), got {tuple(points.shape)}; one row per 2D point")
    if points.shape[0] == 0:
        raise ValueError(f"{what} is empty (N = 0); pass at least one point, and a few thousand for a stable distance")
    if not points.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {points.dtype}; convert with {what}.float()")
    if not torch.isfinite(points).all():
        raise ValueError(f"{what} contains NaN or infinity; the sampler diverged (check the schedule and the model)")


def quantiles(sorted_x: np.ndarray, num_levels: int) -> np.ndarray:
    """Quantile functions at levels q_i = (i + 0.5) / num_levels, by linear interpolation.

    sorted_x (P, N): each row sorted. The quantile function passes through the points
    ((j + 0.5) / N, sorted_x[:, j]), so for num_levels == N the quantiles are sorted_x itself.
    Returns (P, num_levels).
    """
    n = sorted_x.shape[1]
    if n == num_levels:
        return sorted_x
    levels = (np.arange(num_levels) + 0.5) / num_levels                    # (M,)
    position = np.clip(levels * n - 0.5, 0, n - 1)                          # (M,) fractional index
    low = np.floor(position).astype(np.int64)                               # (M,)
    high = np.minimum(low + 1, n - 1)                                       # (M,)
    weight = position - low                                                 # (M,)
    return sorted_x[:, low] * (1 - weight) + sorted_x[:, high] * weight     # (P, M)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-1 distance between point clouds a (N_a, 2) and b (N_b, 2).

    Directions u_k = (cos phi_k, sin phi_k) with phi_k = (k + offset) pi / K, k = 0..K-1, and one random
    offset in [0, 1) drawn from `generator`: evenly spread over the half circle (u and -u give the same
    1-D distance), which averages far more accurately than K independent random angles, yet is unbiased.
    Unequal N_a, N_b are handled by comparing both quantile functions at max(N_a, N_b) levels.
    Computed in numpy float64 (on the CPU numpy sorts many short rows far faster than torch);
    returns a float in the data's units.
    """
    check_points(a, "a")
    check_points(b, "b")
    if num_projections < 1:
        raise ValueError(f"num_projections must be at least 1, got {num_projections}")
    offset = torch.rand((), generator=generator, dtype=torch.float64).item()
    angles = (np.arange(num_projections) + offset) * math.pi / num_projections      # (K,)
    directions = np.stack([np.cos(angles), np.sin(angles)])                          # (2, K)
    a, b = (x.detach().cpu().double().numpy() for x in (a, b))                       # (N_a, 2), (N_b, 2)
    proj_a = np.sort((a @ directions).T, axis=1)                                     # (K, N_a)
    proj_b = np.sort((b @ directions).T, axis=1)                                     # (K, N_b)
    m = max(len(a), len(b))
    w1 = np.abs(quantiles(proj_a, m) - quantiles(proj_b, m)).mean(axis=1)           # (K,) 1-D W_1 per direction
    return float(w1.mean())


def toy2d_metrics(points: torch.Tensor, name: str, n_ref: int | None = None, seed: int = 0) -> dict:
    """Sliced Wasserstein distance of generated points to the true distribution `name`, next to its baseline.

    points: (N, 2). A reference sample of n_ref true points (default N) is drawn with `seed`. The baseline
    compares fresh true samples of the same size N with the same reference along the same directions, so
    it carries the same finite-sample bias; it is averaged over 10 fresh samples because one draw is noisy
    (two true samples of 2000 points can score a factor of 2 apart). A generated cloud within about two
    `real_sliced_wasserstein_std` of the baseline is as close to the truth as real samples of its size.

    Returns a dict:
        n                              number of generated points
        sliced_wasserstein             SW_1(points, reference)
        real_sliced_wasserstein        mean SW_1(fresh true points, reference): what a perfect model scores
        real_sliced_wasserstein_std    standard deviation of that over the 10 fresh samples
        sliced_wasserstein_ratio       sliced_wasserstein / real_sliced_wasserstein (about 1 = perfect)
    """
    check_points(points)
    n = len(points)
    n_ref = n if n_ref is None else n_ref
    if n_ref < 1:
        raise ValueError(f"n_ref must be at least 1, got {n_ref}")
    generator = torch.Generator().manual_seed(seed)
    reference = sample_2d(name, n_ref, generator)                              # (n_ref, 2)

    def distance(x: torch.Tensor) -> float:   # the same directions for every comparison
        return sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(seed))

    sw = distance(points)
    real = torch.tensor([distance(sample_2d(name, n, generator)) for _ in range(NUM_BASELINE_SAMPLES)])  # (10,)
    return {
        "n": n,
        "sliced_wasserstein": sw,
        "real_sliced_wasserstein": real.mean().item(),
        "real_sliced_wasserstein_std": real.std().item(),
        "sliced_wasserstein_ratio": sw / real.mean().item(),
    }
