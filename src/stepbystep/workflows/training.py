"""Train one model of the pipeline: data, preprocessing, model, trainer, resume, tracking and outputs.

The training stages call :func:`train_regression` and :func:`train_classifier`.
Each run

1. loads the dataset and its split, and fits the preprocessing on the training rows;
2. builds the model from params and a trainer around it;
3. resumes from the last resume checkpoint of the same configuration, if a
   killed run left one under ``.resume/`` at the project root (DVC deletes a
   stage's outputs before running it, so they cannot hold it);
4. trains, writing a resume checkpoint every ``checkpoint_every`` epochs, with
   MLflow and TensorBoard as callbacks;
5. writes the outputs: ``model.pt`` (the final checkpoint with the metadata that
   evaluation needs to rebuild model and preprocessing), ``losses.csv`` and
   ``run.json`` (the MLflow run id), then deletes the resume checkpoint.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from stepbystep import files
from stepbystep.data.layout import dataset_dir, split_path
from stepbystep.data.loading import SplitData, load_split_data, make_loaders
from stepbystep.data.preprocessing import Preprocessing
from stepbystep.errors import UserError
from stepbystep.params import ClassifierParams, Params, TrainingParams
from stepbystep.training import distributed
from stepbystep.training.distributed import SINGLE_PROCESS, DistributedContext

if TYPE_CHECKING:
    from stepbystep.training import Trainer

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LOSSES_FILE = "losses.csv"
RUN_FILE = "run.json"
RESUME_DIR = ".resume"
TENSORBOARD_DIR = "runs"


class TrainingFailed(UserError):
    """Training stopped on a problem the user can fix, such as a diverging loss."""


def project_root() -> Path:
    """Return the DVC project root: ``DVC_ROOT`` when DVC runs the stage, else the current folder.

    Inside ``dvc exp run --temp`` or ``--queue`` the stage runs in a temporary
    copy that DVC deletes afterwards, but ``DVC_ROOT`` still names the main
    project, so files written under this root survive the experiment.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


@dataclass
class ModelSpec:
    """Everything needed to build and train one model, and to rebuild it for evaluation."""

    name: str
    task: str  # "regression" or "binary"
    stage: str
    config: dict[str, Any]
    training: TrainingParams
    seed: int
    experiment_name: str
    tensorboard: bool = True
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def build_model(metadata: dict[str, Any]) -> nn.Module:
    """Rebuild the untrained model described by a checkpoint's metadata."""
    from stepbystep.models import build_classifier, build_regression_model

    config = metadata["config"]
    if metadata["task"] == "regression":
        return build_regression_model(metadata["n_inputs"], config["model_seed"])
    return build_classifier(
        n_inputs=metadata["n_inputs"],
        hidden_sizes=config["hidden_sizes"],
        activation=config["activation"],
        bias=config["bias"],
        output=config["output"],
        seed=config["model_seed"],
        flatten=metadata["kind"] == "images",
    )


def _n_inputs(data: SplitData, preprocessing: Preprocessing) -> int:
    if preprocessing.n_features is not None:
        return preprocessing.n_features
    return int(np.prod(data.sample_shape))


