"""Atomic writes: an output file is either complete or absent, never half-written.

Every writer here writes to a temporary file in the destination folder, flushes
it to disk and renames it over the destination with :func:`os.replace`, which
is atomic on POSIX file systems. A failure (no space left, permission denied,
an interruption) removes the temporary file and leaves any earlier version of
the destination untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepbystep.errors import UserError


class OutputError(UserError):
    """An output could not be written: no space left, permission denied or a similar OS error."""


def _describe_os_error(path: Path, error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        fix = "free disk space and run the stage again"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable and run the stage again"
    else:
        fix = "check the path and run the stage again"
    reason = error.strerror or str(error)
    return f"failed to write {path}: {reason}. Fix: {fix}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``, and rename it to ``path`` when the block succeeds.

    The caller writes the whole file to the yielded path. On any exception the
    temporary file is removed and the exception propagates; an ``OSError`` is
    raised again as :class:`OutputError` with the destination and a fix.
    """
    destination = Path(path)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
        )
        os.close(handle)
    except OSError as error:
        raise OutputError(_describe_os_error(destination, error)) from error

    temporary = Path(temporary_name)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(_describe_os_error(destination, error)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def os_errors_as_output_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Raise an ``OSError`` of the block as :class:`OutputError` that names the output ``path`` and a fix.

    Use it around writers that manage their own temporary files, because their
    errors name the temporary file, or no file at all on a full disk.
    """
    try:
        yield
    except OSError as error:
        raise OutputError(_describe_os_error(Path(path), error)) from error


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON with sorted keys, atomically, so equal data gives equal bytes."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` and move it to ``path`` when the block succeeds.

    An existing folder at ``path`` is replaced only after the new one is
    complete. On failure the temporary folder is removed and the old one stays.
    """
    destination = Path(path)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(
            tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        )
    except OSError as error:
        raise OutputError(_describe_os_error(destination, error)) from error

    try:
        yield temporary
        os.chmod(temporary, 0o755)
        if destination.exists():
            retired = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(destination, retired)
            os.replace(temporary, destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, destination)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputError(_describe_os_error(destination, error)) from error
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
