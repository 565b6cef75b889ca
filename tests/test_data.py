"""Data: the digits scikit-learn ships, 2D toys, and a Hugging Face dataset from a local folder (no network)."""
import numpy as np
import pytest
import torch

from minidiff.data import (DISTRIBUTIONS, digits_dataset, digits_tensors, from_model_range, load_image_dataset,
                           sample_2d, to_model_range, toy2d_dataset)


def test_digits_splits_are_fixed_and_disjoint():
    ds = digits_dataset()
    assert len(ds["train"]) == 1500 and len(ds["test"]) == 297
    train = {np.asarray(p).tobytes() for p in ds["train"]["pixels"]}
    test = [np.asarray(p).tobytes() for p in ds["test"]["pixels"]]
    # a handful of digits in sklearn's set are exact duplicates of each other; nearly none may straddle the split
    assert sum(t in train for t in test) <= 3
    assert sorted(set(ds["train"]["label"])) == list(range(10))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_tensors_range_and_shape(size):
    x, y = digits_tensors("test", size)
    assert x.shape == (297, 1, size, size) and y.shape == (297,)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # background is black, mapped to -1
    assert torch.equal(digits_tensors("test", size)[0], x)  # deterministic


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_tensors_are_the_datasets_rows(split):
    """digits_tensors skips building a `datasets.Dataset` but serves exactly its rows, in its order."""
    rows = digits_dataset()[split].with_format("numpy")
    pixels = torch.from_numpy(np.asarray(rows["pixels"], dtype=np.float32))[:, None]      # (N, 1, 8, 8) in [0, 1]
    images, labels = digits_tensors(split, 8)
    assert torch.equal(images, to_model_range(pixels))
    assert torch.equal(labels, torch.from_numpy(np.asarray(rows["label"], dtype=np.int64)))


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="unknown digits split"):
        digits_tensors("validation")
    with pytest.raises(ValueError, match="at least 8"):
        digits_tensors("train", 4)


def test_pixel_range_round_trip():
    x = torch.rand(5, 3, 4, 4)
    assert torch.allclose(from_model_range(to_model_range(x)), x)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_2d_toys(name):
    a = sample_2d(name, 4000, torch.Generator().manual_seed(0))
    b = sample_2d(name, 4000, torch.Generator().manual_seed(0))
    assert a.shape == (4000, 2) and torch.equal(a, b)
    assert 0.5 < a.std(0).min() and a.std(0).max() < 1.6 and a.mean(0).abs().max() < 0.4
    ds = toy2d_dataset(name, 100, seed=3)
    assert ds.column_names == ["x", "y"] and len(ds) == 100


def test_unknown_2d_distribution():
    with pytest.raises(ValueError, match="unknown 2D distribution"):
        sample_2d("spiral", 10)


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_no_2d_points_is_a_clear_error(n):
    with pytest.raises(ValueError, match="n must be a whole number of at least 1"):
        sample_2d("two_moons", n)
    with pytest.raises(ValueError, match="n must be a whole number of at least 1"):
        toy2d_dataset("two_moons", n)


def test_hf_image_dataset_from_local_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(4)]
    images[0] = Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8))
    datasets.Dataset.from_dict({"img": images}).save_to_disk(str(tmp_path / "ds"))
    x = load_image_dataset(str(tmp_path / "ds"), image_column="img", size=16, channels=3)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0], torch.ones(3, 16, 16))  # white maps to +1: the visible [-1, 1] step
    gray = load_image_dataset(str(tmp_path / "ds"), image_column="img", size=8, channels=1, limit=2)
    assert gray.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="no column 'image'"):
        load_image_dataset(str(tmp_path / "ds"))
    for kwargs, message in [({"channels": 4}, "channels must be 1"), ({"size": 0}, "size must be"),
                            ({"limit": 0}, "limit must be at least 1")]:
        with pytest.raises(ValueError, match=message):
            load_image_dataset(str(tmp_path / "ds"), image_column="img", **kwargs)
