"""Judges: quality metrics for generated digits and 2D point clouds, each reported next to a real-data baseline."""
from minidiff.eval.digits import (
    DigitClassifier,
    digit_metrics,
    features,
    frechet_distance,
    frechet_distance_gaussians,
    load_digit_classifier,
    train_digit_classifier,
)
from minidiff.eval.toy2d import sliced_wasserstein, toy2d_metrics

__all__ = ["DigitClassifier", "digit_metrics", "features", "frechet_distance", "frechet_distance_gaussians",
           "load_digit_classifier", "sliced_wasserstein", "toy2d_metrics", "train_digit_classifier"]
