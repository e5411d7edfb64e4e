"""Stable text output for metrics and plot data, written atomically.

The same inputs produce byte-identical files: keys are sorted, floats are
rounded to a fixed number of significant digits and printed in Python's
shortest round-trip form, and text ends with one newline. Every writer
creates a temporary file next to the target and moves it into place with
``os.replace``, so a reader sees either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SIGNIFICANT_DIGITS = 6


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """Round a float to ``digits`` significant digits, mapping -0.0 to 0.0."""
    rounded = float(format(float(value), f".{digits}g"))
    return rounded + 0.0  # -0.0 + 0.0 == 0.0, so the sign of zero never reaches the text


def to_plain(value: Any, digits: int = SIGNIFICANT_DIGITS, *, where: str = "value") -> Any:
    """Convert nested metrics into JSON types with rounded floats.

    Mappings become dicts with string keys, sequences and NumPy arrays become
    lists, NumPy scalars become ``int``, ``float`` or ``bool``, and floats are
    rounded by :func:`round_significant`. ``None`` stays ``None``.

    Raises:
        ValueError: a float is NaN or infinite (JSON has no such numbers), or a
            value has a type JSON cannot hold. The message names its key path.
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot represent")
        return round_significant(value, digits)
    if isinstance(value, Mapping):
        return {
            str(key): to_plain(item, digits, where=f"{where}.{key}") for key, item in value.items()
        }
    if isinstance(value, Sequence):
        return [
            to_plain(item, digits, where=f"{where}[{index}]") for index, item in enumerate(value)
        ]
    raise ValueError(f"{where} has type {type(value).__name__}, which JSON cannot represent")


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _is_inline(value: Any) -> bool:
    """Tell whether a list contains only scalars or lists of scalars, e.g. a confusion matrix."""
    return all(_is_scalar(item) or (isinstance(item, list) and _is_inline(item)) for item in value)


def _format_json(value: Any, level: int, inline_dicts: bool = False) -> str:
    indent = "  " * (level + 1)
    closing = "  " * level
    if isinstance(value, dict):
        items = sorted(value.items())
        if not items:
            return "{}"
        if inline_dicts and all(_is_scalar(item) for _, item in items):
            return json.dumps(dict(items), ensure_ascii=False, allow_nan=False)
        lines = [
            f"{indent}{json.dumps(key, ensure_ascii=False)}: {_format_json(item, level + 1)}"
            for key, item in items
        ]
        return "{\n" + ",\n".join(lines) + "\n" + closing + "}"
    if isinstance(value, list):
        if _is_inline(value):
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        # Flat objects inside a list, such as plot rows, take one line each.
        lines = [indent + _format_json(item, level + 1, inline_dicts=True) for item in value]
        return "[\n" + ",\n".join(lines) + "\n" + closing + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def to_json_text(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """Serialize ``value`` as indented JSON with sorted keys and rounded floats.

    Lists of numbers and lists of such lists (a confusion matrix) stay on one
    line, and so does each flat object inside a list (a plot row).
    """
    return _format_json(to_plain(value, digits), level=0) + "\n"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    Creates missing parent folders. The file gets mode 0o644 because
    ``mkstemp`` creates it readable by its owner only. Returns the path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically, see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_metrics_json(
    path: str | os.PathLike[str], metrics: Mapping[str, Any], digits: int = SIGNIFICANT_DIGITS
) -> Path:
    """Write ``{model_name: {metric: value}}`` as stable JSON, see :func:`to_json_text`."""
    return atomic_write_text(path, to_json_text(metrics, digits))


def _row_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        if not rows:
            raise ValueError("columns are required to write an empty table")
        columns = list(rows[0])
    for index, row in enumerate(rows):
        if set(row) != set(columns):
            raise ValueError(
                f"row {index} has columns {sorted(row)}, expected {sorted(columns)}"
            )
    return list(columns)


def rows_to_csv_text(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    digits: int = SIGNIFICANT_DIGITS,
) -> str:
    """Format rows as CSV with a header line, ``\\n`` line endings and rounded floats.

    ``columns`` sets the column order, by default the keys of the first row.
    ``None`` becomes an empty cell.
    """
    header = _row_columns(rows, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(rows):
        cells = to_plain([row[column] for column in header], digits, where=f"row {index}")
        writer.writerow(["" if cell is None else cell for cell in cells])
    return buffer.getvalue()


def write_rows_csv(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    digits: int = SIGNIFICANT_DIGITS,
) -> Path:
    """Write rows as CSV atomically, see :func:`rows_to_csv_text`."""
    return atomic_write_text(path, rows_to_csv_text(rows, columns, digits))


def write_rows_json(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    digits: int = SIGNIFICANT_DIGITS,
) -> Path:
    """Write rows as a JSON list of objects, the layout DVC plots read.

    Missing values (``None``) become ``null``.
    """
    if rows:
        _row_columns(rows, None)
    return atomic_write_text(path, to_json_text(list(rows), digits))
