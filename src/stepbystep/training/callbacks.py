"""Hooks that ``Trainer.train`` calls at the start, at the end of every epoch, and at the end.

Loggers (TensorBoard, MLflow) and checkpointing are callbacks, so the training
loop itself does not grow a flag for each of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepbystep.training.trainer import Trainer


class Callback:
    """Base class for training hooks; every method does nothing unless overridden.

    ``on_epoch_end`` receives the epoch number, which counts from 1 and continues
    after a resume, and the epoch's logs, a dict with these keys:

    - ``epoch``, ``train_loss``, and ``val_loss`` (``None`` without a validation loader)
    - ``lr``: the first parameter group's learning rate during the epoch
    - ``val_<name>`` for every metric function
    - ``grad_mean_abs/<parameter>`` and ``grad_norm/<parameter>`` when the trainer
      tracks gradients

    A callback may set ``trainer.stop_training = True`` to end training after the
    current epoch.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Run before the first epoch of each ``train`` call."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        """Run after each completed epoch, once its losses are recorded and the scheduler has stepped."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Run after the last epoch of a ``train`` call that finished without an exception."""


class CheckpointCallback(Callback):
    """Save a resumable checkpoint every ``every`` epochs and, optionally, when training ends.

    ``path`` may contain an ``{epoch}`` format field, as in
    ``"checkpoints/epoch-{epoch:04d}.pt"``, to keep one file per save. Without it
    the file is overwritten, which is safe because writes are atomic. A save happens
    when the epoch number is a multiple of ``every``, so the schedule is the same
    whether or not training was resumed. ``saved_paths`` lists the files written,
    oldest first, for callers that upload them elsewhere.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int = 1,
        *,
        metadata: dict[str, Any] | None = None,
        save_on_train_end: bool = False,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be a positive number of epochs, got {every}")
        self.path = str(path)
        self.every = every
        self.metadata = metadata
        self.save_on_train_end = save_on_train_end
        self.saved_paths: list[Path] = []
        self._last_saved_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if epoch % self.every == 0:
            self._save(trainer, epoch)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.save_on_train_end and self._last_saved_epoch != trainer.total_epochs:
            self._save(trainer, trainer.total_epochs)

    def _save(self, trainer: Trainer, epoch: int) -> None:
        path = Path(self.path.format(epoch=epoch))
        trainer.save_checkpoint(path, metadata=self.metadata)
        self.saved_paths.append(path)
        self._last_saved_epoch = epoch
