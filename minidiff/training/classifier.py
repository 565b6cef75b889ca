"""Fitting a small classifier: the one loop behind the judges' networks and the autoencoder's perceptual net.

The digit and Shapes judges (minidiff.eval) and the perceptual distance of the autoencoder
(minidiff.training.autoencoder) each need a tiny CNN trained on labelled real images, deterministically, in
seconds on a CPU. They share this loop: Adam with a one-cycle learning-rate schedule, the data shuffled by a
seeded generator, an optional augmentation per batch.

It lives in training (rank 4) so that both training and eval (rank 5) can use it: training must not import eval.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn


def fit_classifier(make_model: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor,
                   loss_fn: Callable, epochs: int, batch_size: int, lr: float, seed: int,
                   augment: Callable | None = None) -> nn.Module:
    """Train make_model() on (images, labels) with Adam and a one-cycle schedule, on one CPU thread; eval mode.

    images: (N, ...) inputs; labels: (N, ...) targets, whatever loss_fn(logits, labels) expects (class indices
    for cross-entropy, (N, num_labels) floats for binary cross-entropy).
    augment(x, generator) -> x, if given, transforms each batch.

    Deterministic for a fixed seed: one thread (the operations are tiny, so one thread is also the fastest,
    by far on a busy machine); the global RNG and thread count are restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make_model()
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = math.ceil(len(images) / batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                batch = order[start:start + batch_size]
                x = images[batch] if augment is None else augment(images[batch], generator)
                loss = loss_fn(model(x), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
