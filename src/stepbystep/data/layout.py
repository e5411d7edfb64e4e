"""File locations of the pipeline, relative to the project root."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path("data")
SPLITS_DIR = DATA_DIR / "splits"
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")


def dataset_dir(name: str) -> Path:
    """Return the folder of dataset ``name``: a table or an image folder."""
    return DATA_DIR / name


def split_path(name: str) -> Path:
    """Return the JSON file of training and validation indices of dataset ``name``."""
    return SPLITS_DIR / f"{name}.json"
