"""The judges: digit classifier, its cache, Frechet distance, digit metrics, sliced Wasserstein, 2D metrics."""
import math

import numpy as np
import pytest
import torch

from minidiff.data import digits_tensors, sample_2d
from minidiff.eval import (
    DigitClassifier,
    digit_metrics,
    features,
    frechet_distance,
    frechet_distance_gaussians,
    load_digit_classifier,
    sliced_wasserstein,
    toy2d_metrics,
    train_digit_classifier,
)
from minidiff.eval import digits as eval_digits
from minidiff.eval.common import cache_path, save_cached
from minidiff.eval.digits import CLASSIFIER_VERSION, coverage
from minidiff.eval.toy2d import quantiles


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def classifier(cache_dir):
    """Trained once per test session (~5 s) into the session's $MINIDIFF_CACHE (tests/conftest.py), which
    `minidiff eval` in tests/test_cli.py then finds, and the other way round."""
    return load_digit_classifier(cache_dir)


# --- the classifier ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 16, 32])
def test_classifier_held_out_accuracy_at_least_097(classifier, size):
    images, labels = digits_tensors("test", size)                  # (297, 1, S, S)
    with torch.no_grad():
        accuracy = (classifier(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.97


def test_classifier_shapes_and_size():
    model = DigitClassifier()
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000
    for size in (8, 12, 32):
        x = torch.zeros(3, 1, size, size)
        assert model(x).shape == (3, 10)
        assert features(model, x).shape == (3, 64)


def test_training_is_deterministic():
    a, b = train_digit_classifier(epochs=1), train_digit_classifier(epochs=1)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# --- the cache ---------------------------------------------------------------------------------------------------

def _no_training(*args, **kwargs):
    pytest.fail("the classifier was retrained although a valid cache file exists")


def test_cache_round_trip_loads_without_retraining(classifier, cache_dir, monkeypatch):
    assert cache_path(cache_dir, CLASSIFIER_VERSION).is_file()
    assert not list(cache_dir.glob("*.tmp")), "the atomic write left a temporary file behind"
    monkeypatch.setattr(eval_digits, "train_digit_classifier", _no_training)
    again = load_digit_classifier(cache_dir)
    x = digits_tensors("test", 16)[0][:32]
    with torch.no_grad():
        assert torch.equal(again(x), classifier(x))


def test_cache_folder_from_environment(classifier, cache_dir, monkeypatch):
    monkeypatch.setenv("MINIDIFF_CACHE", str(cache_dir))
    assert cache_path(None, CLASSIFIER_VERSION) == cache_path(cache_dir, CLASSIFIER_VERSION)
    monkeypatch.setattr(eval_digits, "train_digit_classifier", _no_training)
    load_digit_classifier()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "non-finite weights"])
def test_corrupt_cache_is_retrained(classifier, cache_dir, tmp_path, monkeypatch, damage):
    good = cache_path(cache_dir, CLASSIFIER_VERSION).read_bytes()
    path = cache_path(tmp_path, CLASSIFIER_VERSION)
    if damage == "non-finite weights":                # a valid file of the right version, from a diverged run
        broken = DigitClassifier()
        with torch.no_grad():
            broken.head.bias.fill_(float("nan"))
        save_cached(broken, path, CLASSIFIER_VERSION)
    else:
        path.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"not a safetensors file")
    trained = []
    monkeypatch.setattr(eval_digits, "train_digit_classifier", lambda: trained.append(1) or classifier)
    load_digit_classifier(tmp_path)
    assert trained == [1]
    assert path.read_bytes() == good                 # rewritten with the (same) weights
    assert not list(tmp_path.glob("*.tmp"))


# --- the Frechet distance ----------------------------------------------------------------------------------------

def test_frechet_gaussians_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    var_a, var_b = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    # for diagonal covariances: FD = ||mu_a - mu_b||^2 + sum_i (sigma_a,i - sigma_b,i)^2
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance_gaussians(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-10)


