"""Training engine: step functions, the Trainer, batched feeding, seeding and checkpoints.

Importing this package loads torch and NumPy only; tqdm is imported when a
progress bar is shown, and neither TensorBoard nor MLflow is imported.
"""

from stepbystep.training.callbacks import Callback, CheckpointCallback
from stepbystep.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    validate_metadata,
)
from stepbystep.training.feeding import BatchedLoader, RandomHorizontalFlip, TransformedTensorDataset, make_batch_fetcher
from stepbystep.training.gradients import GradientStats
from stepbystep.training.seeding import (
    capture_rng_state,
    loader_generators,
    preserved_rng_state,
    restore_rng_state,
    seed_everything,
)
from stepbystep.training.steps import make_train_step_fn, make_val_step_fn, make_val_step_with_outputs_fn
from stepbystep.training.trainer import Trainer, TrainingDiverged

__all__ = [
    "BatchedLoader",
    "Callback",
    "CheckpointCallback",
    "CheckpointError",
    "GradientStats",
    "RandomHorizontalFlip",
    "Trainer",
    "TrainingDiverged",
    "TransformedTensorDataset",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_weights",
    "loader_generators",
    "make_batch_fetcher",
    "make_train_step_fn",
    "make_val_step_fn",
    "make_val_step_with_outputs_fn",
    "preserved_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "validate_metadata",
]
