"""Index-based splits: which rows of a dataset train the model and which validate it.

Splits are stored as JSON lists of row indices, in the order the splitting
method returns them. That order matters: a shuffled loader draws positions in
the training list, so the same indices in another order train another model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stepbystep import files
from stepbystep.errors import DataError, ParamsError
from stepbystep.params import SplitParams


def split_indices(
    n_samples: int, params: SplitParams, labels: np.ndarray | None = None, name: str = "dataset"
) -> tuple[list[int], list[int]]:
    """Return ``(train, val)`` index lists for ``n_samples`` rows.

    ``random_split`` permutes the indices with a torch generator seeded with
    ``params.seed``, exactly as ``torch.manual_seed(seed)`` followed by
    ``random_split(arange(n), [train_fraction, val_fraction])`` does.
    ``train_test_split`` uses scikit-learn with ``test_size=val_fraction`` and
    ``random_state=seed``, stratified by ``labels`` when ``params.stratify``.
    """
    key = f"split.{name}"
    if params.method == "random_split":
        import torch
        from torch.utils.data import random_split

        generator = torch.Generator().manual_seed(params.seed)
        subsets = random_split(range(n_samples), [params.train_fraction, params.val_fraction], generator=generator)
        train, val = list(subsets[0].indices), list(subsets[1].indices)
    else:
        from sklearn.model_selection import train_test_split

        stratify = None
        if params.stratify:
            if labels is None:
                raise ParamsError(
                    f"{key}.stratify = true, but {name} is a regression dataset without classes. "
                    f"Fix: set {key}.stratify to false"
                )
            counts = np.bincount(labels)
            if counts[counts > 0].min() < 2:
                raise ParamsError(
                    f"{key}.stratify = true, but a class of {name} has fewer than 2 samples. "
                    f"Fix: set {key}.stratify to false"
                )
            stratify = labels
        try:
            train_array, val_array = train_test_split(
                np.arange(n_samples), test_size=params.val_fraction, random_state=params.seed, stratify=stratify
            )
        except ValueError as error:
            raise ParamsError(f"{key}: cannot split {n_samples} rows: {error}. Fix: change {key}.val_fraction") from None
        train, val = train_array.tolist(), val_array.tolist()

    if not train or not val:
        empty = "training" if not train else "validation"
        raise ParamsError(
            f"{key}.val_fraction = {params.val_fraction} leaves the {empty} set of {name} empty "
            f"({n_samples} rows give {len(train)} training and {len(val)} validation rows). "
            f"Fix: choose fractions that give both sets at least one row, or add rows"
        )
    return train, val


def write_split(path: Path, name: str, params: SplitParams, train: list[int], val: list[int]) -> None:
    """Write a split file: the method, its seed, and the training and validation indices."""
    files.write_json(
        path,
        {
            "dataset": name,
            "method": params.method,
            "seed": params.seed,
            "stratify": params.stratify,
            "n_samples": len(train) + len(val),
            "train": train,
            "val": val,
        },
    )


def read_split(path: Path) -> dict[str, Any]:
    """Read a split file written by :func:`write_split`."""
    try:
        split = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split not found: {path}. Fix: run `dvc repro split`") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}). Fix: run `dvc repro split`") from None
    return split


def dataset_size_and_labels(folder: Path) -> tuple[int, np.ndarray | None]:
    """Return the row count of a dataset folder and its labels, or ``None`` for regression."""
    from stepbystep.data.images import read_manifest
    from stepbystep.data.tables import read_info, read_table

    info = read_info(folder)
    if info["kind"] == "images":
        rows = read_manifest(folder)
        return len(rows), np.array([int(row["label"]) for row in rows], dtype=np.int64)
    _, targets, info = read_table(folder)
    return len(targets), (targets if info["task"] != "regression" else None)


def split_datasets(params: dict[str, SplitParams], data_dir: Path, splits_dir: Path) -> None:
    """Split every dataset named in ``params`` and write ``splits_dir/<name>.json`` files.

    All splits are validated and computed before the first file is written, so
    an invalid split leaves no output behind. Split files of datasets not in
    ``params`` stay as they are, because the split stages of imported datasets
    write into the same folder.
    """
    results = {}
    for name, split_params in params.items():
        folder = data_dir / name
        if not folder.is_dir():
            raise DataError(
                f"split.{name}: dataset folder {folder} not found. "
                f"Fix: remove split.{name} or create the dataset with a data stage"
            )
        n_samples, labels = dataset_size_and_labels(folder)
        results[name] = split_indices(n_samples, split_params, labels, name)

    for name, (train, val) in results.items():
        write_split(splits_dir / f"{name}.json", name, params[name], train, val)
