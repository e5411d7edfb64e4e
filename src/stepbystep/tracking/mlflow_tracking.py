"""MLflow tracking for the training and evaluation stages.

A training stage wraps its work in :func:`start_training_run`, passes an
:class:`MlflowCallback` to the trainer, and logs the final model and a code
snapshot before the block ends::

    with start_training_run("stepbystep", "moons_logistic", "train_classifier", config) as run:
        trainer.add_callback(MlflowCallback(checkpoint_every=25, checkpoint_path_fn=lambda epoch: resume_file))
        trainer.train(epochs)
        log_final_model(trainer.model, x_example)
        log_code_snapshot()

The evaluation stage adds its metrics to the finished training runs with
:func:`log_metrics_to_run` and records one comparison run per evaluation with
:func:`start_comparison_run`. Where runs go is decided in
:mod:`stepbystep.tracking.mlflow_store`. MLflow is imported on first use.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Real
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from stepbystep.errors import UserError
from stepbystep.tracking.mlflow_store import (
    DEFAULT_EXPERIMENT_NAME,
    artifact_location,
    call_with_retries,
    check_tracking_server,
    connect,
    get_or_create_experiment,
    import_mlflow,
    project_root,
    tracking_uri,
)
from stepbystep.training.callbacks import Callback

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import ActiveRun, MlflowClient
    from mlflow.models.model import ModelInfo

    from stepbystep.training.trainer import Trainer

__all__ = [
    "CODE_PATHS",
    "DEFAULT_EXPERIMENT_NAME",
    "MlflowCallback",
    "RunTerminated",
    "add_to_run",
    "artifact_location",
    "check_tracking_server",
    "epoch_metrics",
    "flatten_params",
    "get_or_create_experiment",
    "log_code_snapshot",
    "log_comparison_run",
    "log_final_checkpoint",
    "log_final_model",
    "log_history",
    "log_metrics_to_run",
    "project_root",
    "start_comparison_run",
    "start_training_run",
    "tracking_uri",
]

logger = logging.getLogger(__name__)

# MLflow 3.17 rejects longer param values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000
_TRUNCATION_MARK = "...[truncated]"

CODE_PATHS = ("src", "stages", "params.yaml", "dvc.yaml")
_IGNORED_CODE = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")

CHECKPOINT_ARTIFACT_DIR = "checkpoints"

# Seconds between two writes of buffered epoch metrics. The MLflow UI shows a
# running training at most this long, plus one epoch, behind.
DEFAULT_FLUSH_INTERVAL_S = 5.0
EVALUATION_ARTIFACT_DIR = "evaluation"
COMPARISON_ARTIFACT_DIR = "comparison"


class RunTerminated(KeyboardInterrupt):
    """Signal that SIGTERM arrived during a tracked run, a ``KeyboardInterrupt`` so that the run ends KILLED."""


# ---------------------------------------------------------------------------
# Params and tags


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: dotted keys, string values.

    Lists and tuples become JSON (``[8, 4]``), an empty mapping becomes ``{}``
    so that its key is kept, and other values become ``str(value)``. A pydantic
    model is read with ``model_dump()``.
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")

    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten_params(value, prefix=f"{name}."))
            else:
                flat[name] = "{}"
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = str(value)
    return flat


def _limit_param_value(key: str, value: str) -> str:
    if len(value) <= MAX_PARAM_VALUE_LENGTH:
        return value
    logger.warning(
        "param %s has %d characters, more than MLflow's max of %d, so it is logged truncated",
        key,
        len(value),
        MAX_PARAM_VALUE_LENGTH,
    )
    return value[: MAX_PARAM_VALUE_LENGTH - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def git_commit(folder: str | os.PathLike[str] | None = None) -> str | None:
    """Return ``git rev-parse HEAD`` in ``folder`` (default: the current directory), or ``None`` outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _dvc_tags(stage_name: str) -> dict[str, str]:
    """Return the DVC context tags. ``dvc_stage`` prefers ``DVC_STAGE``, which names a ``foreach`` item."""
    values = {
        "dvc_stage": os.environ.get("DVC_STAGE") or stage_name,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
        # The stage runs in the current directory, which under `dvc exp run
        # --temp` is the temporary copy checked out at the baseline commit.
        "git_commit": git_commit(),
    }
    return {key: value for key, value in values.items() if value}


