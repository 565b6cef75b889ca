"""Pictures: sample grids, denoising trajectories, 2D point clouds and loss curves, with matplotlib."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) uint8 picture."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)    # [-1, 1] -> [0, 1], as data.images does
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    N, _, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(N))
    rows = math.ceil(N / nrow)
    grid = torch.ones(3, rows * (H + pad) + pad, nrow * (W + pad) + pad)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_image(array: np.ndarray, path: str | Path, scale: int = 4) -> None:
    """Save an (H, W, 3) uint8 array as PNG, enlarged `scale` times with nearest neighbours."""
    import matplotlib.image

    array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(str(path), array)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 4) -> None:
    save_image(image_grid(images, nrow), path, scale)


def show_images(images: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None):
    """Draw a grid of (N, C, H, W) images in [-1, 1] on a matplotlib axis."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 5))[1]
    ax.imshow(image_grid(images, nrow), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def trajectory_labels(trajectory: list[tuple[int, torch.Tensor]]) -> list[str]:
    """A label per frame of `sample(..., return_trajectory=True)`'s list: the timestep whose noise level the frame
    holds. Entry i is (timestep of step i, x after it), so x after step i sits at the next step's timestep; the
    first entry, the initial noise, at the first step's; the last entry is the sample."""
    steps = [t for t, _ in trajectory[1:]]                        # the timesteps the network saw, in order
    return [f"t={t}" for t in steps] + ["sample"]


def plot_trajectory(trajectory: list[tuple[int, torch.Tensor]], num_frames: int = 8, num_images: int = 4):
    """Rows of images from x_T to x_0: `trajectory` is the (t, x_t) list that `sample(..., return_trajectory=True)`
    returns; each frame is labelled with the timestep of its noise level (`trajectory_labels`)."""
    import matplotlib.pyplot as plt

    labels = trajectory_labels(trajectory)
    picks = np.linspace(0, len(trajectory) - 1, num_frames).round().astype(int)
    fig, axes = plt.subplots(1, num_frames, figsize=(1.6 * num_frames, 1.6 * num_images + 0.4))
    for ax, i in zip(axes, picks):
        show_images(trajectory[i][1][:num_images], nrow=1, ax=ax, title=labels[i])
    fig.tight_layout()
    return fig


def plot_points(points: torch.Tensor, ax=None, title: str | None = None, lim: float = 3.0):
    """Scatter (N, 2) points."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4, 4))[1]
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def save_points(points: torch.Tensor, path: str | Path, title: str | None = None) -> None:
    import matplotlib.pyplot as plt

    ax = plot_points(points, title=title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(str(path), dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
