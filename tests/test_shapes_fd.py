"""The Shapes judge of image quality: attribute classifier, its cache, and the Frechet distance to real renders."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from minidiff.data.shapes_dataset import make_example, shapes_tensors
from minidiff.eval import ShapesAttributeClassifier, load_shapes_classifier, shapes_features, shapes_frechet
from minidiff.eval import shapes_fd
from minidiff.eval.common import cache_path, save_cached
from minidiff.eval.shapes_fd import (CLASSIFIER_VERSION, LABELS, MIN_IMAGES, as_shapes_images, shapes_attribute_data,
                                     train_shapes_classifier)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """The one full training run of this file (~15 s), into the session's $MINIDIFF_CACHE (tests/conftest.py),
    so shapes_frechet(images) without a classifier loads it from there."""
    return load_shapes_classifier(cache_dir)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) -> the same scenes with every color swapped for its gray of equal luminance (ITU-R BT.601)."""
    luminance = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]   # (N, S, S)
    return luminance[:, None].expand(-1, 3, -1, -1).contiguous()                     # (N, 3, S, S)


# --- the classifier ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, n", [(32, 1000), (64, 500)])
def test_classifier_held_out_accuracy_at_least_097(classifier, size, n):
    images, labels = shapes_attribute_data("test", n, size)          # (n, 3, S, S), (n, 11)
    with torch.no_grad():
        correct = ((classifier(images) > 0).float() == labels).float()   # (n, 11)
    per_label = correct.mean(dim=0)                                   # (11,)
    worst = LABELS[per_label.argmin()]
    assert per_label.min().item() >= 0.97, f"{worst}: {per_label.min().item():.3f}"


def test_labels_are_the_scene_attributes():
    _, labels = shapes_attribute_data("train", 20)
    for i, row in enumerate(make_example("train", j, 32) for j in range(20)):
        present = {o["shape"] for o in row["objects"]} | {o["color"] for o in row["objects"]}
        assert {LABELS[k] for k in labels[i].nonzero().flatten().tolist()} == present


def test_classifier_shapes_and_parameter_count():
    model = ShapesAttributeClassifier().eval()
    assert sum(p.numel() for p in model.parameters()) == 32_779          # as its docstring says
    for size in (32, 48, 256):
        x = torch.zeros(2, 3, size, size)
        assert model(x).shape == (2, len(LABELS)) == (2, 11)
        assert shapes_features(model, x).shape == (2, 64)


def test_training_is_deterministic():
    a, b = (train_shapes_classifier(n_images=128, epochs=1) for _ in range(2))
    c = train_shapes_classifier(n_images=128, epochs=1, seed=1)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.fc.weight, c.fc.weight)


# --- the cache ---------------------------------------------------------------------------------------------------

def _no_training(*args, **kwargs):
    pytest.fail("the classifier was retrained although a valid cache file exists")


def test_cache_round_trip_loads_without_retraining(classifier, cache_dir, monkeypatch):
    path = cache_path(cache_dir, CLASSIFIER_VERSION)
    assert path.is_file() and path.suffix == ".safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["version"] == CLASSIFIER_VERSION
    assert not list(cache_dir.glob("*.tmp")), "the atomic write left a temporary file behind"
    monkeypatch.setattr(shapes_fd, "train_shapes_classifier", _no_training)
    again = load_shapes_classifier()                                   # from $MINIDIFF_CACHE
    x = shapes_tensors("test", 16, 32)[0]
    with torch.no_grad():
        assert torch.equal(again(x), classifier(x))


@pytest.mark.parametrize("damage", ["older version", "garbage"])
def test_outdated_or_corrupt_cache_is_retrained(classifier, tmp_path, monkeypatch, damage):
    path = cache_path(tmp_path, CLASSIFIER_VERSION)
    if damage == "older version":
        save_cached(classifier, path, "shapes-attribute-cnn-v0")       # right file name, old version inside
    else:
        path.write_bytes(b"not a safetensors file")
    trained = []
    monkeypatch.setattr(shapes_fd, "train_shapes_classifier", lambda: trained.append(1) or classifier)
    load_shapes_classifier(tmp_path)
    assert trained == [1]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["version"] == CLASSIFIER_VERSION


