"""Data: the digits scikit-learn ships, 2D toys, and any Hugging Face image dataset. Never downloads at test time."""
from minidiff.data.digits import digits_dataset, digits_tensors
from minidiff.data.images import from_model_range, load_image_dataset, to_model_range
from minidiff.data.toy2d import DISTRIBUTIONS, sample_2d, toy2d_dataset

__all__ = ["DISTRIBUTIONS", "digits_dataset", "digits_tensors", "from_model_range", "load_image_dataset",
           "sample_2d", "to_model_range", "toy2d_dataset"]