def _run_name(name: str) -> str:
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{experiment}-{name}" if experiment else name


# ---------------------------------------------------------------------------
# Run lifetime


@contextlib.contextmanager
def _sigterm_raises_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`RunTerminated` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: object) -> None:
        raise RunTerminated(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _end_active_run(run_id: str, status: str, failing: bool) -> None:
    """End the active run ``run_id`` with ``status``.

    While another error propagates (``failing``), a failure here is logged, not raised.
    """
    mlflow = import_mlflow()
    try:
        call_with_retries(lambda: mlflow.end_run(status), f"ending MLflow run {run_id} as {status}")
    except Exception as error:
        if not failing:
            raise
        # The propagating error explains the failure, so the traceback is logged only at DEBUG level.
        logger.error(
            "failed to end MLflow run %s as %s: %s", run_id, status, error, exc_info=logger.isEnabledFor(logging.DEBUG)
        )


# Functions that write the metrics buffered for each run, keyed by run id.
# _tracked_run calls them when the run ends (see MlflowCallback.flush).
_pending_flushes: dict[str, list[Callable[[], None]]] = {}


def _flush_pending_metrics(run_id: str, failing: bool) -> None:
    """Write the metrics that callbacks buffered for ``run_id``.

    While another error propagates (``failing``), a failure here is logged, not raised.
    """
    for flush in _pending_flushes.pop(run_id, []):
        try:
            flush()
        except Exception as error:
            if not failing:
                raise
            logger.error(
                "failed to write buffered metrics to MLflow run %s: %s",
                run_id,
                error,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )


@contextlib.contextmanager
def _tracked_run(run: ActiveRun) -> Iterator[ActiveRun]:
    """End ``run`` FINISHED when the block succeeds, KILLED on an interrupt or SIGTERM, FAILED on other exceptions.

    Metrics that callbacks still buffer are written first, whatever the outcome.
    """
    run_id = run.info.run_id
    try:
        with _sigterm_raises_interrupt():
            yield run
    except KeyboardInterrupt:
        logger.warning("MLflow run %s interrupted, marking it KILLED", run_id)
        _flush_pending_metrics(run_id, failing=True)
        _end_active_run(run_id, "KILLED", failing=True)
        raise
    except BaseException as error:
        _flush_pending_metrics(run_id, failing=True)
        _end_active_run(run_id, "FAILED", failing=True)
        _raise_if_server_lost(run_id, error)
        raise
    try:
        _flush_pending_metrics(run_id, failing=False)
    except BaseException as error:
        _end_active_run(run_id, "FAILED", failing=True)
        _raise_if_server_lost(run_id, error)
        raise
    _end_active_run(run_id, "FINISHED", failing=False)


def _raise_if_server_lost(run_id: str, error: BaseException) -> None:
    """Raise :class:`UserError` from ``error`` when it is an MLflow error and the tracking server no longer responds.

    A server that stops during a run makes MLflow raise, after its retries, an
    ``MlflowException`` whose traceback buries the cause. One request to the
    server's health endpoint distinguishes that case from other MLflow errors.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return
    try:
        check_tracking_server(import_mlflow().get_tracking_uri())
    except UserError as lost:
        raise UserError(f"MLflow run {run_id} stopped: {lost}") from error


def _start_run(experiment_id: str, run_name: str, tags: Mapping[str, str]) -> ActiveRun:
    mlflow = import_mlflow()
    return call_with_retries(
        lambda: mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)),
        f"starting the MLflow run {run_name!r}",
    )


def _end_interrupted_run(client: MlflowClient, run_id: str) -> None:
    """End ``run_id`` as KILLED when it is still RUNNING.

    A process killed by SIGKILL cannot end its run, which would otherwise stay
    RUNNING forever. A run that the store does not contain, such as one
    recorded in another store, is logged and skipped.
    """
    from mlflow.exceptions import MlflowException

    try:
        status = client.get_run(run_id).info.status
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        logger.warning("interrupted MLflow run %s not found in this store, so its status is left as it is", run_id)
        return
    if status != "RUNNING":
        return
    call_with_retries(lambda: client.set_terminated(run_id, "KILLED"), f"ending MLflow run {run_id} as KILLED")
    logger.warning("MLflow run %s of an interrupted training was still RUNNING, marked it KILLED", run_id)


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(key, _limit_param_value(key, value)) for key, value in params.items()]
    if entries:
        call_with_retries(lambda: client.log_batch(run_id, params=entries), f"logging params to run {run_id}")


@contextlib.contextmanager
def start_training_run(
    experiment_name: str,
    model_name: str,
    stage_name: str,
    params: Mapping[str, Any],
    resumed_from_run_id: str | None = None,
    project_root: str | os.PathLike[str] | None = None,
    interrupted_run_id: str | None = None,
) -> Iterator[ActiveRun]:
    """Start the MLflow run of one model's training, yield it, and end it with the outcome's status.

    The run is named ``<DVC_EXP_NAME>-<model_name>``, or ``model_name`` outside
    ``dvc exp run``, and tagged with ``model_name``, ``run_type``, the DVC context
    (``dvc_stage``, ``dvc_exp_name``, ``dvc_baseline_rev``), ``git_commit`` and,
    for a resumed training, ``resumed_from``. ``params``, the model's resolved
    config, is logged flattened (see :func:`flatten_params`).

    The run ends FINISHED when the block succeeds, KILLED on ``KeyboardInterrupt``
    or SIGTERM (raised in the block as :class:`RunTerminated`), and FAILED on any
    other exception, which is re-raised. Raises :class:`UserError` before
    starting when the tracking server does not respond.

    ``interrupted_run_id`` names the run of an earlier training of the same
    model that a signal or crash ended. If that run is still RUNNING, it is
    ended KILLED first, so the caller must know that its process is gone.
    """
    uri = connect(project_root)
    experiment_id = get_or_create_experiment(experiment_name, uri, project_root)
    mlflow = import_mlflow()
    if interrupted_run_id:
        _end_interrupted_run(mlflow.MlflowClient(uri), interrupted_run_id)

    tags = {"model_name": model_name, "run_type": "training", **_dvc_tags(stage_name)}
    if resumed_from_run_id:
        tags["resumed_from"] = resumed_from_run_id

    run = _start_run(experiment_id, _run_name(model_name), tags)
    logger.info(
        "MLflow run %s (%s) in experiment %r at %s", run.info.run_id, run.info.run_name, experiment_name, uri
    )
    with _tracked_run(run):
        _log_params(mlflow.MlflowClient(uri), run.info.run_id, flatten_params(params))
        yield run


# ---------------------------------------------------------------------------
# Metrics and checkpoints during training


def epoch_metrics(logs: Mapping[str, Any], epoch: int, timestamp_ms: int | None = None) -> list[Any]:
    """Return the real-number values of ``logs`` as MLflow metrics at ``step=epoch``.

    ``None``, booleans, strings and other non-numbers are skipped, and so is the
    ``epoch`` key, which is the step already. NaN and infinity are kept because
    they show a diverging loss. MLflow 3.17 stores infinity as +-1.8e308.
    """
    from mlflow.entities import Metric

    timestamp_ms = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    metrics = []
    for key, value in logs.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, Real):
            continue
        metrics.append(Metric(key=key, value=float(value), timestamp=timestamp_ms, step=epoch))
    return metrics


def _active_run_id() -> str:
    run = import_mlflow().active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call this inside start_training_run(...) or pass run_id")
    return run.info.run_id


def _log_checkpoint(client: MlflowClient, run_id: str, path: Path, artifact_name: str) -> None:
    """Log ``path`` as ``checkpoints/<artifact_name>``.

    A renamed copy gives each epoch its own artifact even when the stage reuses one file.
    """
    with tempfile.TemporaryDirectory(prefix="mlflow-checkpoint-") as folder:
        staged = Path(folder) / artifact_name
        shutil.copyfile(path, staged)
        call_with_retries(
            lambda: client.log_artifact(run_id, str(staged), CHECKPOINT_ARTIFACT_DIR),
            f"logging checkpoint {path} to run {run_id}",
        )


class MlflowCallback(Callback):
    """Log every epoch's numeric logs to MLflow and, every ``checkpoint_every`` epochs, the checkpoint file.

    Each epoch's metrics get ``step=epoch`` and the time the epoch ended (see
    :func:`epoch_metrics`). They are buffered and written in one ``log_batch``
    call at the first epoch end ``flush_interval_s`` seconds after the last
    write, at every checkpoint epoch and when training ends.
    :func:`start_training_run` also writes them when its run ends for any
    reason, an exception included. For another run, call :meth:`flush` when a
    training raises, or the metrics since the last write are lost.
    ``flush_interval_s=0`` writes every epoch. One write takes 20-30 ms with
    SQLite on the 2-core machine of BENCHMARKS.md, longer than an epoch of the
    chapter 4 models, while 500 epochs take 0.4 s in one write.

    When ``epoch % checkpoint_every == 0`` the file ``checkpoint_path_fn(epoch)``,
    which a checkpoint callback earlier in the list writes, is logged as
    ``checkpoints/epoch_<epoch:04d><suffix>``. A missing file is logged as a
    warning, not raised. ``checkpoint_every=0`` or no ``checkpoint_path_fn``
    logs no checkpoints. The run is ``run_id`` or the active run when training begins.
    """

    def __init__(
        self,
        checkpoint_every: int = 0,
        checkpoint_path_fn: Callable[[int], str | os.PathLike[str]] | None = None,
        run_id: str | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    ) -> None:
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (off) or a positive number of epochs, got {checkpoint_every}")
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be 0 (every epoch) or a positive number of seconds, got {flush_interval_s}")
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path_fn = checkpoint_path_fn
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.logged_checkpoints: list[str] = []
        self._client: MlflowClient | None = None
        self._buffer: list[Any] = []
        self._last_flush = time.monotonic()

    def on_train_begin(self, trainer: Trainer) -> None:
        mlflow = import_mlflow()
        if self.run_id is None:
            self.run_id = _active_run_id()
        self._client = mlflow.MlflowClient()
        self._last_flush = time.monotonic()
        flushes = _pending_flushes.setdefault(self.run_id, [])
        if self.flush not in flushes:
            flushes.append(self.flush)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self._require_client()
        self._buffer.extend(epoch_metrics(logs, epoch))

        checkpoint_due = bool(
            self.checkpoint_every and self.checkpoint_path_fn is not None and epoch % self.checkpoint_every == 0
        )
        if checkpoint_due or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

        if checkpoint_due:
            client, run_id = self._require_client()
            path = Path(self.checkpoint_path_fn(epoch))
            if not path.is_file():
                logger.warning(
                    "checkpoint %s of epoch %d not found, so it is not logged to MLflow run %s", path, epoch, run_id
                )
                return
            artifact_name = f"epoch_{epoch:04d}{path.suffix}"
            _log_checkpoint(client, run_id, path, artifact_name)
            self.logged_checkpoints.append(f"{CHECKPOINT_ARTIFACT_DIR}/{artifact_name}")

    def on_train_end(self, trainer: Trainer) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the buffered metrics to the run in one ``log_batch`` call, which MLflow splits into batches of 1000."""
        if not self._buffer:
            return
        client, run_id = self._require_client()
        metrics, self._buffer = self._buffer, []
        call_with_retries(
            lambda: client.log_batch(run_id, metrics=metrics), f"logging {len(metrics)} epoch metrics to run {run_id}"
        )
        self._last_flush = time.monotonic()

    def _require_client(self) -> tuple[MlflowClient, str]:
        if self._client is None or self.run_id is None:
            raise RuntimeError("MlflowCallback.on_train_begin must run before on_epoch_end")
        return self._client, self.run_id


