"""A trainer that runs epochs of training and validation, records losses, and checkpoints for exact resume.

Typical use::

    trainer = Trainer(model, loss_fn, optimizer, train_loader=train_loader, val_loader=val_loader)
    trainer.train(200, seed=42)
    trainer.save_checkpoint("model.pt")

    # later, possibly in another process, with the same model, optimizer and loaders
    trainer.load_checkpoint("model.pt")
    trainer.train(100)  # epochs 201..300

Each batch from a loader must be an ``(x, y)`` pair. The trainer calls only
``forward_model(x)``, which is the model itself unless ``wrap_model`` installed a
wrapper such as ``DistributedDataParallel``. State dicts always come from the
unwrapped ``model``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from stepbystep.training.callbacks import Callback
from stepbystep.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    check_model_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from stepbystep.training.gradients import GradientStats
from stepbystep.training.seeding import capture_rng_state, loader_generators, restore_rng_state, seed_everything
from stepbystep.training.steps import LossFn, make_train_step_fn, make_val_step_fn, make_val_step_with_outputs_fn

logger = logging.getLogger(__name__)

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


class TrainingDiverged(RuntimeError):
    """A training or validation loss that is NaN or infinite at the end of an epoch.

    ``epoch`` is the epoch that produced it, ``loss_name`` is ``"train_loss"`` or
    ``"val_loss"`` and ``value`` is the loss. The trainer raises it before the
    epoch's callbacks run, so no checkpoint of the diverged state is written.
    """

    def __init__(self, epoch: int, loss_name: str, value: float) -> None:
        self.epoch = epoch
        self.loss_name = loss_name
        self.value = value
        super().__init__(
            f"training diverged at epoch {epoch}: {loss_name} is {value}; "
            "lower the learning rate or check the data for invalid values"
        )


class Trainer:
    """Model, loss function, optimizer and loaders, trained epoch by epoch.

    Args:
        model: the module to train; it is moved to ``device``.
        loss_fn: called as ``loss_fn(model(x), y)``.
        optimizer: built on ``model.parameters()``.
        train_loader, val_loader: iterables of ``(x, y)`` batches, such as a
            ``DataLoader`` or a ``BatchedLoader``; ``set_loaders`` can set them later.
        scheduler: an optional LR scheduler. ``ReduceLROnPlateau`` steps on the
            validation loss (the training loss without validation).
        scheduler_interval: ``"epoch"`` steps the scheduler after each epoch,
            ``"batch"`` after each training mini-batch (``OneCycleLR``, ``CyclicLR``).
        device: defaults to CUDA when available, else the CPU.
        metrics: functions ``fn(outputs, targets) -> float`` evaluated once per
            epoch on the model outputs and targets of the whole validation set
            (CPU tensors); recorded as ``val_<name>``.
        callbacks: ``Callback`` objects called during ``train``.
        clip_grad_norm, clip_grad_value: optional gradient clipping (at most one).
        early_stopping_patience: stop after this many epochs in a row without the
            validation loss improving by more than ``early_stopping_min_delta``.
        track_gradients: record per-parameter gradient statistics every epoch.
        progress: show a tqdm bar over epochs; ``None`` shows it only when stderr
            is a terminal. Without the bar, one INFO log line per epoch is written.
        num_threads: intra-op CPU threads (``torch.set_num_threads``) while ``train``
            runs, restored when it returns or raises; ``None`` keeps the process's
            setting. ``stepbystep.training.threads.choose_num_threads`` picks one
            thread for small models.

    Attributes:
        total_epochs: completed epochs, counting from 1 and restored on resume.
        history: per-epoch values by name (``train_loss``, ``val_loss``, ``lr``,
            metrics, gradient statistics); ``losses`` and ``val_losses`` are the
            loss lists.
        stop_training: set by early stopping or a callback to end ``train`` after
            the current epoch.
        best_val_loss, best_epoch: the lowest validation loss seen and its epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        *,
        train_loader: Iterable[Any] | None = None,
        val_loader: Iterable[Any] | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scheduler_interval: Literal["epoch", "batch"] = "epoch",
        device: str | torch.device | None = None,
        metrics: Mapping[str, MetricFn] | None = None,
        callbacks: Sequence[Callback] = (),
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        early_stopping_patience: int | None = None,
        early_stopping_min_delta: float = 0.0,
        track_gradients: bool = False,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        if scheduler_interval not in ("epoch", "batch"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")
        if clip_grad_norm is not None and clip_grad_value is not None:
            raise ValueError("set at most one of clip_grad_norm and clip_grad_value")
        if early_stopping_patience is not None and early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1, got {early_stopping_patience}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")

        self.model = model
        self.forward_model: nn.Module = model
        self.loss_fn = loss_fn
        self.reduce_loss: Callable[[float], float] | None = None
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.metrics = dict(metrics or {})
        self.callbacks = list(callbacks)
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_min_delta = early_stopping_min_delta
        self.progress = progress
        self.num_threads = num_threads

        self.train_loader = train_loader
        self.val_loader = val_loader

        self.total_epochs = 0
        self.history: dict[str, list[Any]] = {"train_loss": [], "val_loss": []}
        self.stop_training = False
        self.best_val_loss = math.inf
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0

        self.gradient_stats = GradientStats(model) if track_gradients else None

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)
        self._build_step_fns()

    # --- setup ---------------------------------------------------------------

    def _build_step_fns(self) -> None:
        # The step functions close over the forward model, so they are rebuilt
        # whenever it changes.
        after_backward = self.gradient_stats.update if self.gradient_stats is not None else None
        self.train_step_fn = make_train_step_fn(
            self.forward_model,
            self.loss_fn,
            self.optimizer,
            clip_grad_norm=self.clip_grad_norm,
            clip_grad_value=self.clip_grad_value,
            after_backward=after_backward,
        )
        self.val_step_fn = make_val_step_fn(self.forward_model, self.loss_fn)
        self._val_step_with_outputs_fn = make_val_step_with_outputs_fn(self.forward_model, self.loss_fn)

    def set_loaders(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None) -> None:
        """Set the training loader and, optionally, the validation loader."""
        self.train_loader = train_loader
        self.val_loader = val_loader

    def add_callback(self, callback: Callback) -> None:
        """Append ``callback`` to the callbacks called during ``train``."""
        self.callbacks.append(callback)

    def to(self, device: str | torch.device) -> Trainer:
        """Move the model and the optimizer state to ``device`` and return self. Batches go there too."""
        self.device = torch.device(device)
        self.model.to(self.device)
        # load_state_dict casts the optimizer state to each parameter's device
        # (keeping the tensors that optimizers expect on the CPU, such as Adam's step).
        self.optimizer.load_state_dict(self.optimizer.state_dict())
        return self

    def wrap_model(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Run forward and backward passes through ``wrapper(self.model)`` from now on.

        This is the hook for ``DistributedDataParallel``:
        ``trainer.wrap_model(lambda m: DistributedDataParallel(m, device_ids=[rank]))``.
        The optimizer must already hold ``self.model``'s parameters, and checkpoints,
        ``predict`` and ``layer_weights`` keep using the unwrapped ``self.model``.
        """
        self.forward_model = wrapper(self.model)
        self._build_step_fns()

    def set_loss_reduction(self, reduce_loss: Callable[[float], float]) -> None:
        """Pass each epoch's training and validation loss through ``reduce_loss`` before it is checked and recorded.

        Under ``DistributedDataParallel`` each process computes the loss of its own
        share of the data, and ``reduce_loss`` averages it across processes, so all
        of them record the same values and stop at the same epoch.
        """
        self.reduce_loss = reduce_loss

    def named_generators(self) -> dict[str, torch.Generator]:
        """Return the ``torch.Generator`` objects of the loaders, keyed by attribute path."""
        return loader_generators({"train_loader": self.train_loader, "val_loader": self.val_loader})

    def set_seed(self, seed: int) -> None:
        """Seed torch, NumPy, Python's ``random`` and every generator of the loaders with ``seed``."""
        seed_everything(seed, {"train_loader": self.train_loader, "val_loader": self.val_loader})

    # --- properties ----------------------------------------------------------

    @property
    def losses(self) -> list[float]:
        """Training loss per epoch, the mean of the mini-batch losses."""
        return self.history["train_loss"]

    @property
    def val_losses(self) -> list[float | None]:
        """Validation loss per epoch (``None`` for epochs without validation)."""
        return self.history["val_loss"]

    def count_parameters(self) -> int:
        """Return the number of trainable parameters of the model."""
        return sum(parameter.numel() for parameter in self.model.parameters() if parameter.requires_grad)

    def layer_weights(self, name: str) -> np.ndarray:
        """Return a copy of a parameter, or of a layer's ``weight``, as a NumPy array.

        ``name`` is a parameter name from ``model.named_parameters()`` (``"1.weight"``)
        or a module name from ``model.named_modules()`` (``"1"``). Raises ``KeyError``
        listing the valid names when ``name`` is neither, and ``ValueError`` when the
        module has no ``weight`` tensor.
        """
        parameters = dict(self.model.named_parameters())
        if name in parameters:
            return parameters[name].detach().cpu().numpy().copy()

        modules = dict(self.model.named_modules())
        if name not in modules:
            raise KeyError(
                f"no parameter or layer named {name!r}; parameters: {sorted(parameters)}, "
                f"layers: {sorted(key for key in modules if key)}"
            )
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"layer {name!r} ({type(modules[name]).__name__}) has no weight tensor")
        return weight.detach().cpu().numpy().copy()

    # --- prediction ----------------------------------------------------------

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return the model's outputs for ``x`` as a NumPy array, computed in eval mode without gradients.

        Floating-point inputs are cast to the dtype of the model's first parameter.
        The model's train or eval mode is restored afterwards.
        """
        x_tensor = torch.as_tensor(x)
        first_parameter = next(self.model.parameters(), None)
        if x_tensor.is_floating_point() and first_parameter is not None:
            x_tensor = x_tensor.to(dtype=first_parameter.dtype)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yhat = self.model(x_tensor.to(self.device))
        finally:
            self.model.train(was_training)
        return yhat.detach().cpu().numpy()

    # --- training ------------------------------------------------------------

    def train(self, n_epochs: int, seed: int | None = None) -> dict[str, list[Any]]:
        """Train for ``n_epochs`` more epochs and return ``history``.

        Epochs are numbered from ``total_epochs + 1``, so calling ``train`` again, or
        after ``load_checkpoint``, continues where training stopped. With ``seed``,
        every random number generator is seeded first (``set_seed``); leave it out
        when continuing, or the continuation will differ from an uninterrupted run.
        Training ends early when ``stop_training`` becomes true.

        Raises ``TrainingDiverged`` when an epoch's training or validation loss is
        NaN or infinite.
        """
        if n_epochs < 0:
            raise ValueError(f"n_epochs must not be negative, got {n_epochs}")
        if self.train_loader is None:
            raise ValueError("no training loader: pass train_loader or call set_loaders first")
        if self.early_stopping_patience is not None and self.val_loader is None:
            raise ValueError("early stopping monitors the validation loss, so it needs a validation loader")

        if seed is not None:
            self.set_seed(seed)
        self.stop_training = False

        previous_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            self._train_epochs(n_epochs)
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(previous_threads)
        return self.history

    def _train_epochs(self, n_epochs: int) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(self)

        first_epoch = self.total_epochs + 1
        last_epoch = self.total_epochs + n_epochs
        show_bar = self.progress if self.progress is not None else sys.stderr.isatty()
        bar = _make_progress_bar(first_epoch, last_epoch) if show_bar else None
        try:
            for epoch in range(first_epoch, last_epoch + 1):
                logs = self._run_epoch(epoch)
                self.total_epochs = epoch
                for callback in self.callbacks:
                    callback.on_epoch_end(self, epoch, logs)
                self._report_epoch(bar, epoch, last_epoch, logs)
                if self.stop_training:
                    logger.info("training stopped after epoch %d", epoch)
                    break
        finally:
            if bar is not None:
                bar.close()

        for callback in self.callbacks:
            callback.on_train_end(self)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        if self.gradient_stats is not None:
            # Drops statistics left over from an epoch that raised.
            self.gradient_stats.reset()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_loss = self._train_pass(epoch)
        if self.reduce_loss is not None:
            train_loss = self.reduce_loss(train_loss)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(epoch, "train_loss", train_loss)

        logs: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "val_loss": None, "lr": lr}
        if self.val_loader is not None:
            val_loss, metric_values = self._val_pass()
            if self.reduce_loss is not None:
                val_loss = self.reduce_loss(val_loss)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(epoch, "val_loss", val_loss)
            logs["val_loss"] = val_loss
            logs.update(metric_values)
        if self.gradient_stats is not None:
            logs.update(self.gradient_stats.pop_epoch_stats())

        self._step_epoch_scheduler(logs)
        self._update_early_stopping(epoch, logs["val_loss"])

        for key, value in logs.items():
            if key != "epoch":
                self.history.setdefault(key, []).append(value)
        return logs

    def _train_pass(self, epoch: int) -> float:
        # DistributedSampler draws a new order only after set_epoch, which takes a 0-based index.
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)

        train_step_fn = self.train_step_fn
        device = self.device
        batch_scheduler = self.scheduler if self.scheduler_interval == "batch" else None
        mini_batch_losses = []
        for x_batch, y_batch in self.train_loader:
            x_batch = x_batch.to(device)
            y_batch = y_batch.to(device)
            mini_batch_losses.append(train_step_fn(x_batch, y_batch))
            if batch_scheduler is not None:
                batch_scheduler.step()

        if not mini_batch_losses:
            raise ValueError("the training loader yielded no batches")
        # The epoch loss is the unweighted mean of the mini-batch losses.
        return float(np.mean(mini_batch_losses))

    def _val_pass(self) -> tuple[float, dict[str, float]]:
        device = self.device
        mini_batch_losses = []
        outputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        # The validation step functions set eval mode and run under torch.no_grad().
        for x_batch, y_batch in self.val_loader:
            x_batch = x_batch.to(device)
            y_batch = y_batch.to(device)
            if self.metrics:
                loss, yhat = self._val_step_with_outputs_fn(x_batch, y_batch)
                outputs.append(yhat)
                targets.append(y_batch)
            else:
                loss = self.val_step_fn(x_batch, y_batch)
            mini_batch_losses.append(loss)

        if not mini_batch_losses:
            raise ValueError("the validation loader yielded no batches")
        metric_values: dict[str, float] = {}
        if self.metrics:
            all_outputs = torch.cat(outputs).cpu()
            all_targets = torch.cat(targets).cpu()
            for name, metric_fn in self.metrics.items():
                metric_values[f"val_{name}"] = float(metric_fn(all_outputs, all_targets))
        return float(np.mean(mini_batch_losses)), metric_values

    def _step_epoch_scheduler(self, logs: dict[str, Any]) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitored = logs["val_loss"] if logs["val_loss"] is not None else logs["train_loss"]
            self.scheduler.step(monitored)
        else:
            self.scheduler.step()

    def _update_early_stopping(self, epoch: int, val_loss: float | None) -> None:
        if val_loss is None:
            return
        if val_loss < self.best_val_loss - self.early_stopping_min_delta:
            self.best_val_loss = val_loss
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1

        patience = self.early_stopping_patience
        if patience is not None and self.epochs_without_improvement >= patience:
            logger.info(
                "early stopping at epoch %d: no val_loss improvement for %d epochs (best %.6g at epoch %s)",
                epoch,
                patience,
                self.best_val_loss,
                self.best_epoch,
            )
            self.stop_training = True

    def _report_epoch(self, bar: Any, epoch: int, last_epoch: int, logs: dict[str, Any]) -> None:
        val_loss = logs["val_loss"]
        val_text = "n/a" if val_loss is None else f"{val_loss:.6f}"
        if bar is not None:
            bar.set_postfix(train_loss=f"{logs['train_loss']:.6f}", val_loss=val_text, refresh=False)
            bar.update(1)
            # The bar already shows this; DEBUG keeps it available to file handlers.
            level = logging.DEBUG
        else:
            level = logging.INFO
        logger.log(level, "epoch %d/%d train_loss=%.6f val_loss=%s", epoch, last_epoch, logs["train_loss"], val_text)

    # --- checkpoints ---------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write everything needed to resume training exactly to ``path``, atomically.

        ``metadata`` (model configuration, preprocessing statistics, ...) may contain
        only ``None``, ``bool``, ``int``, ``float``, ``str``, tensors, lists, tuples
        and dicts with string keys. Any other value raises ``TypeError``, naming
        the value, before anything is written. The checkpoint keys are listed in
        ``stepbystep.training.checkpoint``.
        """
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "epoch": self.total_epochs,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "optimizer_class": type(self.optimizer).__name__,
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scheduler_class": type(self.scheduler).__name__ if self.scheduler is not None else None,
            "history": {key: list(values) for key, values in self.history.items()},
            "early_stopping": {
                "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.epochs_without_improvement,
            },
            "rng_state": capture_rng_state(self.named_generators()),
            "metadata": metadata if metadata is not None else {},
            "torch_version": str(torch.__version__),
        }
        save_checkpoint(path, checkpoint)
        logger.debug("saved checkpoint of epoch %d to %s", self.total_epochs, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore the state saved by ``save_checkpoint`` and return its metadata.

        Restores the model, optimizer and scheduler states, ``total_epochs``, the
        history, early-stopping state and every RNG state, so that ``train(n)``
        continues with epoch ``total_epochs + 1`` exactly as an uninterrupted run
        would. The trainer must be built with the same architecture, optimizer and
        scheduler types, and loaders built the same way.

        Raises ``CheckpointError`` naming the file when it cannot be read or does not
        fit this trainer; the trainer is then left unchanged.
        """
        checkpoint = load_checkpoint(path)
        self._check_fits(path, checkpoint)

        self.model.load_state_dict(checkpoint["model_state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])

        self.total_epochs = checkpoint["epoch"]
        self.history = {key: list(values) for key, values in checkpoint["history"].items()}
        early_stopping = checkpoint.get("early_stopping", {})
        self.best_val_loss = early_stopping.get("best_val_loss", math.inf)
        self.best_epoch = early_stopping.get("best_epoch")
        self.epochs_without_improvement = early_stopping.get("epochs_without_improvement", 0)

        restore_rng_state(checkpoint["rng_state"], self.named_generators())
        logger.info("resumed from checkpoint %s at epoch %d", path, self.total_epochs)
        return checkpoint["metadata"]

    def _check_fits(self, path: str | os.PathLike[str], checkpoint: Mapping[str, Any]) -> None:
        check_model_state_dict(path, self.model, checkpoint["model_state_dict"])

        optimizer_class = checkpoint.get("optimizer_class")
        if optimizer_class is not None and optimizer_class != type(self.optimizer).__name__:
            raise CheckpointError(
                path, f"optimizer state is for {optimizer_class}, but the trainer uses {type(self.optimizer).__name__}"
            )
        saved_groups = checkpoint["optimizer_state_dict"].get("param_groups", [])
        saved_sizes = [len(group["params"]) for group in saved_groups]
        current_sizes = [len(group["params"]) for group in self.optimizer.param_groups]
        if saved_sizes != current_sizes:
            raise CheckpointError(
                path,
                f"optimizer parameter groups hold {saved_sizes} parameters, but the trainer's hold {current_sizes}",
            )

        has_saved_scheduler = checkpoint["scheduler_state_dict"] is not None
        if has_saved_scheduler != (self.scheduler is not None):
            raise CheckpointError(
                path,
                "checkpoint has a scheduler state but the trainer has no scheduler"
                if has_saved_scheduler
                else "trainer has a scheduler but the checkpoint has no scheduler state",
            )
        scheduler_class = checkpoint.get("scheduler_class")
        if self.scheduler is not None and scheduler_class not in (None, type(self.scheduler).__name__):
            raise CheckpointError(
                path, f"scheduler state is for {scheduler_class}, but the trainer uses {type(self.scheduler).__name__}"
            )


def _make_progress_bar(first_epoch: int, last_epoch: int) -> Any:
    # Imported here so that non-interactive runs do not pay for tqdm.
    from tqdm import tqdm

    return tqdm(
        total=last_epoch - first_epoch + 1,
        initial=0,
        desc=f"epochs {first_epoch}-{last_epoch}",
        unit="epoch",
        file=sys.stderr,
        dynamic_ncols=True,
    )
