"""Judging the image quality of generated Shapes scenes: an attribute classifier, its features, a Frechet distance.

FID (Heusel et al. 2017, arXiv:1706.08500) compares generated and real images through the features of a
network trained on real images. This is FID for the Shapes world (minidiff/data/shapes.py), scaled down:

- ShapesAttributeClassifier, a small CNN trained on renders of the train split, says which of the 5 shapes and
  which of the 6 colors appear in an image (11 yes/no answers, multi-label). To answer, its penultimate layer
  has to encode what the objects look like: their outlines, their hues, how much of each there is.
- shapes_frechet fits a Gaussian to those 64 features of the generated images and another to the features of
  real renders of the train split, and reports the Frechet distance between the two
  (minidiff.eval.common.frechet_distance):

      FD = ||mu_gen - mu_real||^2 + Tr(S_gen + S_real - 2 (S_gen S_real)^{1/2})

It measures how the images look, not whether they follow their prompts: that is ShapesEval's job
(minidiff/eval/shapeseval.py). The features are pooled over the whole image, so they do not see where the
objects are.

The number is reported next to the same distance for *real* held-out renders (the test split, same count):
two sets of real scenes are not at distance 0, and "FD = 3.1" means nothing alone. frechet_ratio is
frechet / real_frechet: about 1 for images as good as real renders, far above 1 for broken ones.

The classifier resizes every input to 32x32, so models of 32 to 256 pixels are judged on one scale.
It is trained once (about 15 s on one CPU core) and cached as safetensors, never pickled, like the
digit classifier.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minidiff.data.images import to_model_range
from minidiff.data.shapes import COLORS, MAX_RESOLUTION, SHAPES
from minidiff.data.shapes_dataset import make_example, shapes_tensors
from minidiff.eval.common import cached_or_trained, check_pixel_values, frechet_distance
from minidiff.training.classifier import fit_classifier

CLASSIFIER_VERSION = "shapes-attribute-cnn-v1"   # bump when the architecture or training changes: old caches ignored
CLASSIFIER_SIZE = 32                  # every input is resized to 32x32
MIN_SIZE, MAX_SIZE = 32, MAX_RESOLUTION   # image sizes the metric accepts (below 32 a small object is a few pixels)
LABELS = SHAPES + tuple(COLORS)       # the 11 outputs: 5 shapes, then 6 colors
FEATURE_DIM = 64
MIN_IMAGES = 2 * FEATURE_DIM          # fewer images than this make the 64x64 covariances too noisy to compare


class ShapesAttributeClassifier(nn.Module):
    """A three-block CNN, 32,779 parameters; penultimate features D = 64.

        input (B, 3, S, S) in [-1, 1], S in 32..256
        resize to 32x32 (bilinear, antialiased)             (B, 3, 32, 32)
        conv 3x3 3->16, BatchNorm, ReLU, max-pool 2         (B, 16, 16, 16)
        conv 3x3 16->32, BatchNorm, ReLU, max-pool 2        (B, 32, 8, 8)
        conv 3x3 32->64, BatchNorm, ReLU                    (B, 64, 8, 8)
        global max-pool and mean-pool, concatenated         (B, 128)
        linear 128->64, ReLU = features                     (B, 64)
        linear 64->11 = logits, one per entry of LABELS     (B, 11)

    The global max says whether a pattern (a triangle's apex, a cyan edge) occurs anywhere, the global mean how
    much of it there is; the labels do not depend on where objects are, and neither do the features.
    BatchNorm makes the shape labels train in a few epochs (without it they stay near chance for many more).
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * 64, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, len(LABELS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 64) penultimate-layer features."""
        if x.shape[-1] != CLASSIFIER_SIZE:
            x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)   # (B, 3, 32, 32)
        h = self.conv(x)                                               # (B, 64, 8, 8)
        pooled = torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)   # (B, 128)
        return F.relu(self.fc(pooled))                                 # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 11) logits; sigmoid(logit) = P(label present in the image)."""
        return self.head(self.features(x))


def as_shapes_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float32 (N, 3, S, S) in [-1, 1] from float (N, 3, S, S) in [-1, 1] or uint8 (N, H, W, 3) pixels.

    Raises a one-line ValueError naming the problem and its fix for anything else: another container or
    dtype, a wrong layout, a non-square or out-of-range size, no images, NaN, or values far outside [-1, 1].
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}; "
                         f"stack a list of HxWx3 uint8 images with numpy.stack(images)")
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must have shape (N, H, W, 3), got {tuple(images.shape)}; "
                             f"pixels are channels-last (from (N, 3, H, W) use images.permute(0, 2, 3, 1))")
        images = to_model_range(images.permute(0, 3, 1, 2).float() / 255)   # (N, 3, H, W) in [-1, 1]
    elif not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1] or uint8 pixels, got {images.dtype}; "
                         f"convert with images.to(torch.uint8) or map pixels with to_model_range(x / 255)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must have shape (N, 3, S, S), got {tuple(images.shape)}; "
                         f"Shapes images are RGB, channels first (from (N, S, S, 3) use images.permute(0, 3, 1, 2))")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square, got {images.shape[2]}x{images.shape[3]}; "
                         f"center-crop them to their short side")
    if not MIN_SIZE <= images.shape[-1] <= MAX_SIZE:
        raise ValueError(f"image size must be in {MIN_SIZE}..{MAX_SIZE}, got {images.shape[-1]}; "
                         f"resize with torch.nn.functional.interpolate")
    if images.shape[0] == 0:
        raise ValueError(f"got no images (N = 0); generate at least {MIN_IMAGES}")
    check_pixel_values(images)
    return images.float()