def log_history(history: Mapping[str, Sequence[Any]], total_epochs: int, run_id: str | None = None) -> int:
    """Log a resumed trainer's per-epoch ``history`` with steps 1 to ``total_epochs``, and return the metric count.

    A resumed training gets a new run, so this copies the curves of the epochs
    trained before the interruption into it. Each list ends at epoch
    ``total_epochs``, so a list shorter than ``total_epochs`` starts later.
    Values are filtered as in :func:`epoch_metrics`.
    """
    mlflow = import_mlflow()
    run_id = run_id or _active_run_id()
    timestamp_ms = int(time.time() * 1000)

    metrics = []
    for key, values in history.items():
        values = list(values)[-total_epochs:] if total_epochs > 0 else []
        first_epoch = total_epochs - len(values) + 1
        for offset, value in enumerate(values):
            metrics.extend(epoch_metrics({key: value}, first_epoch + offset, timestamp_ms))
    if metrics:
        client = mlflow.MlflowClient()
        call_with_retries(lambda: client.log_batch(run_id, metrics=metrics), f"logging history to run {run_id}")
    return len(metrics)


def log_final_checkpoint(path: str | os.PathLike[str], run_id: str | None = None) -> None:
    """Log the final checkpoint file under ``checkpoints/`` with its own name."""
    mlflow = import_mlflow()
    run_id = run_id or _active_run_id()
    client = mlflow.MlflowClient()
    call_with_retries(
        lambda: client.log_artifact(run_id, str(path), CHECKPOINT_ARTIFACT_DIR), f"logging checkpoint {path}"
    )


