"""Tabular datasets on disk: a folder with ``data.csv`` and ``dataset.json``.

``dataset.json`` describes the table: its task (``regression`` or
``binary``), the feature columns, the target column and, for classification,
the classes and which one is positive. Floats are written with ``repr``, the
shortest text that reads back to the same float64, so a round trip is exact.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stepbystep import files
from stepbystep.errors import DataError

TABLE_FILE = "data.csv"
INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class TableInfo:
    """Description of a tabular dataset, stored as ``dataset.json`` next to its table."""

    name: str
    task: Literal["regression", "binary"]
    features: list[str]
    target: str
    classes: list[str] = field(default_factory=list)
    positive_class: str | None = None
    true_coefficients: dict[str, Any] | None = None
    source: str | None = None  # the imported CSV file, relative to the project root
    kind: Literal["table"] = "table"


def _format_cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def write_table(folder: Path, columns: dict[str, np.ndarray], info: TableInfo) -> None:
    """Write ``columns`` as ``folder/data.csv`` and ``info`` as ``folder/dataset.json``, atomically."""
    names = list(columns)
    rows = zip(*(columns[name].tolist() for name in names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_format_cell(value) for value in row])

    with files.atomic_directory(folder) as staging:
        (staging / TABLE_FILE).write_text(buffer.getvalue(), encoding="utf-8")
        info_data = {key: value for key, value in asdict(info).items() if value not in (None, [])}
        (staging / INFO_FILE).write_text(json.dumps(info_data, indent=2, sort_keys=True) + "\n")


def read_info(folder: Path) -> dict[str, Any]:
    """Read ``dataset.json`` of a dataset folder (a table or an image folder)."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"dataset description not found: {path}. Fix: run `dvc repro` so the data stages write it"
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}). Fix: rebuild it with `dvc repro`") from None


def read_table(folder: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return ``(features, targets, info)`` of a tabular dataset folder.

    Features are float64 of shape (N, n_features). Targets are float64 of shape
    (N,) for regression and int64 labels (1 for the positive class) for binary
    classification. Numbers are parsed straight into float64, a chunk of rows
    at a time. pandas 3 parses them exactly: each text reads back to the
    float64 that ``repr`` wrote, which the data tests check.
    """
    import pandas as pd

    from stepbystep.data.layout import require_file

    folder = Path(folder)
    info = read_info(folder)
    path = folder / TABLE_FILE
    fix = "rebuild the dataset with `dvc repro`"
    require_file(path, "table", "run `dvc repro` so the data stages write it")
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (OSError, ValueError) as error:  # pandas' EmptyDataError is a ValueError
        raise DataError(f"cannot read the header of table {path}: {error}. Fix: {fix}") from None

    columns = [*info["features"], info["target"]]
    missing = [name for name in columns if name not in header]
    if missing:
        raise DataError(
            f"{path}: column {missing[0]!r} not found (columns: {', '.join(header)}). "
            "Fix: correct the column names in the dataset description"
        )

    regression = info["task"] == "regression"
    numeric = columns if regression else info["features"]
    # Labels stay text because dataset.json names the positive class as text.
    # The strings of a chunk are freed with the chunk.
    dtypes = {name: (str if name not in numeric else np.float64) for name in columns}
    classes = [str(name) for name in info.get("classes", [])]
    # The table is parsed in chunks straight into arrays sized by its line
    # count, an upper bound on its rows, so the parser's own column arrays
    # never add up to a second copy of the data.
    capacity = _count_lines(path)
    features = np.empty((capacity, len(info["features"])), dtype=np.float64)
    targets = np.empty(capacity, dtype=np.float64 if regression else np.int64)
    n_rows = 0
    try:
        with pd.read_csv(
            path, usecols=columns, dtype=dtypes, keep_default_na=False, na_values=[], chunksize=_CHUNK_ROWS
        ) as chunks:
            for chunk in chunks:
                stop = n_rows + len(chunk)
                if stop > len(features):
                    features, targets = _grow(features, stop), _grow(targets, stop)
                features[n_rows:stop] = chunk[info["features"]].to_numpy(dtype=np.float64)
                target = chunk[info["target"]]
                if regression:
                    targets[n_rows:stop] = target.to_numpy(dtype=np.float64)
                else:
                    unknown = ~target.isin(classes) if classes else None
                    if unknown is not None and unknown.any():
                        raise DataError(
                            f"{path}: row {n_rows + int(np.argmax(unknown.to_numpy())) + 2} has the label "
                            f"{target[unknown].iloc[0]!r}, which is not one of the classes {classes} of "
                            f"{folder / INFO_FILE}. Fix: {fix}"
                        )
                    targets[n_rows:stop] = (target == str(info["positive_class"])).to_numpy()
                n_rows = stop
    except ValueError as error:
        raise DataError(
            f"{path}: a value of the columns {', '.join(numeric)} is not a number ({error}). Fix: {fix}"
        ) from None

    features, targets = features[:n_rows], targets[:n_rows]
    finite = np.isfinite(features).all(axis=1)
    if regression:
        finite &= np.isfinite(targets)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{path}: row {row + 2} has a value that is not finite (inf or nan). Fix: {fix}")
    return features, targets, info


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    """Return ``array`` copied into a larger one of at least ``size`` rows."""
    grown = np.empty((max(size, 2 * len(array)), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


# Rows parsed at a time by read_table.
_CHUNK_ROWS = 1 << 16


def _count_lines(path: Path) -> int:
    """Return an estimate of the lines of a text file from above: its newlines or carriage returns, plus one.

    A file that mixes line endings may have more lines; the reader then grows its arrays.
    """
    newlines = returns = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            newlines += chunk.count(b"\n")
            returns += chunk.count(b"\r")
    return max(newlines, returns) + 1