def _fingerprint(spec: ModelSpec, data: SplitData) -> str:
    """Return a hash of the configuration and the data, naming this run's resume checkpoint.

    A resume checkpoint is used only by a run with the same params, seeds and
    data, so experiments that run in parallel never pick up each other's.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"config": spec.config, "seed": spec.seed}, sort_keys=True).encode())
    data.update_hash(digest)
    return digest.hexdigest()[:16]


# Locks on resume checkpoints that this process holds, by lock file. An flock
# lasts until the file is closed or the process ends, also by SIGKILL.
_resume_locks: dict[Path, IO[str]] = {}


def _claim_resume_files(folder: Path, fingerprint: str) -> tuple[Path, Path]:
    """Return the resume checkpoint and run-id files of a configuration, locked for this process.

    Parallel experiments (``dvc queue start -j 2``) can train the same
    configuration at the same time. The process that has the ``flock`` on
    ``.locks/<model>-<fingerprint>.lock`` next to ``folder`` uses
    ``<fingerprint>.pt`` and ``.run``. Any other process gets files named after
    its process id, so that it neither resumes from nor deletes a checkpoint
    that another training is still writing. Lock files stay, because deleting
    one while another process opens it would let two processes hold a lock.
    Under torchrun only rank 0 (``RANK``) takes the lock, because it alone
    writes these files.
    """
    lock_path = folder.parent / ".locks" / f"{folder.name}-{fingerprint}.lock"
    if lock_path not in _resume_locks and os.environ.get("RANK", "0") == "0":
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            logger.info(
                "%s is locked by another training of the same configuration, so this one starts afresh", lock_path
            )
            private = f"{fingerprint}-{os.getpid()}"
            return folder / f"{private}.pt", folder / f"{private}.run"
        _resume_locks[lock_path] = lock_file
    return folder / f"{fingerprint}.pt", folder / f"{fingerprint}.run"


def _losses_csv(history: dict[str, list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "train_loss", "val_loss"])
    for epoch, (train_loss, val_loss) in enumerate(zip(history["train_loss"], history["val_loss"]), start=1):
        writer.writerow([epoch, repr(float(train_loss)), "" if val_loss is None else repr(float(val_loss))])
    return buffer.getvalue()


def _recorded_run_id(run_file: Path) -> str | None:
    """Return the MLflow run id that a training wrote to ``run_file`` when its run started, or ``None``."""
    try:
        return run_file.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _write_outputs(
    trainer: Trainer, spec: ModelSpec, metadata: dict[str, Any], output_dir: Path, run_info: dict[str, Any]
) -> None:
    """Write ``model.pt``, ``losses.csv`` and ``run.json`` to ``output_dir``: all three, or none of them.

    Each file is written atomically. When one write fails (no space left,
    permission denied), the files written before it are removed again and the
    ``OutputError`` propagates.
    """
    written: list[Path] = []
    try:
        path = output_dir / MODEL_FILE
        trainer.save_checkpoint(path, metadata=metadata)
        written.append(path)
        path = output_dir / LOSSES_FILE
        files.write_text(path, _losses_csv(trainer.history))
        written.append(path)
        path = output_dir / RUN_FILE
        files.write_json(path, {"model": spec.name, "experiment_name": spec.experiment_name, **run_info})
        written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def train_model(
    spec: ModelSpec,
    data: SplitData,
    preprocessing: Preprocessing,
    model: nn.Module,
    loss_fn: nn.Module,
    loaders: tuple[Any, Any],
    output_dir: Path,
    track: bool = True,
    context: DistributedContext = SINGLE_PROCESS,
) -> dict[str, Any]:
    """Train ``model`` with the settings of ``spec``, resuming when possible, and write the outputs to ``output_dir``.

    Returns the metadata stored in ``model.pt``. Raises :class:`TrainingFailed`
    when the loss diverges; then no output is written. In a process group
    (``context``) every process trains its share of each batch and rank 0
    alone writes checkpoints, outputs and MLflow records.
    """
    from stepbystep.training import CheckpointCallback, Trainer, TrainingDiverged
    from stepbystep.training.checkpoint import CheckpointError
    from stepbystep.training.threads import choose_num_threads

    root = project_root()
    if context.is_distributed:
        loaders = tuple(distributed.shard_loader(loader, context) for loader in loaders)
    train_loader, val_loader = loaders
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.training.lr)
    trainer = Trainer(
        model,
        loss_fn,
        optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        clip_grad_norm=spec.training.clip_grad_norm,
        early_stopping_patience=spec.training.early_stopping_patience,
        track_gradients=True,
        num_threads=choose_num_threads(model, getattr(train_loader, "batch_size", None) or 1),
    )

    metadata = {
        "name": spec.name,
        "task": spec.task,
        "kind": data.kind,
        "stage": spec.stage,
        "config": spec.config,
        "seed": spec.seed,
        "n_inputs": _n_inputs(data, preprocessing),
        "input_shape": list(data.sample_shape),
        "preprocessing": preprocessing.state_dict(),
        "dataset": data.info,
        "n_parameters": trainer.count_parameters(),
        "world_size": context.world_size,
        **spec.extra_metadata,
    }

    resume_folder = root / RESUME_DIR / spec.name
    fingerprint = _fingerprint(spec, data)
    resume_file, resume_run_file = _claim_resume_files(resume_folder, fingerprint)

    # Seeding first and loading second lets a resumed run overwrite every RNG
    # state with the saved one, while a fresh run starts from the seed.
    trainer.set_seed(spec.seed)
    resumed_from = None
    # Rank 0 sends its resume checkpoint to the other ranks, which may run on other machines.
    with distributed.shared_file(resume_file, context) as checkpoint_file:
        if checkpoint_file is not None:
            try:
                trainer.load_checkpoint(checkpoint_file)
                resumed_from = resume_run_file.read_text().strip() if resume_run_file.exists() else None
                logger.info("%s: resuming at epoch %d from %s", spec.name, trainer.total_epochs, resume_file)
            except CheckpointError as error:
                logger.warning("%s: ignoring unusable resume checkpoint: %s", spec.name, error)
                trainer.set_seed(spec.seed)
    distributed.prepare_trainer(trainer, context, spec.seed)

    if context.is_main:
        trainer.add_callback(CheckpointCallback(resume_file, every=spec.training.checkpoint_every, metadata=metadata))
    if context.is_main and spec.tensorboard:
        from stepbystep.tracking.tensorboard import TensorBoardCallback

        # Rank 0 alone drawing a batch from a sharded loader would wait forever
        # for the other ranks, so it traces the graph on the first training row.
        sample_input = None
        if context.is_distributed:
            sample_input = preprocessing.transform(data.features, data.train_index[:1])
        trainer.add_callback(TensorBoardCallback(root / TENSORBOARD_DIR / spec.name, sample_input=sample_input))

    remaining = spec.training.epochs - trainer.total_epochs

    def fit() -> None:
        try:
            trainer.train(max(remaining, 0))
        except TrainingDiverged as error:
            raise TrainingFailed(
                f"{spec.name}: {error}. Fix: lower {spec.stage}.lr (now {spec.training.lr}) and run again"
            ) from None
        except KeyboardInterrupt:
            # SIGINT, or SIGTERM inside an MLflow run, ends the epoch that is training.
            if resume_file.exists():
                next_step = f"the next run resumes from {resume_file}"
            else:
                next_step = "no resume checkpoint was written yet, so the next run starts over"
            logger.warning("%s: interrupted during epoch %d; %s", spec.name, trainer.total_epochs + 1, next_step)
            raise

    if not context.is_main:
        fit()
        return metadata

    run_info: dict[str, Any] = {}
    if track:
        from stepbystep.tracking import mlflow_tracking

        with mlflow_tracking.start_training_run(
            experiment_name=spec.experiment_name,
            model_name=spec.name,
            stage_name=spec.stage,
            params=spec.config,
            resumed_from_run_id=resumed_from,
            # The lock on the resume files means that the process that wrote this id has ended.
            interrupted_run_id=_recorded_run_id(resume_run_file),
        ) as run:
            files.write_text(resume_run_file, run.info.run_id + "\n")
            mlflow_tracking.log_history(trainer.history, trainer.total_epochs)
            trainer.add_callback(
                mlflow_tracking.MlflowCallback(
                    checkpoint_every=spec.training.checkpoint_every, checkpoint_path_fn=lambda epoch: resume_file
                )
            )
            fit()
            run_info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
            # Writing inside the run ends it FAILED when an output cannot be written.
            _write_outputs(trainer, spec, metadata, output_dir, run_info)
            mlflow_tracking.log_final_checkpoint(output_dir / MODEL_FILE)
            example = preprocessing.transform(data.features, data.val_index[:5]).numpy()
            mlflow_tracking.log_final_model(trainer.model, example)
            # The current folder is the copy DVC runs, with the experiment's params applied.
            mlflow_tracking.log_code_snapshot()
    else:
        fit()
        _write_outputs(trainer, spec, metadata, output_dir, run_info)

    resume_file.unlink(missing_ok=True)
    resume_run_file.unlink(missing_ok=True)
    logger.info(
        "%s: trained %d epochs, train_loss=%.6f val_loss=%s",
        spec.name,
        trainer.total_epochs,
        trainer.losses[-1] if trainer.losses else float("nan"),
        trainer.val_losses[-1] if trainer.val_losses else None,
    )
    return metadata


def train_regression(
    params: Params, output_dir: Path, track: bool = True, context: DistributedContext = SINGLE_PROCESS
) -> dict[str, Any]:
    """Train the chapter 2 linear regression described by ``params.train_regression``."""
    from stepbystep.models import build_regression_model

    config = params.train_regression
    data = load_split_data(dataset_dir(config.dataset), split_path(config.dataset))
    if data.info["task"] != "regression":
        raise UserError(
            f"train_regression.dataset is {config.dataset!r}, a {data.info['task']} dataset. "
            "Fix: name a regression dataset"
        )
    # The default method none keeps the book's raw x; standardize fits on the training rows only.
    preprocessing = Preprocessing.fit("table", data.features, config.normalization, rows=data.train_index)
    model = build_regression_model(data.sample_shape[0], config.model_seed)
    loaders = make_loaders(data, preprocessing, config.batch_size)
    spec = ModelSpec(
        name="linear_regression",
        task="regression",
        stage="train_regression",
        config=config.model_dump(),
        training=config,
        seed=params.seeds.training,
        experiment_name=params.tracking.experiment_name,
        tensorboard=params.tracking.tensorboard,
    )
    return train_model(
        spec, data, preprocessing, model, nn.MSELoss(reduction="mean"), loaders, output_dir, track, context
    )


def train_classifier(
    params: Params, name: str, output_dir: Path, track: bool = True, context: DistributedContext = SINGLE_PROCESS
) -> dict[str, Any]:
    """Train the binary classifier ``params.train_classifier[name]``."""
    from stepbystep.models import binary_loss_fn, build_classifier

    if name not in params.train_classifier:
        known = ", ".join(sorted(params.train_classifier))
        raise UserError(f"no classifier named {name!r} in train_classifier (declared: {known})")
    config: ClassifierParams = params.train_classifier[name]
    key = f"train_classifier.{name}"
    data = load_split_data(dataset_dir(config.dataset), split_path(config.dataset))
    if data.info["task"] != "binary":
        raise UserError(
            f"{key}.dataset is {config.dataset!r}, a {data.info['task']} dataset. Fix: name a binary dataset"
        )
    if data.kind == "images" and config.polynomial_degree > 1:
        raise UserError(f"{key}.polynomial_degree applies to tables only. Fix: set it to 1")
    if data.kind != "images" and config.horizontal_flip > 0:
        raise UserError(f"{key}.horizontal_flip applies to images only. Fix: set it to 0.0")

    preprocessing = Preprocessing.fit(
        data.kind, data.features, config.normalization, config.polynomial_degree, rows=data.train_index
    )
    loaders = make_loaders(data, preprocessing, config.batch_size, config.sampler, config.horizontal_flip)
    model = build_classifier(
        n_inputs=_n_inputs(data, preprocessing),
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        bias=config.bias,
        output=config.output,
        seed=config.model_seed,
        flatten=data.kind == "images",
    )
    spec = ModelSpec(
        name=name,
        task="binary",
        stage=f"train_classifier@{name}",
        config=config.model_dump(),
        training=config,
        seed=params.seeds.training,
        experiment_name=params.tracking.experiment_name,
        tensorboard=params.tracking.tensorboard,
    )
    return train_model(
        spec, data, preprocessing, model, binary_loss_fn(config.output), loaders, output_dir, track, context
    )