# ---------------------------------------------------------------------------
# Model and code


def _import_mlflow_pytorch() -> ModuleType:
    """Import and return ``mlflow.pytorch`` without importing ``pytorch_lightning``.

    MLflow 3.17 imports ``pytorch_lightning`` with ``mlflow.pytorch`` whenever
    it is installed, as the ``bench`` extra does, only to export a Lightning
    checkpoint callback. That import takes 3-5 s on the 2-core machine of
    BENCHMARKS.md. A ``None`` entry in ``sys.modules`` makes it raise
    ``ImportError``, which MLflow expects when Lightning is missing. The entry
    is removed again, so Lightning can still be imported later in the process,
    but ``mlflow.pytorch`` then lacks ``MlflowModelCheckpointCallback``.
    """
    if "mlflow.pytorch" not in sys.modules and "pytorch_lightning" not in sys.modules:
        sys.modules["pytorch_lightning"] = None  # type: ignore[assignment]
        try:
            import mlflow.pytorch
        finally:
            if sys.modules.get("pytorch_lightning", 0) is None:
                del sys.modules["pytorch_lightning"]
    import mlflow.pytorch

    return mlflow.pytorch


@contextlib.contextmanager
def _without_package_scan() -> Iterator[None]:
    """Let MLflow check a model's pip requirements without mapping every installed package to its modules first.

    Logging a model makes MLflow 3.17 compare the requirements with the
    installed versions. Before the first comparison in a process it reads the
    file list of every installed distribution to build a package-to-module
    map (``mlflow.utils.requirements_utils._MODULES_TO_PACKAGES``). With
    PyTorch's CUDA wheels installed that takes about 1 s on the 2-core machine
    of BENCHMARKS.md. The map only supplies a module name for packages whose
    version ``importlib.metadata`` cannot find, and the requirements logged
    here (torch, cloudpickle, mlflow) are all found. An empty map during the
    block skips the scan, and the unbuilt state is restored afterwards.
    """
    from mlflow.utils import requirements_utils

    # NOTE: a private attribute of MLflow 3.17. Without it the scan runs as before.
    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", "missing") is not None:
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None
        requirements_utils._PACKAGES_TO_MODULES = None


