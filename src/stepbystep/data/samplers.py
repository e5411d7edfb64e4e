"""Samplers for imbalanced classes."""

from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler


def make_balanced_sampler(labels: torch.Tensor, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Return a sampler that draws every class equally often on average.

    Each sample's weight is ``1 / count(its class)``; the sampler draws
    ``len(labels)`` samples with replacement from its own generator, which
    seeding and checkpoints find at ``loader.sampler.generator``.
    """
    labels = labels.reshape(-1).long()
    _, counts = labels.unique(return_counts=True)
    class_weights = 1.0 / counts.float()
    sample_weights = class_weights[labels]
    return WeightedRandomSampler(
        weights=sample_weights,
        num_samples=len(sample_weights),
        replacement=True,
        generator=generator if generator is not None else torch.Generator(),
    )
