"""The line-image dataset of chapter 4, and image folders in the class-subfolder layout.

An image folder contains ``<root>/<class>/<id>.png`` files, a ``manifest.csv``
with one row per image (``file``, ``class``, ``label`` and, for the synthetic
set, ``line_kind``) in dataset order, and a ``dataset.json`` description. Split
indices refer to manifest rows.

An imported image folder contains no image files. Its images are decoded once
into ``images.npy``, a uint8 array of shape (N, C, H, W) in manifest order that
readers memory-map, and its manifest names the files of the source folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from stepbystep import files
from stepbystep.data.tables import INFO_FILE
from stepbystep.errors import DataError
from stepbystep.params import BuildImagesParams

MANIFEST_FILE = "manifest.csv"
CACHE_FILE = "images.npy"

# Binary classes of the synthetic set: 1 for a diagonal line, 0 for a straight one.
NEGATIVE_CLASS = "straight"
POSITIVE_CLASS = "diagonal"
LINE_KINDS = {0: ("vertical", "horizontal"), 1: "diagonal_up", 2: "diagonal_down"}


def draw_line(start: int, target: int, img_size: int) -> np.ndarray:
    """Return one ``(img_size, img_size)`` uint8 image with a line of 255 on 0.

    A positive ``start`` is a row, zero or negative is the column ``|start|``.
    Target 0 draws a straight line along that row or column. Target 1 draws a
    diagonal going up to the right and target 2 one going down to the right.
    Both begin at that row (in column 0) or at that column (in the last or
    first row). A diagonal never begins in column 0 from a column start.
    """
    image = np.zeros((img_size, img_size), dtype=np.uint8)
    row = start if start > 0 else None
    column = -start if start <= 0 else None

    if target == 0:
        if row is None:
            image[:, column] = 255
        else:
            image[row, :] = 255
        return image

    if column == 0:
        column = 1
    if target == 1:
        if row is not None:
            rows, columns = np.arange(row, -1, -1), np.arange(0, row + 1)
        else:
            rows, columns = np.arange(img_size - 1, column - 1, -1), np.arange(column, img_size)
    else:
        if row is not None:
            rows, columns = np.arange(row, img_size), np.arange(0, img_size - row)
        else:
            rows, columns = np.arange(0, img_size - column), np.arange(column, img_size)
    image[rows, columns] = 255
    return image


def make_line_images(params: BuildImagesParams) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate the chapter 4 images: uint8 of shape (N, 1, H, W), binary labels and line kinds.

    NumPy's legacy global generator is seeded, then all starts and then all
    targets are drawn, as the book does, so the default params give its images.
    """
    np.random.seed(params.seed)
    size = params.img_size
    starts = np.random.randint(-(size - 1), size, size=(params.n_images,))
    targets = np.random.randint(0, 3, size=(params.n_images,))

    images = np.stack([draw_line(int(s), int(t), size) for s, t in zip(starts, targets)])[:, None]
    labels = (targets > 0).astype(np.int64)
    kinds = []
    for start, target in zip(starts, targets):
        if target == 0:
            kinds.append(LINE_KINDS[0][1] if start > 0 else LINE_KINDS[0][0])
        else:
            kinds.append(LINE_KINDS[int(target)])
    return images, labels, kinds


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    channels = image.shape[0]
    if channels == 1:
        picture = Image.fromarray(image[0], mode="L")
    elif channels == 3:
        picture = Image.fromarray(np.moveaxis(image, 0, -1), mode="RGB")
    else:
        raise ValueError(f"cannot write an image with {channels} channels as PNG")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, str],
    extra_columns: dict[str, list[str]] | None = None,
) -> None:
    """Write uint8 images of shape (N, C, H, W) as ``root/<class>/<id>.png`` with manifest and description.

    ``classes`` names the negative and the positive class folder. The whole
    folder appears at once when it is complete.
    """
    extra_columns = extra_columns or {}
    width = len(str(max(len(images) - 1, 0)))
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(["file", "class", "label", *extra_columns])

    with files.atomic_directory(root) as staging:
        for name in classes:
            (staging / name).mkdir()
        for index, (image, label) in enumerate(zip(images, labels)):
            class_name = classes[int(label)]
            relative = f"{class_name}/{index:0{width}d}.png"
            (staging / relative).write_bytes(_png_bytes(image))
            writer.writerow([relative, class_name, int(label), *(column[index] for column in extra_columns.values())])
        (staging / MANIFEST_FILE).write_text(manifest.getvalue(), encoding="utf-8")
        info = {
            "kind": "images",
            "name": root.name,
            "task": "binary",
            "classes": list(classes),
            "positive_class": classes[1],
            "channels": int(images.shape[1]),
            "height": int(images.shape[2]),
            "width": int(images.shape[3]),
            "n_images": int(len(images)),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build_images(params: BuildImagesParams, root: Path) -> None:
    """Generate the line images and write them as an image folder at ``root``."""
    images, labels, kinds = make_line_images(params)
    write_image_folder(root, images, labels, (NEGATIVE_CLASS, POSITIVE_CLASS), {"line_kind": kinds})


def read_manifest(root: Path) -> list[dict[str, str]]:
    """Return the manifest rows of an image folder, in dataset order."""
    path = Path(root) / MANIFEST_FILE
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(f"image manifest not found: {path}. Fix: run `dvc repro` to build it") from None


def read_manifest_labels(root: Path) -> np.ndarray:
    """Return the labels of an image folder's manifest as int64, in dataset order, reading one row at a time."""
    from stepbystep.data.layout import require_file

    path = Path(root) / MANIFEST_FILE
    require_file(path, "image manifest", "run `dvc repro` to build it")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            labels = np.fromiter((int(row["label"]) for row in csv.DictReader(handle)), dtype=np.int64)
    except OSError as error:
        raise DataError(
            f"cannot read image manifest {path}: {error.strerror}. Fix: run `dvc repro` to build it"
        ) from None
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: a row has no integer label ({error!r}). Fix: run `dvc repro` to build it"
        ) from None
    check_binary_labels(path, labels)
    return labels


