"""Load a dataset folder and its split, and build the tensors and loaders a model trains on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stepbystep.data.preprocessing import Preprocessing
from stepbystep.data.splits import read_split
from stepbystep.data.tables import read_info


@dataclass
class SplitData:
    """Raw features and targets of one dataset, divided by a split."""

    info: dict[str, Any]
    train_features: np.ndarray
    train_targets: np.ndarray
    val_features: np.ndarray
    val_targets: np.ndarray

    @property
    def kind(self) -> str:
        return self.info["kind"]


def read_dataset(folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return ``(features, targets, info)`` of a table or an image folder."""
    info = read_info(folder)
    if info["kind"] == "images":
        from stepbystep.data.images import read_image_folder

        return read_image_folder(folder)
    from stepbystep.data.tables import read_table

    return read_table(folder)


def load_split_data(folder: Path, split_file: Path) -> SplitData:
    """Read a dataset and select its training and validation rows, in the split's order."""
    features, targets, info = read_dataset(folder)
    split = read_split(split_file)
    train = np.asarray(split["train"], dtype=np.int64)
    val = np.asarray(split["val"], dtype=np.int64)
    return SplitData(info, features[train], targets[train], features[val], targets[val])


def target_tensor(targets: np.ndarray) -> torch.Tensor:
    """Return targets as float32 of shape (N, 1), as losses for one output expect."""
    return torch.as_tensor(targets.reshape(-1, 1)).float()


def make_loaders(
    data: SplitData,
    preprocessing: Preprocessing,
    batch_size: int | None,
    sampler: str = "shuffle",
    horizontal_flip: float = 0.0,
) -> tuple[Any, Any]:
    """Return the training and validation loaders of ``data``.

    ``batch_size=None`` puts the whole split in one batch. ``sampler="balanced"``
    draws with :func:`make_balanced_sampler` instead of shuffling. A horizontal
    flip applies to training images only, with one random draw per image.
    """
    from stepbystep.data.samplers import make_balanced_sampler
    from stepbystep.training.feeding import BatchedLoader, RandomHorizontalFlip, TransformedTensorDataset

    x_train = preprocessing.transform(data.train_features)
    y_train = target_tensor(data.train_targets)
    x_val = preprocessing.transform(data.val_features)
    y_val = target_tensor(data.val_targets)

    transform = None
    if horizontal_flip > 0:
        # Flipping commutes with the elementwise normalization already applied,
        # so the result equals flipping first and normalizing after. The flip
        # draws as torchvision's RandomHorizontalFlip does, without importing torchvision.
        transform = RandomHorizontalFlip(p=horizontal_flip)

    train_dataset = TransformedTensorDataset(x_train, y_train, transform=transform)
    val_dataset = TransformedTensorDataset(x_val, y_val)
    train_batch = batch_size or len(train_dataset)
    val_batch = batch_size or len(val_dataset)

    if sampler == "balanced":
        train_loader = BatchedLoader(train_dataset, batch_size=train_batch, sampler=make_balanced_sampler(y_train))
    else:
        train_loader = BatchedLoader(train_dataset, batch_size=train_batch, shuffle=True)
    val_loader = BatchedLoader(val_dataset, batch_size=val_batch)
    return train_loader, val_loader
