"""File locations of the pipeline, relative to the project root."""

from __future__ import annotations

import stat
from pathlib import Path

from stepbystep.errors import DataError

DATA_DIR = Path("data")
SPLITS_DIR = DATA_DIR / "splits"
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")


def dataset_dir(name: str) -> Path:
    """Return the folder of dataset ``name``: a table or an image folder."""
    return DATA_DIR / name


def require_file(path: Path, description: str, fix: str) -> None:
    """Raise :class:`DataError` unless ``path`` is a regular file; ``description`` names it in the message.

    A folder, a FIFO or a device in place of a data file would otherwise
    fail with an OS error deep in a reader, or block it forever.
    """
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{description} not found: {path}. Fix: {fix}") from None
    except OSError as error:
        raise DataError(f"cannot read {description} {path}: {error.strerror}. Fix: {fix}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{description} {path} is not a regular file. Fix: {fix}")


def split_path(name: str) -> Path:
    """Return the JSON file of training and validation indices of dataset ``name``."""
    return SPLITS_DIR / f"{name}.json"