def check_binary_labels(path: Path, labels: np.ndarray) -> None:
    """Raise :class:`DataError` when a label of the manifest at ``path`` is neither 0 nor 1."""
    invalid = (labels != 0) & (labels != 1)
    if invalid.any():
        row = int(np.argmax(invalid))
        raise DataError(
            f"{path}: row {row + 2} has the label {labels[row]}, but labels are 0 or 1 (1 for the positive class). "
            "Fix: run `dvc repro` to build the image folder again"
        )


def read_image_cache(root: Path, info: dict[str, Any], n_rows: int) -> np.ndarray:
    """Memory-map the decoded images of an imported folder, read-only, and check their shape against the manifest."""
    from stepbystep.data.layout import require_file

    path = Path(root) / info["cache"]
    require_file(path, "image cache", "run `dvc repro` to import the images again")
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read image cache {path}: {error}. Fix: run `dvc repro` to import the images again") from None

    expected = (n_rows, info["channels"], info["height"], info["width"])
    if images.dtype != np.uint8 or images.shape != expected:
        raise DataError(
            f"{path} contains {images.dtype} images of shape {images.shape}, but the manifest and "
            f"dataset.json describe uint8 images of shape {expected}. Fix: run `dvc repro` to import the images again"
        )
    return images


def read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read an image folder back: uint8 images of shape (N, C, H, W), int64 labels and its description.

    Images of an imported folder come memory-mapped from its cache; the
    synthetic set is decoded from its PNG files.
    """
    from PIL import Image

    from stepbystep.data.tables import read_info

    root = Path(root)
    info = read_info(root)
    if info.get("cache"):
        labels = read_manifest_labels(root)
        return read_image_cache(root, info, len(labels)), labels, info
    rows = read_manifest(root)
    labels = np.array([int(row["label"]) for row in rows], dtype=np.int64)
    check_binary_labels(root / MANIFEST_FILE, labels)

    images = np.empty((len(rows), info["channels"], info["height"], info["width"]), dtype=np.uint8)
    for index, row in enumerate(rows):
        path = root / row["file"]
        try:
            with Image.open(path) as picture:
                array = np.asarray(picture)
        except FileNotFoundError:
            raise DataError(f"image not found: {path} (manifest row {index + 2})") from None
        except OSError as error:
            raise DataError(f"cannot read image {path}: {error}") from None
        images[index] = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return images, labels, info
