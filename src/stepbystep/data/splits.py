"""Index-based splits: which rows of a dataset train the model and which validate it.

Splits are stored as JSON lists of row indices, in the order the splitting
method returns them. That order matters: a shuffled loader draws positions in
the training list, so the same indices in another order train another model.
"""

from __future__ import annotations

import json
import re
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


# Bytes of a split file read and parsed at a time by read_split_indices.
_PARSE_CHUNK = 1 << 20


def read_split_indices(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the training and validation indices of a split file as two int64 arrays.

    Parsed as JSON, the lists of a large dataset become millions of Python
    ints of about 36 bytes each, more than the data they index. This reads
    the file as :func:`write_split` lays it out, with the ``train`` and
    ``val`` lists last. Each list is parsed into its array a chunk of text at
    a time, and the fields before the lists must be valid JSON. A file in
    any other layout is read with :func:`read_split`.
    """
    from stepbystep.data.layout import require_file

    path = Path(path)
    require_file(path, "split", "run `dvc repro split`")
    try:
        with open(path, "rb") as handle:
            return _IndexListReader(handle, path.stat().st_size).read_split()
    except OSError as error:
        raise DataError(f"cannot read split {path}: {error.strerror}. Fix: run `dvc repro split`") from None
    except ValueError:
        pass
    split = read_split(path)
    lists = [split.get(key) if isinstance(split, dict) else None for key in ("train", "val")]
    valid = all(
        isinstance(values, list) and all(type(value) is int and 0 <= value < 2**63 for value in values)
        for values in lists
    )
    if not valid:
        raise DataError(
            f"{path} does not contain lists of row indices (integers from 0) under 'train' and 'val'. "
            "Fix: run `dvc repro split`"
        )
    return np.asarray(lists[0], dtype=np.int64).reshape(-1), np.asarray(lists[1], dtype=np.int64).reshape(-1)


class _IndexListReader:
    """Reads a split file front to back in chunks; raises ``ValueError`` where the layout is not write_split's."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle = handle
        self.size = size
        self.buffer = b""

    def _fill(self, size: int) -> bool:
        """Read until the buffer contains ``size`` bytes or the file ends; return whether anything was read."""
        grew = False
        while len(self.buffer) < size:
            chunk = self.handle.read(_PARSE_CHUNK)
            if not chunk:
                break
            self.buffer += chunk
            grew = True
        return grew

    def _expect(self, pattern: bytes) -> re.Match[bytes]:
        self._fill(4096)
        match = re.match(pattern, self.buffer)
        if match is None:
            raise ValueError(f"expected {pattern!r}")
        self.buffer = self.buffer[match.end() :]
        return match

    def read_split(self) -> tuple[np.ndarray, np.ndarray]:
        self._fill(_PARSE_CHUNK)
        start = re.search(rb'"train"\s*:\s*\[', self.buffer)
        if start is None:
            raise ValueError("no train list")
        # The fields before the lists, closed as an object, must be valid JSON.
        fields = json.loads(self.buffer[: start.start()] + b'"train": [], "val": []}')
        n_samples = fields.get("n_samples") if isinstance(fields, dict) else None
        # Each index takes at least two bytes, a digit and a comma, so a larger count is wrong.
        if type(n_samples) is not int or not 0 <= n_samples <= self.size // 2:
            raise ValueError("no sample count, or one the file cannot contain")
        # Both lists go into one array of n_samples indices, with no copy to join parts.
        indices = np.empty(n_samples, dtype=np.int64)
        self.buffer = self.buffer[start.end() :]
        n_train = self._int_list(indices, 0)
        self._expect(rb'\s*,\s*"val"\s*:\s*\[')
        n_total = self._int_list(indices, n_train)
        self._expect(rb"\s*\}\s*")
        if self.buffer or self.handle.read(1) or n_total != n_samples:
            raise ValueError("text after the object, or a sample count that differs")
        return indices[:n_train], indices[n_train:]

    def _int_list(self, out: np.ndarray, position: int) -> int:
        """Parse integers into ``out`` from ``position`` up to the closing bracket, which is consumed too.

        Returns the position after the last integer.
        """
        after_comma = False
        while True:
            end = self.buffer.find(b"]")
            if end >= 0:
                body, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
                if body.strip():
                    position = _parse_ints(body, out, position)
                elif after_comma:
                    raise ValueError("a comma before the closing bracket")
                return position
            comma = self.buffer.rfind(b",")
            if comma >= 0:
                position = _parse_ints(self.buffer[:comma], out, position)
                self.buffer = self.buffer[comma + 1 :]
                after_comma = True
            if not self._fill(len(self.buffer) + _PARSE_CHUNK):
                raise ValueError("list not closed")


def _parse_ints(text: bytes, out: np.ndarray, position: int) -> int:
    """Parse comma-separated integers into ``out`` from ``position``; return the position after them."""
    values = np.fromstring(text, dtype=np.int64, sep=",")
    stop = position + len(values)
    if len(values) != text.count(b",") + 1 or stop > len(out):
        raise ValueError("not a list of integers, or more than n_samples of them")
    # np.fromstring clamps numbers beyond int64 to its limits; the JSON reader then rejects them.
    if len(values) and (values.max() == np.iinfo(np.int64).max or values.min() == np.iinfo(np.int64).min):
        raise ValueError("an index beyond int64")
    out[position:stop] = values
    return stop


def dataset_size_and_labels(folder: Path) -> tuple[int, np.ndarray | None]:
    """Return the row count of a dataset folder and its labels, or ``None`` for regression."""
    from stepbystep.data.images import read_manifest_labels
    from stepbystep.data.tables import read_info, read_table

    info = read_info(folder)
    if info["kind"] == "images":
        labels = read_manifest_labels(folder)
        return len(labels), labels
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