def _trial_export(model: torch.nn.Module, example: np.ndarray) -> tuple[Any, str | None]:
    """Export ``model`` on ``example`` as MLflow's ``pt2`` format does, and return ``(program, None)``.

    When ``torch.export`` raises, return ``(None, message)`` with the first
    line of its error instead. Trying first keeps a failed export from leaving
    a FAILED logged model in the experiment, which MLflow 3.17 records when
    ``log_model`` raises.
    """
    import torch

    batch = {0: torch.export.Dim.AUTO}
    try:
        program = torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes=[batch])
    except Exception as error:
        lines = str(error).strip().splitlines()
        return None, f"{type(error).__name__}: {lines[0] if lines else ''}"
    return program, None


@contextlib.contextmanager
def _reused_export(model: torch.nn.Module, example: np.ndarray, program: Any) -> Iterator[None]:
    """Let MLflow's export of ``model`` on ``example`` return ``program``, the trial's result, instead of exporting again.

    ``mlflow.pytorch.save_model`` in MLflow 3.17 calls
    ``torch.export.export(model, (tensor,), dynamic_shapes=[{0: Dim.AUTO}])``
    for a tensor signature whose batch dimension alone is variable. That is
    the call of :func:`_trial_export`, which gives the same program. While the
    block runs, ``torch.export.export`` returns ``program`` for that module
    with an equal example tensor and the same dynamic shapes. Any other call
    exports as before, so a changed call in MLflow costs a second export but
    never gives a wrong program. The original function is restored afterwards.
    """
    import torch

    export = torch.export.export
    expected_shapes = [{0: torch.export.Dim.AUTO}]

    def is_trial_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if len(args) != 2 or args[0] is not model or set(kwargs) != {"dynamic_shapes"}:
            return False
        inputs, shapes = args[1], kwargs["dynamic_shapes"]
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
            return False
        if not isinstance(shapes, (tuple, list)) or list(shapes) != expected_shapes:
            return False
        tensor = inputs[0]
        return (
            tensor.dtype == torch.float32
            and tuple(tensor.shape) == example.shape
            and torch.equal(tensor, torch.from_numpy(example))
        )

    def export_once(*args: Any, **kwargs: Any) -> Any:
        if is_trial_call(args, kwargs):
            return program
        return export(*args, **kwargs)

    torch.export.export = export_once
    try:
        yield
    finally:
        torch.export.export = export


