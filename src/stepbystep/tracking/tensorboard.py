"""Write training curves and the model graph to TensorBoard.

``TensorBoardCallback`` writes the training and validation losses of every epoch
under one main tag (``add_scalars``), so TensorBoard draws both curves in one
chart. Every other numeric value of the epoch logs (learning rate, metrics,
gradient statistics) gets its own tag. The global step is the epoch number,
which continues after a resume. TensorBoard is imported when training begins,
not when this module is imported.
"""

from __future__ import annotations

import os
import warnings
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch

from stepbystep.training.callbacks import Callback
from stepbystep.training.seeding import preserved_rng_state

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from stepbystep.training.trainer import Trainer

_LOSS_KEYS = {"train_loss": "training", "val_loss": "validation"}


class TensorBoardCallback(Callback):
    """Log per-epoch losses, other numeric logs and, once, the model graph to a ``SummaryWriter``.

    Pass either ``log_dir`` (the callback creates a writer there when training
    begins and closes it when training ends) or an open ``writer``, which the
    callback only flushes. Losses go under ``tag`` as ``training`` and
    ``validation``. With ``add_graph`` the model graph is written on the first
    ``train`` call that starts from epoch 0, traced on ``sample_input`` or, without
    it, on the ``x`` of the first training batch. Fetching that batch and tracing
    leave every random number generator as they were, so logging does not change
    the training results.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: SummaryWriter | None = None,
        tag: str = "loss",
        add_graph: bool = True,
        sample_input: torch.Tensor | None = None,
    ) -> None:
        if (log_dir is None) == (writer is None):
            raise ValueError("pass exactly one of log_dir and writer")
        self.log_dir = log_dir
        self.writer = writer
        self.tag = tag
        self.add_graph = add_graph
        self.sample_input = sample_input
        self._owns_writer = writer is None
        self._graph_written = False

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.fspath(self.log_dir))
        if self.add_graph and not self._graph_written and trainer.total_epochs == 0:
            self._write_graph(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        losses = {_LOSS_KEYS[key]: logs[key] for key in _LOSS_KEYS if logs.get(key) is not None}
        self.writer.add_scalars(self.tag, losses, global_step=epoch)
        for key, value in logs.items():
            if key in _LOSS_KEYS or key == "epoch" or isinstance(value, bool) or not isinstance(value, Real):
                continue
            self.writer.add_scalar(key, value, global_step=epoch)
        # SummaryWriter promises a flush only every flush_secs (120 s by default).
        # Flushing here keeps the files current even when a later epoch raises,
        # in which case on_train_end does not run.
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()
            self.writer = None

    def _write_graph(self, trainer: Trainer) -> None:
        model = trainer.model
        was_training = model.training
        with preserved_rng_state(trainer.named_generators()):
            sample = self.sample_input
            if sample is None:
                sample, _ = next(iter(trainer.train_loader))
            with warnings.catch_warnings():
                # NOTE: add_graph traces with torch.jit.trace, which torch 2.14 deprecates
                # with a FutureWarning. The graph is still written.
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
                self.writer.add_graph(model, sample.to(trainer.device))
        model.train(was_training)
        self._graph_written = True
