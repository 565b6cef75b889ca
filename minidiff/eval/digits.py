"""Judging generated digits: a small digit classifier, its features, and a Frechet distance on them.

A diffusion model trained on digits is judged the way FID judges ImageNet models (Heusel et al. 2017,
arXiv:1706.08500), scaled down: a classifier trained on *real* digits looks at the samples.

- recognizability: the share of samples the classifier labels confidently (max softmax >= 0.9). A blurry
  or broken digit gets a low maximum probability.
- coverage: the entropy of the predicted-label histogram divided by log(10): 1 when all ten digits are
  drawn equally often, 0 when the model only ever draws one digit (mode collapse).
- frechet: the Frechet distance between Gaussians fitted to the classifier's penultimate-layer features
  of the samples and of the real training digits (FID's formula on our own small feature space,
  minidiff.eval.common.frechet_distance).

No single number suffices: the classifier is confident on some images that are no digit at all (a blank
image scores recognizability 1.0), but coverage and the Frechet distance expose those at once.

Every number is reported next to the same number for *real* held-out digits (the test split, at the
same size), because "0.93" means nothing alone: the classifier itself is confident on only ~96% of real
test digits, and two sets of real digits are not at Frechet distance 0.

The classifier resizes every input to 16x16, so metrics for 8x8, 16x16 and 32x32 models are comparable.
It is trained once (about 5 s on a laptop CPU) and cached as safetensors, never pickled
(minidiff.eval.common.cached_or_trained, shared with the Shapes judge).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidiff.data.digits import digits_tensors
from minidiff.eval.common import cached_or_trained, check_pixel_values, chunked_frechet
from minidiff.training.classifier import fit_classifier

CLASSIFIER_VERSION = "digit-cnn-v1"   # bump when the architecture or training changes: old caches are ignored
CLASSIFIER_SIZE = 16                  # every input is resized to 16x16
MIN_SIZE, MAX_SIZE = 8, 32            # image sizes the metrics accept
CONFIDENT = 0.9                       # max softmax probability that counts as "recognizable"
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """A two-block CNN, 38,282 parameters; penultimate features D = 64.

        input (B, 1, S, S) in [-1, 1], S in 8..32
        resize to 16x16 (bilinear, antialiased)      (B, 1, 16, 16)
        conv 3x3 1->16, ReLU, max-pool 2             (B, 16, 8, 8)
        conv 3x3 16->32, ReLU, max-pool 2            (B, 32, 4, 4)
        flatten, linear 512->64, ReLU = features     (B, 64)
        linear 64->10 = logits                       (B, 10)
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * 4 * 4, 64)
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, 64) penultimate-layer features."""
        if x.shape[-1] != CLASSIFIER_SIZE:
            x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)   # (B, 1, 16, 16)
        h = self.conv(x)                                               # (B, 32, 4, 4)
        return F.relu(self.fc(h.flatten(1)))                           # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, 10) logits."""
        return self.head(self.features(x))


def check_digit_images(images: torch.Tensor) -> None:
    """Raise a ValueError naming the problem unless images is (N >= 1, 1, S, S), S in 8..32, finite, about [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}; use torch.as_tensor(images)")
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (N, 1, S, S), got {tuple(images.shape)}; "
                         f"digits are single-channel and square (add a channel axis with images[:, None])")
    if not MIN_SIZE <= images.shape[-1] <= MAX_SIZE:
        raise ValueError(f"image size must be in {MIN_SIZE}..{MAX_SIZE}, got {images.shape[-1]}; "
                         f"resize with torch.nn.functional.interpolate")
    if images.shape[0] == 0:
        raise ValueError("got no images (N = 0); generate at least one, and at least 297 for a fair Frechet distance")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got {images.dtype}; "
                         f"map uint8 pixels with minidiff.data.to_model_range(x / 255)")
    check_pixel_values(images)


# ---------------------------------------------------------------------------------------------------------------
# Training and caching the classifier
# ---------------------------------------------------------------------------------------------------------------

def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation: shift by up to 1.5 pixels, rotate by up to 10 degrees, scale by 0.9..1.1.

    x (B, 1, 16, 16) in [-1, 1]. grid_sample pads with 0, so it works on x + 1 to pad with the
    background value -1.
    """
    B = x.shape[0]
    angle = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(10)        # (B,)
    scale = 1 + (torch.rand(B, generator=generator) * 2 - 1) * 0.1                # (B,)
    shift = (torch.rand(B, 2, generator=generator) * 2 - 1) * (1.5 * 2 / x.shape[-1])  # (B, 2), grid units
    theta = torch.zeros(B, 2, 3)                                                  # (B, 2, 3) affine matrices
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)               # (B, 16, 16, 2)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1                   # (B, 1, 16, 16)


