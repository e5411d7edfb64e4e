"""Import user data as pipeline datasets: a CSV table or an image folder with one subfolder per class.

:func:`import_dataset` validates the source named by an ``import_data`` entry
of params.yaml and writes ``data/<name>/`` in the layout the synthetic stages
write, so the split, training and evaluation stages read it unchanged:

- a table becomes ``data.csv`` with only the declared feature and target
  columns, every feature a float, and ``dataset.json``;
- an image folder becomes ``images.npy`` (uint8, shape (N, C, H, W), decoded
  once and memory-mapped by readers), ``manifest.csv`` and ``dataset.json``.

Invalid data raises :class:`DataError` with the file and the line, column or
image at fault, and leaves no output: the dataset folder appears only when it
is complete.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
from pathlib import Path

import numpy as np

from stepbystep import files
from stepbystep.data.images import CACHE_FILE, MANIFEST_FILE
from stepbystep.data.tables import INFO_FILE, TableInfo, write_table
from stepbystep.errors import DataError
from stepbystep.params import ImportDataParams

logger = logging.getLogger(__name__)

# Cells read as missing values, compared in lower case: pandas' default NA
# strings plus "?", which UCI repository files use.
MISSING_VALUES = frozenset(
    {"", "na", "n/a", "nan", "-nan", "null", "none", "<na>", "#n/a", "#na", "#n/a n/a", "?"}
)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
MAX_REPORTED_PROBLEMS = 10


def import_dataset(name: str, params: ImportDataParams, destination: Path) -> None:
    """Validate the source of ``import_data.<name>`` and write it as the dataset folder ``destination``.

    ``params.path`` is read relative to the current folder, which is the
    project root when DVC runs the stage.
    """
    if params.kind == "table":
        import_table(name, params, destination)
    else:
        import_image_folder(name, params, destination)


# --- tables ------------------------------------------------------------------


def _read_csv(path: Path, key: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Return the header, the records and the file line of each record, skipping blank lines."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, but kind: table needs a CSV file. Fix: correct {key}.path")
    records: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty. Fix: write a header line and data rows to it")
            header = [column.strip() for column in header]
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if len(record) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(record)} fields, but the header has "
                        f"{len(header)}. Fix: give every row one value per header column"
                    )
                records.append(record)
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found. Fix: correct {key}.path, or create the file (paths are relative "
            "to the project root)"
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}). Fix: save it as UTF-8") from None
    except csv.Error as error:
        raise DataError(f"{path}: invalid CSV ({error}). Fix: correct the quoting of that line") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}. Fix: check the path and its permissions") from None

    if not records:
        raise DataError(f"{path} has a header but no data rows. Fix: add data rows")
    return header, records, lines


def _column_positions(path: Path, header: list[str], params: ImportDataParams, key: str) -> dict[str, int]:
    """Return the position of every declared column, or raise naming each missing or repeated one."""
    declared = [("features", column) for column in params.features or []] + [("target", params.target)]
    problems = []
    for setting, column in declared:
        count = header.count(column)
        if count == 0:
            guess = difflib.get_close_matches(column, header, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"column {column!r} of {key}.{setting} not found{hint}")
        elif count > 1:
            problems.append(f"column {column!r} of {key}.{setting} appears {count} times in the header")
    if problems:
        raise DataError(
            f"{path}: {'; '.join(problems)}. Columns in the file: {', '.join(map(repr, header))}. "
            f"Fix: correct {key}.features and {key}.target, or the header of the file"
        )
    return {column: header.index(column) for _, column in declared}


def _numeric_column(column: str, cells: list[str], lines: list[int], problems: list[str]) -> np.ndarray:
    """Parse one column as float64; append one message per invalid cell to ``problems``."""
    import pandas as pd

    text = pd.Series(cells, dtype=object).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    missing = text.str.lower().isin(MISSING_VALUES).to_numpy()
    for row in np.flatnonzero(missing | ~np.isfinite(values)):
        where = f"line {lines[row]}, column {column!r}"
        if missing[row]:
            problems.append(f"{where}: missing value {cells[row]!r}" if cells[row].strip() else f"{where}: missing value")
        elif np.isnan(values[row]):
            problems.append(f"{where}: {cells[row]!r} is not a number")
        else:
            problems.append(f"{where}: {cells[row]!r} is not a finite number")
    return values


def _raise_problems(path: Path, problems: list[str], key: str) -> None:
    listed = problems[:MAX_REPORTED_PROBLEMS]
    more = len(problems) - len(listed)
    listing = "\n  ".join(listed + ([f"... and {more} more"] if more else []))
    count = len(problems)
    raise DataError(
        f"{path}: {count} invalid value{'s' if count > 1 else ''}:\n  {listing}\n"
        f"Fix: correct these cells or remove their rows, or remove the columns from {key}.features. "
        "The pipeline does not impute missing values"
    )


def _binary_labels(
    path: Path, params: ImportDataParams, cells: list[str], lines: list[int], key: str
) -> tuple[np.ndarray, list[str]]:
    """Return the target values as stripped text, and the classes with the positive class last."""
    values = np.array([cell.strip() for cell in cells], dtype=object)
    problems = [
        f"line {line}, column {params.target!r}: missing value"
        for line, value in zip(lines, values)
        if value.lower() in MISSING_VALUES
    ]
    if problems:
        _raise_problems(path, problems, key)

    found = sorted(set(values))
    if len(found) < 2:
        raise DataError(
            f"{path}: target column {params.target!r} has a single class {found[0]!r} in all "
            f"{len(values)} rows, so there is nothing to classify. Fix: add rows of the other class, "
            "or import the table with task: regression"
        )
    if params.positive_class not in found:
        raise DataError(
            f"{path}: {key}.positive_class {params.positive_class!r} never occurs in target column "
            f"{params.target!r} (classes: {', '.join(map(repr, found))}). Fix: set {key}.positive_class to one of them"
        )
    negatives = [value for value in found if value != params.positive_class]
    if len(negatives) > 1:
        logger.info(
            "%s: %d classes; %r is labelled 1 and %s are labelled 0",
            key, len(found), params.positive_class, ", ".join(map(repr, negatives)),
        )
    return values, [*negatives, params.positive_class]


def import_table(name: str, params: ImportDataParams, destination: Path) -> None:
    """Validate a CSV file and write its declared columns as a table dataset.

    Header names and cells are stripped of surrounding spaces. Line numbers in
    messages are those of the file, header included, as editors show them.
    """
    key = f"import_data.{name}"
    path = Path(params.path)
    header, records, lines = _read_csv(path, key)
    positions = _column_positions(path, header, params, key)

    def cells_of(column: str) -> list[str]:
        position = positions[column]
        return [record[position] for record in records]

    problems: list[str] = []
    columns: dict[str, np.ndarray] = {}
    for column in params.features or []:
        columns[column] = _numeric_column(column, cells_of(column), lines, problems)
    classes: list[str] = []
    if params.task == "regression":
        columns[params.target] = _numeric_column(params.target, cells_of(params.target), lines, problems)
    if problems:
        _raise_problems(path, problems, key)
    if params.task == "binary":
        columns[params.target], classes = _binary_labels(path, params, cells_of(params.target), lines, key)

    info = TableInfo(
        name=name,
        task=params.task,
        features=list(params.features or []),
        target=params.target,
        classes=classes,
        positive_class=params.positive_class,
        source=params.path,
    )
    write_table(destination, columns, info)
    logger.info("%s: imported %d rows of %d features from %s", key, len(records), len(info.features), path)


# --- image folders -----------------------------------------------------------


def _class_folders(source: Path, params: ImportDataParams, key: str) -> list[str]:
    """Return the class folders to import, sorted by name, after checking the positive class is among them."""
    if not source.exists():
        raise DataError(
            f"{source}: folder not found. Fix: correct {key}.path, or create the folder (paths are "
            "relative to the project root)"
        )
    if not source.is_dir():
        raise DataError(
            f"{source} is a file, but kind: images needs a folder with one subfolder per class. "
            f"Fix: correct {key}.path"
        )
    found = sorted(entry.name for entry in source.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not found:
        loose = any(entry.suffix.lower() in IMAGE_EXTENSIONS for entry in source.iterdir())
        detail = "images but no class subfolders" if loose else "no class subfolders"
        raise DataError(
            f"{source} contains {detail}. Fix: put the images of each class in a subfolder named "
            "after the class, as in <folder>/<class>/<image>.png"
        )

    if params.classes is not None:
        absent = [name for name in params.classes if name not in found]
        if absent:
            raise DataError(
                f"{source}: class folder {absent[0]!r} of {key}.classes not found (subfolders: "
                f"{', '.join(map(repr, found))}). Fix: correct {key}.classes"
            )
        found = sorted(params.classes)
    if len(found) < 2:
        raise DataError(
            f"{source} contains a single class folder {found[0]!r}, so there is nothing to classify. "
            "Fix: add a subfolder with the images of another class"
        )
    if params.positive_class not in found:
        raise DataError(
            f"{source}: {key}.positive_class {params.positive_class!r} is not a class folder here "
            f"(classes: {', '.join(map(repr, found))}). Fix: set {key}.positive_class to one of them"
        )
    return found


def _image_files(folder: Path) -> list[Path]:
    """Return the PNG and JPEG files of one class folder, sorted by name; log what else it contains."""
    images, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(entry)
        else:
            skipped.append(entry.name)
    if skipped:
        # torchvision's ImageFolder also skips files of other types.
        logger.warning(
            "%s: skipped %d entries that are not PNG or JPEG files, for example %r", folder, len(skipped), skipped[0]
        )
    if not images:
        raise DataError(
            f"class folder {folder} contains no PNG or JPEG images. Fix: add images to it, remove it, "
            "or leave it out of classes"
        )
    return images


def _decode_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image as uint8 of shape (channels, height, width), resized bilinearly to ``size`` = (height, width).

    Without ``size`` the image keeps its own size. Alpha channels are dropped
    and 16-bit grayscale keeps its 8 most significant bits.

    NOTE: the EXIF orientation of a JPEG is not applied, as torchvision's
    default image loader does not apply it either.
    """
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode.startswith("I;16") or picture.mode == "I":
                # NOTE: a 32-bit integer image ("I") is assumed to hold 16-bit values; larger ones saturate.
                gray = np.clip(np.asarray(picture, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
                picture = Image.fromarray(gray)
            elif picture.mode == "F":
                raise DataError(
                    f"{path}: 32-bit floating-point images are not supported. Fix: save it as an 8-bit PNG or JPEG"
                )
            picture = picture.convert("L" if channels == 1 else "RGB")
            if size is not None and picture.size != (size[1], size[0]):
                picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(picture, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # Pillow reports damaged files as OSError ("image file is truncated"),
        # UnidentifiedImageError (an OSError), SyntaxError ("broken PNG file"),
        # ValueError or EOFError, depending on the format and the damage.
        raise DataError(
            f"{path}: cannot read image ({type(error).__name__}: {error}). "
            "Fix: replace the file with a valid PNG or JPEG, or remove it"
        ) from None
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _image_size(path: Path) -> tuple[int, int]:
    """Return the (height, width) of an image without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            width, height = picture.size
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(
            f"{path}: cannot read image ({type(error).__name__}: {error}). "
            "Fix: replace the file with a valid PNG or JPEG, or remove it"
        ) from None
    return height, width


def import_image_folder(name: str, params: ImportDataParams, destination: Path) -> None:
    """Decode an image folder in the class-subfolder layout into an array cache with manifest and description.

    Images are decoded once, in class-folder then file-name order, straight
    into a memory-mapped ``images.npy``, so a folder larger than memory can be
    imported. Without ``image_size`` every image must have the size of the first.
    """
    key = f"import_data.{name}"
    source = Path(params.path)
    classes = _class_folders(source, params, key)
    entries = [(class_name, path) for class_name in classes for path in _image_files(source / class_name)]

    channels = int(params.channels)
    if params.image_size is not None:
        height, width = params.image_size
        resize: tuple[int, int] | None = (height, width)
    else:
        height, width = _image_size(entries[0][1])
        resize = None

    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(["file", "class", "label"])
    counts = dict.fromkeys(classes, 0)

    with files.atomic_directory(destination) as staging:
        cache = np.lib.format.open_memmap(
            staging / CACHE_FILE, mode="w+", dtype=np.uint8, shape=(len(entries), channels, height, width)
        )
        first = entries[0][1]
        for index, (class_name, path) in enumerate(entries):
            image = _decode_image(path, channels, resize)
            if image.shape[1:] != (height, width):
                raise DataError(
                    f"{path}: image of height {image.shape[1]} and width {image.shape[2]} differs from "
                    f"{first} (height {height}, width {width}), and {key}.image_size is null. "
                    f"Fix: set {key}.image_size to [height, width] to resize every image, for example [{height}, {width}]"
                )
            cache[index] = image
            label = int(class_name == params.positive_class)
            writer.writerow([path.relative_to(source).as_posix(), class_name, label])
            counts[class_name] += 1
        cache.flush()
        del cache

        (staging / MANIFEST_FILE).write_text(manifest.getvalue(), encoding="utf-8")
        negatives = [class_name for class_name in classes if class_name != params.positive_class]
        info = {
            "kind": "images",
            "name": name,
            "task": "binary",
            "classes": [*negatives, params.positive_class],
            "positive_class": params.positive_class,
            "channels": channels,
            "height": height,
            "width": width,
            "n_images": len(entries),
            "source": params.path,
            "cache": CACHE_FILE,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    summary = ", ".join(f"{class_name}: {count}" for class_name, count in counts.items())
    logger.info(
        "%s: imported %d images of %d×%d×%d from %s (%s)", key, len(entries), channels, height, width, source, summary
    )