def log_final_model(model: torch.nn.Module, input_example: np.ndarray, name: str = "model") -> ModelInfo:
    """Log ``model`` as an MLflow PyTorch model with a tensor signature, and return its ``ModelInfo``.

    The model is logged in MLflow's ``pt2`` format (``torch.export``), and with
    ``pickle`` when a trial export fails, as a data-dependent branch in
    ``forward`` makes it. MLflow saves the program of the trial export, so a
    ``pt2`` model is exported once. A pickled model loads only where its classes can be imported.
    The example is cast to float32. A one-row example is doubled, because
    ``torch.export`` fixes a batch dimension of size 1 and the logged model would
    then accept only one row. The signature comes from a forward pass of a CPU
    copy in eval mode, so ``model`` itself is left as it was. The chosen format
    is stored in the run tag ``model_serialization``. Raises ``RuntimeError``
    without an active run, because MLflow would otherwise log a model that
    belongs to no run.
    """
    mlflow = import_mlflow()
    _import_mlflow_pytorch()
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    run_id = _active_run_id()
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim == 0:
        raise ValueError("input_example must have a batch dimension, got a scalar")
    if example.shape[0] == 1:
        example = np.concatenate([example, example])

    cpu_model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        output = cpu_model(torch.from_numpy(example))
    signature = infer_signature(example, output.numpy())

    # Explicit requirements skip MLflow's inference of them, which loads the
    # model again in a subprocess.
    common = {
        "name": name,
        "signature": signature,
        "input_example": example,
        "pip_requirements": mlflow.pytorch.get_default_pip_requirements(),
    }
    program, export_error = _trial_export(cpu_model, example)
    with _without_package_scan():
        if export_error is None:
            with _reused_export(cpu_model, example, program):
                info = mlflow.pytorch.log_model(cpu_model, serialization_format="pt2", **common)
            serialization = "pt2"
        else:
            logger.warning("torch.export failed for model %r (%s), so it is logged with pickle", name, export_error)
            info = mlflow.pytorch.log_model(cpu_model, serialization_format="pickle", **common)
            serialization = "pickle"

    client = mlflow.MlflowClient()
    call_with_retries(
        lambda: client.set_tag(run_id, "model_serialization", serialization), f"tagging run {run_id}"
    )
    logger.info("logged model %r as %s to %s", name, serialization, info.model_uri)
    return info