# --- the Frechet distance ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_real_renders_score_near_the_real_baseline(classifier, size):
    images, _ = shapes_tensors("validation", 1000, size)             # other scenes than the baseline's test split
    result = shapes_frechet(images)
    assert result["n"] == result["n_reference"] == 1000
    assert 0 < result["real_frechet"] < 10
    assert 1 / 1.5 < result["frechet_ratio"] < 1.5, result


def test_the_baseline_is_test_scenes_against_train_scenes(classifier):
    images, _ = shapes_tensors("test", MIN_IMAGES, 32)
    result = shapes_frechet(images)
    assert result["frechet"] == result["real_frechet"] > 0
    assert result["frechet_ratio"] == 1.0


def test_n_reference_sets_the_number_of_train_scenes(classifier):
    images, _ = shapes_tensors("validation", 200, 32)
    default, more = shapes_frechet(images), shapes_frechet(images, n_reference=400)
    assert (default["n"], default["n_reference"], more["n"], more["n_reference"]) == (200, 200, 200, 400)
    assert more["real_frechet"] < default["real_frechet"]            # more reference samples, less upward bias


@pytest.mark.parametrize("kind", ["blank", "noise", "gray"])
def test_broken_images_score_at_least_5x_the_real_baseline(classifier, kind):
    real, _ = shapes_tensors("validation", 500, 32)                   # (500, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    images = {"blank": torch.full_like(real, -1.0),
              "noise": torch.rand(real.shape, generator=generator) * 2 - 1,
              "gray": to_gray(real)}[kind]
    result = shapes_frechet(images)
    assert result["frechet"] >= 5 * result["real_frechet"], result


def test_uint8_pixels_and_float_images_are_the_same_input():
    pixels = np.stack([make_example("test", i, 48)["image"] for i in range(4)])   # (4, 48, 48, 3) uint8
    expected, _ = shapes_tensors("test", 4, 48)                                   # (4, 3, 48, 48)
    assert torch.equal(as_shapes_images(pixels), expected)
    assert torch.equal(as_shapes_images(torch.from_numpy(pixels)), expected)


# --- bad input ---------------------------------------------------------------------------------------------------

GOOD = torch.zeros(MIN_IMAGES, 3, 32, 32)


@pytest.mark.parametrize("images, n_reference, fix", [
    (GOOD[:, :, 0], None, r"\(N, 3, S, S\)"),                                     # no width axis
    (GOOD.permute(0, 2, 3, 1), None, r"images\.permute\(0, 3, 1, 2\)"),          # float, channels-last
    (GOOD[:, :1], None, r"RGB"),                                                  # grayscale
    (GOOD[:, :, :, :30], None, r"center-crop"),                                   # not square
    (torch.zeros(MIN_IMAGES, 3, 16, 16), None, r"32\.\.256.*interpolate"),        # too small
    (torch.zeros(MIN_IMAGES, 3, 512, 512), None, r"32\.\.256.*interpolate"),      # too large
    (GOOD[:0], None, r"no images"),
    (GOOD[:MIN_IMAGES - 1], None, rf"at least {MIN_IMAGES}.*generate more"),
    (GOOD, MIN_IMAGES - 1, rf"n_reference must be an integer >= {MIN_IMAGES}"),
    (GOOD + 127, None, r"to_model_range"),                                        # 0..255 floats
    (torch.full_like(GOOD, float("nan")), None, r"NaN"),
    (GOOD.to(torch.int64), None, r"torch\.uint8"),
    (torch.zeros(MIN_IMAGES, 3, 32, 32, dtype=torch.uint8), None, r"images\.permute\(0, 2, 3, 1\)"),
    ([np.zeros((32, 32, 3), np.uint8)] * MIN_IMAGES, None, r"numpy\.stack"),
])
def test_bad_input_raises_a_one_line_error_naming_the_fix(images, n_reference, fix):
    with pytest.raises(ValueError, match=fix) as error:
        shapes_frechet(images, n_reference=n_reference, classifier=ShapesAttributeClassifier())
    assert "\n" not in str(error.value)
