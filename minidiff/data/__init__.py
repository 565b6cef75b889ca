"""Data: the digits scikit-learn ships, 2D toys, the Shapes world, any Hugging Face image dataset, and tokenizers.

Never downloads at test time."""
from minidiff.data.digits import digits_dataset, digits_tensors
from minidiff.data.images import from_model_range, load_image_dataset, to_model_range
from minidiff.data.shapes_dataset import build_shapes, make_example, shapes_scenes, shapes_split, shapes_tensors
from minidiff.data.tokenizer import BPETokenizer
from minidiff.data.toy2d import DISTRIBUTIONS, sample_2d, toy2d_dataset

__all__ = ["BPETokenizer", "DISTRIBUTIONS", "build_shapes", "digits_dataset", "digits_tensors", "from_model_range",
           "load_image_dataset", "make_example", "sample_2d", "shapes_scenes", "shapes_split", "shapes_tensors",
           "to_model_range", "toy2d_dataset"]