def _samples_with_exact_moments(rng, n, mean, var):
    """n samples whose sample mean is exactly `mean` and unbiased sample covariance exactly diag(var)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T   # sample covariance = identity
    return mean + z * np.sqrt(var)


def test_frechet_distance_of_samples_matches_closed_form():
    rng = np.random.default_rng(1)
    mu_a, mu_b = np.zeros(5), np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 2.0, 1.0]), np.array([9.0, 1.0, 0.25, 0.5, 1.0])
    a = torch.from_numpy(_samples_with_exact_moments(rng, 400, mu_a, var_a))
    b = torch.from_numpy(_samples_with_exact_moments(rng, 300, mu_b, var_b))
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_matches_scipy_sqrtm_for_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    m_a, m_b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T + 0.1 * np.eye(6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)


# --- the digit metrics -------------------------------------------------------------------------------------------

def test_coverage_closed_form():
    uniform = torch.eye(10).repeat(5, 1)                       # 50 rows, each digit 5 times
    two_digits = torch.eye(10)[[0, 1] * 10]                    # 20 rows, digits 0 and 1 only
    assert coverage(uniform) == pytest.approx(1.0)
    assert coverage(two_digits) == pytest.approx(math.log(2) / math.log(10))
    assert coverage(torch.eye(10)[[3] * 7]) == pytest.approx(0.0)


@pytest.mark.parametrize("size", [16, 32])
def test_metrics_on_real_test_digits(classifier, size):
    m = digit_metrics(digits_tensors("test", size)[0], classifier)
    assert m["n"] == 297 and m["frechet_sample_size"] == 297
    assert m["real_recognizability"] > 0.9
    assert m["recognizability_ratio"] == pytest.approx(1.0, abs=0.02)
    assert m["frechet_ratio"] == pytest.approx(1.0, abs=0.02)
    assert m["coverage"] > 0.97


def test_metrics_on_noise(classifier):
    noise = torch.rand(594, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = digit_metrics(noise, classifier)
    assert m["n"] == 594 and m["frechet_sample_size"] == 297       # two chunks of the baseline's size
    assert m["recognizability"] < 0.3 and m["recognizability_ratio"] < 0.3
    assert m["frechet"] > 10 * m["real_frechet"]


def test_metrics_see_mode_collapse(classifier):
    images, labels = digits_tensors("test", 16)
    sevens = digit_metrics(images[labels == 7], classifier)       # a "model" that only draws sevens
    assert sevens["coverage"] < 0.1
    assert sevens["frechet_ratio"] > 3
    blank = digit_metrics(torch.full((300, 1, 16, 16), -1.0), classifier)   # confidently "recognized", yet:
    assert blank["coverage"] == 0.0
    assert blank["frechet_ratio"] > 10


@pytest.mark.parametrize("images, message", [
    (torch.zeros(4, 16, 16), "shape"),
    (torch.zeros(4, 3, 16, 16), "shape"),
    (torch.zeros(4, 1, 16, 12), "shape"),
    (torch.zeros(4, 1, 4, 4), "size"),
    (torch.zeros(0, 1, 16, 16), "no images"),
    (torch.full((4, 1, 16, 16), 255.0), r"\[-1, 1\]"),
    (torch.full((4, 1, 16, 16), float("nan")), "NaN"),
    (torch.zeros(4, 1, 16, 16, dtype=torch.uint8), "floating point"),
])
def test_bad_digit_images_raise(images, message):
    with pytest.raises(ValueError, match=message):
        digit_metrics(images, DigitClassifier())
    with pytest.raises(ValueError, match=message):
        features(DigitClassifier(), images)


def test_bad_features_raise():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(10, 4), torch.zeros(10, 5))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(10, 4))


# --- sliced Wasserstein and the 2D metrics -------------------------------------------------------------------------

def test_quantiles_interpolate_the_sorted_values():
    x = np.array([[0.0, 1.0, 2.0, 3.0]])                  # quantile function through ((j + 0.5) / 4, j)
    assert np.array_equal(quantiles(x, 4), x)
    assert np.allclose(quantiles(x, 2), [[0.5, 2.5]])      # levels 0.25, 0.75
    # 8 levels sit at fractional indices -0.25, 0.25, ..., 3.25, clamped at the ends
    assert np.allclose(quantiles(x, 8), [[0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]])


def test_sliced_wasserstein_identical_and_same_distribution():
    g = torch.Generator().manual_seed(0)
    a, b = sample_2d("two_moons", 1000, g), sample_2d("two_moons", 1000, g)
    assert sliced_wasserstein(a, a) == 0.0
    same = sliced_wasserstein(a, b)
    assert same < 0.1
    assert sliced_wasserstein(a, b + torch.tensor([1.0, 0.0])) > 5 * same
    assert sliced_wasserstein(a, b[:400]) < 0.1                           # unequal sizes


@pytest.mark.parametrize("shift", [(0.5, 0.0), (0.0, -1.2)])
def test_sliced_wasserstein_closed_form_for_a_shift(shift):
    # shifting by c along an axis moves every projection by c cos(phi) (or c sin(phi)):
    # SW_1 = |c| * mean_k |cos(phi_k)| -> |c| * 2 / pi for directions spread evenly over the half circle
    a = sample_2d("swiss_roll", 500, torch.Generator().manual_seed(1))
    c = abs(sum(shift))
    assert sliced_wasserstein(a, a + torch.tensor(shift)) == pytest.approx(c * 2 / math.pi, rel=1e-4)


def test_toy2d_metrics_true_samples_versus_noise():
    for name in ("swiss_roll", "two_moons", "eight_gaussians"):
        true = toy2d_metrics(sample_2d(name, 1000, torch.Generator().manual_seed(123)), name)
        noise = toy2d_metrics(torch.randn(1000, 2, generator=torch.Generator().manual_seed(7)), name)
        assert true["n"] == 1000 and true["real_sliced_wasserstein"] == noise["real_sliced_wasserstein"]
        assert true["sliced_wasserstein_ratio"] < 2
        assert noise["sliced_wasserstein_ratio"] > 3


@pytest.mark.parametrize("points, message", [
    (torch.zeros(10, 3), "shape"),
    (torch.zeros(10), "shape"),
    (torch.zeros(0, 2), "empty"),
    (torch.full((10, 2), float("inf")), "NaN or infinity"),
    (torch.zeros(10, 2, dtype=torch.long), "floating point"),
])
def test_bad_points_raise(points, message):
    with pytest.raises(ValueError, match=message):
        sliced_wasserstein(points, torch.zeros(10, 2))
    with pytest.raises(ValueError, match=message):
        toy2d_metrics(points, "two_moons")


def test_bad_toy2d_arguments_raise():
    with pytest.raises(ValueError, match="unknown 2D distribution"):
        toy2d_metrics(torch.zeros(10, 2), "spiral")
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(10, 2), num_projections=0)