def train_digit_classifier(epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> DigitClassifier:
    """Train DigitClassifier on the 1500 training digits (16x16), augmented (fit_classifier: deterministic)."""
    images, labels = digits_tensors("train", CLASSIFIER_SIZE)   # (1500, 1, 16, 16), (1500,)
    return fit_classifier(DigitClassifier, images, labels, F.cross_entropy, epochs, batch_size, lr, seed,
                          augment=random_affine)


def load_digit_classifier(cache_dir: str | Path | None = None) -> DigitClassifier:
    """The digit classifier, trained on first use and loaded from the safetensors cache afterwards.

    A corrupt or outdated cache file is replaced by a fresh training run, written atomically
    (minidiff.eval.common.cached_or_trained).
    """
    return cached_or_trained(cache_dir, CLASSIFIER_VERSION, DigitClassifier, train_digit_classifier)


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def features(model: DigitClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, 1, S, S) images in [-1, 1] -> (N, 64) penultimate-layer features, on the model's device."""
    check_digit_images(images)
    device = next(model.parameters()).device
    chunks = [model.features(images[i:i + batch_size].to(device, torch.float32))   # (b, 64)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)                                                       # (N, 64)


# ---------------------------------------------------------------------------------------------------------------
# The metrics, each next to its real-data baseline
# ---------------------------------------------------------------------------------------------------------------

def recognizability(probs: torch.Tensor) -> float:
    """Share of rows of (N, 10) class probabilities whose maximum is >= 0.9."""
    return (probs.max(dim=1).values >= CONFIDENT).float().mean().item()


def coverage(probs: torch.Tensor) -> float:
    """Entropy of the predicted-label histogram / log(10): 1 = all digits equally often, 0 = one digit only."""
    counts = torch.bincount(probs.argmax(dim=1), minlength=NUM_CLASSES).double()  # (10,)
    p = counts[counts > 0] / counts.sum()
    return ((p * (1 / p).log()).sum() / math.log(NUM_CLASSES)).item()   # H = sum p log(1/p)


def digit_metrics(images: torch.Tensor, classifier: DigitClassifier | None = None) -> dict:
    """Recognizability, coverage and Frechet distance of generated digits, each next to its real baseline.

    images: (N, 1, S, S) in [-1, 1], S in 8..32. The real digits are taken at the same size S.

    Returns a dict:
        n                       number of generated images
        recognizability         share of generated images classified with max softmax >= 0.9
        real_recognizability    the same for the 297 real test digits
        recognizability_ratio   recognizability / real_recognizability (1 = as recognizable as real digits)
        coverage                entropy of the predicted-label histogram / log(10) (real digits: ~1)
        frechet                 FD(generated features, train-split features), m generated images at a time
        real_frechet            FD(test-split features, train-split features), m test digits at a time:
                                the real-vs-real baseline
        frechet_ratio           frechet / real_frechet (1 = as close to the training digits as held-out digits)
        frechet_sample_size     m = min(N, 297), the number of samples behind each Frechet distance

    Sample sizes, like with like: the Frechet distance is biased upwards the fewer samples it sees
    (297 and 500 real training digits score about 6.5 and 4.2 against the same 750 other training
    digits), so a ratio is only fair when both sides use the same number. Both distances are therefore
    computed on chunks of m = min(N, 297) images against all 1500 training features and averaged over
    the disjoint chunks: N // m chunks of the generated images, 297 // m chunks of the test digits.
    Generate N >= 297 (ideally a multiple of 297, e.g. 594 or 891: more chunks, less noise); with
    N < 64 (the feature dimension) the covariances are singular and the Frechet numbers say little.
    The classifier was trained on the train split, so a model that memorised training digits can score
    a frechet_ratio below 1.
    """
    check_digit_images(images)
    classifier = classifier if classifier is not None else load_digit_classifier()
    size = images.shape[-1]
    train_images, _ = digits_tensors("train", size)                 # (1500, 1, S, S)
    test_images, _ = digits_tensors("test", size)                   # (297, 1, S, S)
    feats = features(classifier, images)                            # (N, 64)
    feats_train = features(classifier, train_images)                # (1500, 64)
    feats_test = features(classifier, test_images)                  # (297, 64)
    with torch.no_grad():
        probs = classifier.head(feats).softmax(dim=1)               # (N, 10)
        probs_test = classifier.head(feats_test).softmax(dim=1)     # (297, 10)
    recognizable, real_recognizable = recognizability(probs), recognizability(probs_test)
    m = min(len(images), len(test_images))
    fd, real_fd = chunked_frechet(feats, feats_train, m), chunked_frechet(feats_test, feats_train, m)
    return {
        "n": len(images),
        "recognizability": recognizable,
        "real_recognizability": real_recognizable,
        "recognizability_ratio": recognizable / real_recognizable,
        "coverage": coverage(probs),
        "frechet": fd,
        "real_frechet": real_fd,
        "frechet_ratio": fd / real_fd,
        "frechet_sample_size": m,
    }
