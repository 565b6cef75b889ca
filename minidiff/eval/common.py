"""What the judges share: checking pixel values, caching their classifiers, and the Frechet distance.

Each judge (minidiff.eval.digits, minidiff.eval.shapes_fd) looks at generated images through a small classifier
trained on real images (minidiff.training.classifier.fit_classifier), the way FID (Heusel et al. 2017,
arXiv:1706.08500) looks at ImageNet samples through Inception, scaled down:

- `check_pixel_values`: images are finite and in [-1, 1] (give or take RANGE_TOLERANCE), or one clear error.
- `cached_or_trained`: a judge's classifier is trained once and cached as safetensors (never pickled), one file
  per version in cache_dir, else $MINIDIFF_CACHE, else ~/.cache/minidiff. A missing, corrupt, outdated or
  misfitting file is replaced by a fresh training run, written atomically (minidiff.io.atomic_write).
- `frechet_distance`: the Frechet distance between Gaussians fitted to two feature sets (FID's formula), and
  `chunked_frechet`, its mean over equal-sized chunks so that two numbers compare like with like.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minidiff.io import atomic_write, load_state_strict

RANGE_TOLERANCE = 0.5   # samplers overshoot [-1, 1] a little; beyond +-1.5 the range is wrong


def check_pixel_values(images: torch.Tensor) -> None:
    """Raise a ValueError unless every value is finite and within [-1, 1] (give or take RANGE_TOLERANCE)."""
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinity; the sampler diverged (check the schedule and the model)")
    low, high = images.min().item(), images.max().item()
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]; map [0, 1] pixels "
                         f"with minidiff.data.to_model_range, or clamp sampler output with .clamp(-1, 1)")


# ---------------------------------------------------------------------------------------------------------------
# Caching a judge's classifier
# ---------------------------------------------------------------------------------------------------------------

def cache_path(cache_dir: str | Path | None, version: str) -> Path:
    """Where a classifier's weights live: cache_dir, else $MINIDIFF_CACHE, else ~/.cache/minidiff."""
    folder = cache_dir or os.environ.get("MINIDIFF_CACHE") or Path.home() / ".cache" / "minidiff"
    return Path(folder) / f"{version}.safetensors"


def load_cached(path: Path, make_model: Callable[[], nn.Module], version: str) -> nn.Module | None:
    """The cached classifier, or None when the file is missing, corrupt, from another version or does not fit."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            cached_version = (f.metadata() or {}).get("version")
        if cached_version != version:
            return None
        model = make_model()
        load_state_strict(model, load_file(str(path)), str(path))   # every key, shape and value checked
    except Exception:  # safetensors raises its own error types for truncated files; retraining fixes any of them
        return None
    return model.eval()


def save_cached(model: nn.Module, path: Path, version: str) -> None:
    """Write the weights with their version in the file's metadata, atomically: an interrupted run never leaves
    half a file."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"version": version}))


def cached_or_trained(cache_dir: str | Path | None, version: str, make_model: Callable[[], nn.Module],
                      train: Callable[[], nn.Module]) -> nn.Module:
    """A judge's classifier from the cache if a valid file of this version is there; else trained and cached."""
    path = cache_path(cache_dir, version)
    model = load_cached(path, make_model, version)
    if model is None:
        model = train()
        save_cached(model, path, version)
    return model


# ---------------------------------------------------------------------------------------------------------------
# The Frechet distance
# ---------------------------------------------------------------------------------------------------------------

def frechet_distance_gaussians(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu_a, cov_a) and N(mu_b, cov_b), in float64.

        FD = ||mu_a - mu_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^{1/2})

    (cov_a cov_b) is not symmetric, but it is similar to the symmetric PSD matrix
    M = cov_a^{1/2} cov_b cov_a^{1/2}, so Tr((cov_a cov_b)^{1/2}) = sum_i sqrt(eigenvalue_i(M)).
    Two symmetric eigen-decompositions make this stable where a general matrix square root can
    return complex noise for near-singular covariances.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)          # (D,)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)      # (D, D)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(w.clip(min=0))) @ v.T                                      # cov_a^{1/2}, (D, D)
    m = sqrt_a @ cov_b @ sqrt_a                                                       # (D, D)
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((m + m.T) / 2).clip(min=0)).sum()        # Tr((cov_a cov_b)^{1/2})
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(fd, 0.0))   # rounding can leave -1e-12 for identical inputs


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

        FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    with mu the feature means and S the unbiased sample covariances (as FID computes them).
    The estimate is biased upwards for small N: even two samples of one distribution are at FD > 0,
    more so the fewer they are. Only compare FDs computed with the same sample sizes.
    """
    a = np.asarray(torch.as_tensor(feats_a).detach().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(feats_b).detach().cpu(), dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be two (N, D) arrays with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a covariance needs at least 2 rows per set, got {len(a)} and {len(b)}; pass more samples")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or infinity; check the images they came from")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def chunked_frechet(feats: torch.Tensor, reference: torch.Tensor, chunk_size: int) -> float:
    """Mean Frechet distance of disjoint chunks of `chunk_size` rows of feats (N, D), each against reference (M, D).

    The last N % chunk_size rows are left out, so every distance in the mean has the same sample-size bias.
    """
    num_chunks = len(feats) // chunk_size
    return float(np.mean([frechet_distance(feats[i * chunk_size:(i + 1) * chunk_size], reference)
                          for i in range(num_chunks)]))