def log_code_snapshot(
    root: str | os.PathLike[str] | None = None, artifact_path: str = "code", run_id: str | None = None
) -> list[str]:
    """Log ``src/``, ``stages/``, ``params.yaml`` and ``dvc.yaml`` of ``root`` under ``code/``, and return their names.

    ``__pycache__``, ``*.egg-info`` and ``*.pyc`` are skipped, and missing
    entries are left out. ``root`` defaults to the current directory, which is
    where DVC runs a stage: under ``dvc exp run --temp`` that is the temporary
    copy, whose ``params.yaml`` contains the experiment's ``-S`` values while
    the one in ``DVC_ROOT`` contains the baseline's. The run is ``run_id`` or
    the active run.
    """
    mlflow = import_mlflow()
    run_id = run_id or _active_run_id()
    source_root = Path(root) if root is not None else Path.cwd()

    logged = []
    with tempfile.TemporaryDirectory(prefix="mlflow-code-") as folder:
        staging = Path(folder)
        for name in CODE_PATHS:
            source = source_root / name
            if source.is_dir():
                shutil.copytree(source, staging / name, ignore=_IGNORED_CODE)
            elif source.is_file():
                shutil.copy2(source, staging / name)
            else:
                logger.debug("code snapshot: %s not found, skipped", source)
                continue
            logged.append(name)
        if logged:
            client = mlflow.MlflowClient()
            call_with_retries(
                lambda: client.log_artifacts(run_id, str(staging), artifact_path),
                f"logging the code snapshot to run {run_id}",
            )
    return logged


# ---------------------------------------------------------------------------
# Evaluation


def _log_path(client: MlflowClient, run_id: str, path: Path, folder: str) -> None:
    if path.is_dir():
        client.log_artifacts(run_id, str(path), f"{folder}/{path.name}")
    else:
        client.log_artifact(run_id, str(path), folder)


def _log_artifact_paths(
    client: MlflowClient, run_id: str, paths: Sequence[str | os.PathLike[str]], folder: str
) -> None:
    """Log each file under ``folder`` and each folder as ``folder/<name>``.

    Raises ``FileNotFoundError`` before logging any of them when one is missing.
    """
    resolved = [Path(item) for item in paths]
    missing = [str(path) for path in resolved if not path.exists()]
    if missing:
        raise FileNotFoundError(f"artifacts not found: {', '.join(missing)}")
    for path in resolved:
        call_with_retries(
            functools.partial(_log_path, client, run_id, path, folder), f"logging {path} to run {run_id}"
        )


