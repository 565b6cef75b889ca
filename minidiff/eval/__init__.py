"""Judges: quality metrics for generated digits, Shapes scenes and 2D point clouds, each next to a real-data
baseline. What they share (the classifier cache, the Frechet distance, the pixel check) is minidiff.eval.common."""
from minidiff.eval.common import frechet_distance, frechet_distance_gaussians
from minidiff.eval.digits import DigitClassifier, digit_metrics, features, load_digit_classifier, train_digit_classifier
from minidiff.eval.shapes_fd import (
    ShapesAttributeClassifier,
    load_shapes_classifier,
    shapes_features,
    shapes_frechet,
    train_shapes_classifier,
)
from minidiff.eval.toy2d import sliced_wasserstein, toy2d_metrics

__all__ = ["DigitClassifier", "ShapesAttributeClassifier", "digit_metrics", "features", "frechet_distance",
           "frechet_distance_gaussians", "load_digit_classifier", "load_shapes_classifier", "shapes_features",
           "shapes_frechet", "sliced_wasserstein", "toy2d_metrics", "train_digit_classifier",
           "train_shapes_classifier"]
