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

    folder = Path(folder)
    info = read_info(folder)
    path = folder / TABLE_FILE
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except FileNotFoundError:
        raise DataError(f"table not found: {path}. Fix: run `dvc repro` so the data stages write it") from None

    columns = [*info["features"], info["target"]]
    missing = [name for name in columns if name not in header]
    if missing:
        raise DataError(
            f"{path}: column {missing[0]!r} not found (columns: {', '.join(header)}). "
            "Fix: correct the column names in the dataset description"
        )

    numeric = columns if info["task"] == "regression" else info["features"]
    # Labels stay text because dataset.json names the positive class as text.
    # The strings of a chunk are freed with the chunk.
    dtypes = {name: (str if name not in numeric else np.float64) for name in columns}
    # The table is parsed in chunks straight into arrays sized by its line
    # count, an upper bound on its rows, so the parser's own column arrays
    # never add up to a second copy of the data.
    capacity = max(_count_lines(path) - 1, 0)
    features = np.empty((capacity, len(info["features"])), dtype=np.float64)
    targets = np.empty(capacity, dtype=np.float64 if info["task"] == "regression" else np.int64)
    n_rows = 0
    try:
        with pd.read_csv(
            path,
            usecols=columns,
            dtype=dtypes,
            keep_default_na=False,
            na_values=[],
            chunksize=_CHUNK_ROWS,
        ) as chunks:
            for chunk in chunks:
                stop = n_rows + len(chunk)
                features[n_rows:stop] = chunk[info["features"]].to_numpy(dtype=np.float64)
                target = chunk[info["target"]]
                if info["task"] == "regression":
                    targets[n_rows:stop] = target.to_numpy(dtype=np.float64)
                else:
                    targets[n_rows:stop] = (target == str(info["positive_class"])).to_numpy()
                n_rows = stop
    except ValueError as error:
        raise DataError(
            f"{path}: a value of the columns {', '.join(numeric)} is not a number ({error}). "
            "Fix: rebuild the dataset with `dvc repro`"
        ) from None
    return features[:n_rows], targets[:n_rows], info


# Rows parsed at a time by read_table.
_CHUNK_ROWS = 1 << 16


def _count_lines(path: Path) -> int:
    """Return the number of lines of a text file, counting a last line without a newline."""
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