def _metric_entries(metrics: Mapping[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    timestamp_ms = int(time.time() * 1000)
    return [Metric(key=key, value=float(value), timestamp=timestamp_ms, step=step) for key, value in metrics.items()]


def get_run(client: MlflowClient, run_id: str, uri: str) -> Any:
    """Read run ``run_id``, retrying a locked database; raise :class:`UserError` when the store lacks it."""
    from mlflow.exceptions import MlflowException

    try:
        return call_with_retries(lambda: client.get_run(run_id), f"reading MLflow run {run_id}")
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UserError(
            f"MLflow run {run_id} not found in {uri}. "
            "Fix: train the model again (`dvc repro --force <train stage>`) or set MLFLOW_TRACKING_URI "
            "to the store that contains the run"
        ) from None


def log_metrics_to_run(
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: Sequence[str | os.PathLike[str]] = (),
    artifact_path: str = EVALUATION_ARTIFACT_DIR,
    step: int = 0,
    project_root: str | os.PathLike[str] | None = None,
) -> None:
    """Add ``metrics`` and ``artifacts`` (files or folders, under ``evaluation/``) to an existing run, finished or not.

    The run keeps its status and end time. Raises :class:`UserError` when the
    store has no run ``run_id``, for example after ``mlflow.db`` was removed.
    """
    mlflow = import_mlflow()

    uri = connect(project_root)
    client = mlflow.MlflowClient(uri)
    get_run(client, run_id, uri)
    add_to_run(client, run_id, metrics, artifacts, artifact_path, step)


def add_to_run(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: Sequence[str | os.PathLike[str]] = (),
    artifact_path: str = EVALUATION_ARTIFACT_DIR,
    step: int = 0,
) -> None:
    """Log ``metrics`` and ``artifacts`` to run ``run_id``, which the caller has read with :func:`get_run`.

    This is :func:`log_metrics_to_run` for a caller that has read the run
    already, so the store is not read a second time.
    """
    entries = _metric_entries(metrics, step)
    if entries:
        call_with_retries(lambda: client.log_batch(run_id, metrics=entries), f"logging metrics to run {run_id}")
    _log_artifact_paths(client, run_id, artifacts, artifact_path)


@contextlib.contextmanager
def start_comparison_run(
    experiment_name: str,
    model_run_ids: Mapping[str, str],
    artifacts: Sequence[str | os.PathLike[str]] = (),
    metrics: Mapping[str, float] | None = None,
    stage_name: str = "evaluate",
    project_root: str | os.PathLike[str] | None = None,
) -> Iterator[ActiveRun]:
    """Start a run that compares models, yield it, and log ``metrics`` and ``artifacts`` when the block succeeds.

    The run is named ``<DVC_EXP_NAME>-comparison`` (or ``comparison``) and tagged
    ``run_type=comparison``, ``compared_models`` (the names, comma-separated) and
    ``compared_run.<model name>`` with each model's training run id. Artifacts
    (the comparison table and report files) go under ``comparison/`` once the
    block ends, so the block may write them. The run ends like a training run.
    """
    uri = connect(project_root)
    experiment_id = get_or_create_experiment(experiment_name, uri, project_root)
    mlflow = import_mlflow()

    tags = {
        "run_type": "comparison",
        "compared_models": ",".join(model_run_ids),
        **{f"compared_run.{name}": run_id for name, run_id in model_run_ids.items()},
        **_dvc_tags(stage_name),
    }
    run = _start_run(experiment_id, _run_name("comparison"), tags)
    with _tracked_run(run):
        yield run
        client = mlflow.MlflowClient(uri)
        entries = _metric_entries(metrics or {}, step=0)
        if entries:
            call_with_retries(
                lambda: client.log_batch(run.info.run_id, metrics=entries), "logging comparison metrics"
            )
        _log_artifact_paths(client, run.info.run_id, artifacts, COMPARISON_ARTIFACT_DIR)


def log_comparison_run(
    experiment_name: str,
    model_run_ids: Mapping[str, str],
    artifacts: Sequence[str | os.PathLike[str]] = (),
    metrics: Mapping[str, float] | None = None,
    stage_name: str = "evaluate",
    project_root: str | os.PathLike[str] | None = None,
) -> str:
    """Record a finished comparison run (see :func:`start_comparison_run`) in one call, and return its run id."""
    with start_comparison_run(experiment_name, model_run_ids, artifacts, metrics, stage_name, project_root) as run:
        pass
    return run.info.run_id
