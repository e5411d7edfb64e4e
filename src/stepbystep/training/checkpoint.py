"""Save and load training checkpoints safely.

A checkpoint is a dict written with ``torch.save``. Writes are atomic: the data
goes to a temporary file in the same folder, which is flushed to disk and then
renamed over the target, so a crash never leaves a half-written checkpoint under
the final name. A failed write (no space left, permission denied) raises
``stepbystep.files.OutputError`` with the path and a fix. Equal checkpoints give
equal bytes, so a resumed training writes the same file as an uninterrupted
one. Loading uses ``torch.load(weights_only=True)``, which restores
only tensors and plain Python containers and never runs code stored in the file,
and maps every tensor to the CPU, so a checkpoint saved on CUDA loads on a
CPU-only machine.

Keys written by ``Trainer.save_checkpoint`` (format version 1):

- ``format``: ``"stepbystep.checkpoint"``; ``format_version``: ``1``
- ``epoch``: number of completed epochs, counting from 1
- ``model_state_dict``, ``optimizer_state_dict``, ``optimizer_class``
- ``scheduler_state_dict`` and ``scheduler_class`` (``None`` without a scheduler)
- ``history``: per-epoch values by name (``train_loss``, ``val_loss``, ``lr``,
  ``val_<metric>``, ``grad_norm/<parameter>``, ...)
- ``early_stopping``: ``best_val_loss``, ``best_epoch``, ``epochs_without_improvement``
- ``rng_state``: see ``seeding.capture_rng_state``
- ``metadata``: a dict of plain Python values given by the caller
- ``torch_version``
"""

from __future__ import annotations

import io
import os
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stepbystep import files

CHECKPOINT_FORMAT = "stepbystep.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

REQUIRED_KEYS = (
    "format_version",
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "history",
    "rng_state",
    "metadata",
)

# Types that torch.load(weights_only=True) restores; metadata is limited to these.
_PLAIN_SCALARS = (type(None), bool, int, float, str)


class _MemoFreePickler(pickle.Pickler):
    """A pickler without the memo, so the bytes depend on the values alone.

    With the memo, a string or list that appears twice is written once and then
    referenced, but only when both places refer to the same object. A resumed
    trainer keeps copies loaded from disk where a fresh one shares objects, so
    the memo would make their checkpoints differ in bytes although every value
    is equal. Tensors that share storage stay shared, because ``torch.save``
    tracks storages itself. The memo-free mode cannot write self-referencing
    containers, and checkpoints contain none.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = True


# torch.save takes a pickle module and subclasses its ``Pickler``.
_MEMO_FREE_PICKLE = types.ModuleType("stepbystep_memo_free_pickle")
_MEMO_FREE_PICKLE.Pickler = _MemoFreePickler  # type: ignore[attr-defined]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, is not a training checkpoint, or does not fit the model."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {message}")


def validate_metadata(value: Any, where: str = "metadata") -> None:
    """Raise ``TypeError`` unless ``value`` contains only types that load with ``weights_only=True``.

    Allowed: ``None``, ``bool``, ``int``, ``float``, ``str``, tensors, and lists,
    tuples and dicts with string keys of those. The check uses exact types, so
    NumPy scalars such as ``np.float64`` are rejected even though they subclass
    ``float``, because loading them would need NumPy's pickling code. The error
    names the offending entry, such as ``metadata['scaler']['mean'][0]``.
    """
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            validate_metadata(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a key of type {type(key).__name__}; checkpoint metadata keys must be str")
            validate_metadata(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is of type {type(value).__module__}.{type(value).__qualname__}; checkpoint metadata may contain "
        "only None, bool, int, float, str, tensors, lists, tuples and dicts (convert NumPy values with .tolist() "
        "or float())"
    )


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and return the path.

    Missing parent folders are created. Raises ``TypeError`` (from
    ``validate_metadata``) before writing anything when ``checkpoint["metadata"]``
    contains types that could not be loaded back. Raises ``OutputError`` when the
    file system rejects the write. The temporary file is then removed, and an
    earlier file at ``path`` stays as it was.
    """
    path = Path(path)
    if "metadata" in checkpoint:
        validate_metadata(checkpoint["metadata"])

    # Serializing into memory first keeps the OSError of a failed write, which
    # torch.save would turn into a RuntimeError without the errno.
    # NOTE: the buffer is a second copy of the checkpoint in memory while it is written.
    buffer = io.BytesIO()
    torch.save(dict(checkpoint), buffer, pickle_module=_MEMO_FREE_PICKLE)
    files.write_bytes(path, buffer.getbuffer())

    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable. Folders cannot be opened on Windows, where
    # os.replace is durable enough for this purpose.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint written by ``Trainer.save_checkpoint``, with every tensor on the CPU.

    Raises ``CheckpointError``, whose message names the file, in these cases:

    - the file is missing, truncated or not a PyTorch file;
    - it contains objects that ``weights_only`` loading rejects, in which case no
      code from the file runs;
    - it is a PyTorch file but not a training checkpoint of a supported format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch.load raises RuntimeError, EOFError, KeyError, UnpicklingError and
        # others depending on how the file is damaged; all of them mean the same
        # thing to the caller.
        raise CheckpointError(path, _describe_load_failure(exc)) from exc

    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = f"a dict with keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            path,
            f"not a stepbystep training checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r}, found {found})",
        )

    version = checkpoint.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            path, f"unsupported checkpoint format version {version!r}; this code reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint, missing keys: {', '.join(missing)}")
    return checkpoint


def _describe_load_failure(exc: Exception) -> str:
    message = str(exc)
    if "Weights only load failed" in message:
        # torch explains the rejected object on a line starting with this marker.
        reason = next(
            (line.strip() for line in message.splitlines() if "WeightsUnpickler error:" in line),
            "it contains objects other than tensors and plain Python types",
        )
        reason = reason.split(" Please use", 1)[0]
        return f"rejected by weights_only loading, so nothing in it was run or loaded ({reason})"
    first_line = message.splitlines()[0] if message else type(exc).__name__
    return f"cannot be read, it is truncated or not a PyTorch checkpoint ({type(exc).__name__}: {first_line})"


def check_model_state_dict(path: str | os.PathLike[str], model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` has exactly the keys and shapes of ``model.state_dict()``.

    Checking before ``load_state_dict`` keeps the model unchanged on a mismatch,
    whereas ``load_state_dict`` copies the matching tensors before it raises.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict
        and isinstance(value, torch.Tensor)
        and isinstance(state_dict[key], torch.Tensor)
        and state_dict[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing keys {missing}")
        if unexpected:
            details.append(f"unexpected keys {unexpected}")
        if mismatched:
            details.append(f"shape mismatches [{'; '.join(mismatched)}]")
        raise CheckpointError(
            path, f"model weights do not fit the {type(model).__name__} architecture: {', '.join(details)}"
        )


def load_model_weights(path: str | os.PathLike[str], model: nn.Module) -> dict[str, Any]:
    """Load the model weights of a training checkpoint into ``model`` and return the checkpoint's metadata.

    Raises ``CheckpointError`` as ``load_checkpoint`` does, and when the weights do
    not fit the model's architecture, in which case the model is left unchanged.
    """
    checkpoint = load_checkpoint(path)
    check_model_state_dict(path, model, checkpoint["model_state_dict"])
    model.load_state_dict(checkpoint["model_state_dict"])
    return checkpoint["metadata"]
