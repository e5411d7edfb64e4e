"""Load a dataset folder and its split, and build the tensors and loaders a model trains on."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stepbystep.data.preprocessing import Preprocessing, chunk_rows
from stepbystep.data.splits import read_split_indices
from stepbystep.data.tables import read_info
from stepbystep.errors import DataError


class SplitData:
    """Raw features and targets of one dataset, with the rows of its training and validation sets.

    ``features`` and ``targets`` hold every row; for an imported image folder
    ``features`` is a read-only memory map of its cache. ``train_index`` and
    ``val_index`` list the rows of each set in the split's order. The
    ``train_*`` and ``val_*`` properties copy their rows out on first use and
    keep the copy. The training path reads through the indices instead, so
    it never copies the images whole.
    """

    def __init__(
        self,
        info: dict[str, Any],
        features: np.ndarray,
        targets: np.ndarray,
        train_index: np.ndarray,
        val_index: np.ndarray,
    ) -> None:
        self.info = info
        self.features = features
        self.targets = targets
        self.train_index = train_index
        self.val_index = val_index

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample's raw features: ``(n_features,)`` or ``(channels, height, width)``."""
        return tuple(self.features.shape[1:])

    @functools.cached_property
    def train_features(self) -> np.ndarray:
        return self.features[self.train_index]

    @functools.cached_property
    def val_features(self) -> np.ndarray:
        return self.features[self.val_index]

    @functools.cached_property
    def train_targets(self) -> np.ndarray:
        return self.targets[self.train_index]

    @functools.cached_property
    def val_targets(self) -> np.ndarray:
        return self.targets[self.val_index]

    def update_hash(self, digest: Any) -> None:
        """Feed the data and the split into ``digest`` (a ``hashlib`` object), a chunk at a time."""
        step = chunk_rows(self.features)
        for start in range(0, len(self.features), step):
            digest.update(np.ascontiguousarray(self.features[start : start + step]).tobytes())
        for array in (self.targets, self.train_index, self.val_index):
            digest.update(np.ascontiguousarray(array).tobytes())


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
    # The split first: its text is freed before the data is read.
    train, val = read_split_indices(split_file)
    features, targets, info = read_dataset(folder)
    check_split(split_file, folder, len(features), train, val)
    return SplitData(info, features, targets, train, val)


def check_split(split_file: Path, folder: Path, n_rows: int, train: np.ndarray, val: np.ndarray) -> None:
    """Raise :class:`DataError` unless ``train`` and ``val`` are non-empty sets of distinct rows of the data."""
    fix = "Fix: run `dvc repro` so the split matches the data"
    for name, index in (("train", train), ("val", val)):
        if len(index) == 0:
            raise DataError(f"{split_file}: the {name} list is empty, but training needs rows in both sets. {fix}")
        if index.min() < 0 or index.max() >= n_rows:
            raise DataError(
                f"{split_file}: the {name} rows run from {index.min()} to {index.max()}, but {folder} has "
                f"{n_rows} rows. {fix}"
            )
    # One byte per row of the data marks the rows seen so far.
    seen = np.zeros(n_rows, dtype=bool)
    expected = 0
    for name, index in (("train", train), ("val", val)):
        already = seen[index]
        seen[index] = True
        expected += len(index)
        if already.any() or int(np.count_nonzero(seen)) != expected:
            row = int(index[already][0]) if already.any() else _first_repeat(index)
            raise DataError(
                f"{split_file}: row {row} appears more than once (in the {name} list, or in both lists), but "
                f"a split lists each row once, in one of its two sets. {fix}"
            )


def _first_repeat(index: np.ndarray) -> int:
    values, counts = np.unique(index, return_counts=True)
    return int(values[counts > 1][0])


def target_tensor(targets: np.ndarray) -> torch.Tensor:
    """Return targets as float32 of shape (N, 1), as losses for one output expect."""
    return torch.as_tensor(targets.reshape(-1, 1)).float()


class PreprocessedRows(torch.utils.data.Dataset):
    """Rows of raw features, preprocessed one batch at a time when they are fetched.

    Sample ``i`` is ``preprocessing.transform(features[rows[i]])`` with target
    ``targets[i]``. ``get_batch`` gathers a whole batch from ``features``, a
    memory map or an array, so only the batch is ever in float form: the
    images of a large folder never take 4 or 8 bytes per pixel at once. The
    values equal those of transforming all rows up front, because the
    preprocessing works on each value or row alone. ``transform``, such as
    :class:`RandomHorizontalFlip`, then runs on the batch with its
    ``apply_batch`` method, or on each sample in order without one.
    """

    def __init__(
        self,
        features: np.ndarray,
        rows: np.ndarray,
        targets: torch.Tensor,
        preprocessing: Preprocessing,
        transform: Any = None,
    ) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"rows and targets must have the same length, got {len(rows)} and {len(targets)}")
        # A plain view of a memory map skips np.memmap's indexing in Python on every batch.
        self.features = np.asarray(features)
        self.rows = rows
        self.targets = targets
        self.preprocessing = preprocessing
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], y[0]

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the preprocessed features and the targets at ``indices`` (a 1-D int64 tensor)."""
        positions = indices.numpy()
        x = self.preprocessing.transform(self.features, self.rows[positions])
        if self.transform is not None:
            apply_batch = getattr(self.transform, "apply_batch", None)
            x = apply_batch(x) if apply_batch is not None else torch.stack([self.transform(sample) for sample in x])
        return x, self.targets[indices]


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

    Table rows are preprocessed once into float32 tensors. Images stay raw
    uint8 (memory-mapped for an imported folder) and each batch is
    preprocessed when it is fetched, so memory stays below the size of the
    pixels. Both give the same batches, bit for bit, as preprocessing every
    row first would.
    """
    from stepbystep.data.samplers import make_balanced_sampler
    from stepbystep.training.feeding import BatchedLoader, RandomHorizontalFlip, TransformedTensorDataset

    y_train = target_tensor(data.targets[data.train_index])
    y_val = target_tensor(data.targets[data.val_index])

    transform = None
    if horizontal_flip > 0:
        # Flipping commutes with the elementwise normalization, so the result
        # equals flipping first and normalizing after. The flip draws as
        # torchvision's RandomHorizontalFlip does, without importing torchvision.
        transform = RandomHorizontalFlip(p=horizontal_flip)

    if data.kind == "images":
        train_dataset: Any = PreprocessedRows(data.features, data.train_index, y_train, preprocessing, transform)
        val_dataset: Any = PreprocessedRows(data.features, data.val_index, y_val, preprocessing)
    else:
        x_train = preprocessing.transform(data.features, data.train_index)
        x_val = preprocessing.transform(data.features, data.val_index)
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