# ---------------------------------------------------------------------------------------------------------------
# Training and caching the classifier
# ---------------------------------------------------------------------------------------------------------------

def attribute_labels(objects: list[dict]) -> torch.Tensor:
    """(11,) multi-hot labels of a scene's objects: 1 where a shape or a color of LABELS is present."""
    labels = torch.zeros(len(LABELS))
    for obj in objects:
        labels[LABELS.index(obj["shape"])] = 1
        labels[LABELS.index(obj["color"])] = 1
    return labels


def shapes_attribute_data(split: str, n: int, size: int = CLASSIFIER_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples 0..n-1 of a split as (images (n, 3, S, S) in [-1, 1], labels (n, 11)), the data step of
    shapes_tensors (uint8 -> [0, 1] -> [-1, 1]) with each scene's attributes as labels."""
    rows = [make_example(split, i, size) for i in range(n)]
    pixels = torch.from_numpy(np.stack([row["image"] for row in rows]))              # (n, S, S, 3) uint8
    images = to_model_range(pixels.permute(0, 3, 1, 2).float() / 255)               # (n, 3, S, S)
    labels = torch.stack([attribute_labels(row["objects"]) for row in rows])        # (n, 11)
    return images, labels


def train_shapes_classifier(n_images: int = 5000, epochs: int = 5, batch_size: int = 64, lr: float = 3e-3,
                            seed: int = 0) -> ShapesAttributeClassifier:
    """Train ShapesAttributeClassifier on n_images train-split renders at 32x32: Adam, one-cycle schedule,
    binary cross-entropy per label (each label is its own yes/no question).

    Deterministic for a fixed seed (minidiff.training.classifier.fit_classifier).
    """
    images, labels = shapes_attribute_data("train", n_images)     # (n, 3, 32, 32), (n, 11)
    return fit_classifier(ShapesAttributeClassifier, images, labels, F.binary_cross_entropy_with_logits,
                          epochs, batch_size, lr, seed)


def load_shapes_classifier(cache_dir: str | Path | None = None) -> ShapesAttributeClassifier:
    """The attribute classifier, trained on first use and loaded from the safetensors cache afterwards.

    Same cache as the digit classifier: cache_dir, else $MINIDIFF_CACHE, else ~/.cache/minidiff, one file
    per CLASSIFIER_VERSION; a corrupt or outdated file is replaced by a fresh run, written atomically.
    """
    return cached_or_trained(cache_dir, CLASSIFIER_VERSION, ShapesAttributeClassifier, train_shapes_classifier)


# ---------------------------------------------------------------------------------------------------------------
# Features and the Frechet distance, next to its real-vs-real baseline
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def shapes_features(model: ShapesAttributeClassifier, images: torch.Tensor | np.ndarray,
                    batch_size: int = 512) -> torch.Tensor:
    """Images (as_shapes_images accepts) -> (N, 64) penultimate-layer features, on the model's device."""
    images = as_shapes_images(images)                                              # (N, 3, S, S)
    device = next(model.parameters()).device
    chunks = [model.features(images[i:i + batch_size].to(device))                 # (b, 64)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)                                                       # (N, 64)


def shapes_frechet(images: torch.Tensor | np.ndarray, n_reference: int | None = None,
                   classifier: ShapesAttributeClassifier | None = None) -> dict:
    """Frechet distance of generated Shapes images to real renders, next to the real-vs-real baseline.

    images: float (N, 3, S, S) in [-1, 1], or uint8 (N, H, W, 3) pixels; S in 32..256, N >= MIN_IMAGES (128).
    The real scenes are rendered at the same size S (at S = 256 that takes a few seconds per 1000).

    Returns a dict:
        n               N, the number of generated images
        n_reference     M, the number of train-split renders (n_reference, default N)
        frechet         FD(features of the N images, features of train examples 0..M-1)
        real_frechet    FD(features of test examples 0..N-1, the same M train features): the baseline
        frechet_ratio   frechet / real_frechet (about 1 = as close to the training scenes as held-out scenes)

    Like with like: the Frechet distance is biased upwards the fewer samples it sees, so the baseline uses
    exactly N real test scenes against the same M train scenes. Compare FDs only at equal N and M. The
    ratio of two *real* sets drifts with which scenes they hold: benchmarks/bench_shapes_fd.py measured
    0.58..1.01 over 15 chunks of N = 128 validation renders, 0.97..1.51 at N = 500 and 1.15..1.67 at N = 1000
    (blank, noise and grayed images score 40 to 140), so compare two good models at N >= 1000, and read a
    ratio below about 2 as "looks like real renders". Train scenes 0..4999 also trained the classifier, so a
    model that memorised them can score a frechet_ratio below 1.
    """
    images = as_shapes_images(images)                                              # (N, 3, S, S)
    n, size = len(images), images.shape[-1]
    n_reference = n if n_reference is None else n_reference
    if n < MIN_IMAGES:
        raise ValueError(f"got {n} images, the Frechet distance of {FEATURE_DIM}-dim features needs at least "
                         f"{MIN_IMAGES}; generate more (500 or more gives a steadier number)")
    if not isinstance(n_reference, (int, np.integer)) or n_reference < MIN_IMAGES:
        raise ValueError(f"n_reference must be an integer >= {MIN_IMAGES}, got {n_reference!r}; "
                         f"leave it None to use as many real scenes as images")
    classifier = classifier if classifier is not None else load_shapes_classifier()
    train_images, _ = shapes_tensors("train", int(n_reference), size)             # (M, 3, S, S)
    test_images, _ = shapes_tensors("test", n, size)                              # (N, 3, S, S)
    feats_train = shapes_features(classifier, train_images)                       # (M, 64)
    fd = frechet_distance(shapes_features(classifier, images), feats_train)
    real_fd = frechet_distance(shapes_features(classifier, test_images), feats_train)
    return {"n": n, "n_reference": int(n_reference), "frechet": fd, "real_frechet": real_fd,
            "frechet_ratio": fd / real_fd}
