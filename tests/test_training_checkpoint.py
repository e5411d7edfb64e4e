"""Checkpoints: exact resume in a new process, atomic writes, and clear errors for bad files."""

import math
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stepbystep.training import (
    Callback,
    CheckpointCallback,
    CheckpointError,
    Trainer,
    TrainingDiverged,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)

# The resume job runs in fresh processes. Its pipeline draws from every global
# generator (torch for flips and dropout, NumPy and Python's random for noise)
# and from a sampler generator. It also keeps optimizer momentum, a scheduler,
# early stopping and gradient statistics, so resuming must restore all of them.
RESUME_JOB = textwrap.dedent(
    """
    import random
    import sys

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from stepbystep.training import BatchedLoader, CheckpointCallback, Trainer, TransformedTensorDataset


    class NoisyFlip:
        def __call__(self, image):
            if torch.rand(1).item() < 0.5:
                image = image.flip(-1)
            return image + 0.01 * float(np.random.randn()) + 0.01 * random.random()


    def build_trainer():
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(96, 1, 5, 5, generator=generator)
        labels = (torch.rand(96, 1, generator=generator) < 0.6).float()
        train_data = TransformedTensorDataset(images[:64], labels[:64], transform=NoisyFlip())
        val_data = TransformedTensorDataset(images[64:], labels[64:])
        train_labels = labels[:64].long().flatten()
        weights = 1.0 / torch.bincount(train_labels)[train_labels].float()
        sampler = WeightedRandomSampler(weights, num_samples=64, generator=torch.Generator())

        torch.manual_seed(17)
        model = nn.Sequential(nn.Flatten(), nn.Linear(25, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return Trainer(
            model,
            nn.BCEWithLogitsLoss(),
            optimizer,
            train_loader=BatchedLoader(train_data, batch_size=16, sampler=sampler),
            val_loader=DataLoader(val_data, batch_size=16, shuffle=True),
            scheduler=scheduler,
            device="cpu",
            track_gradients=True,
            early_stopping_patience=100,
            progress=False,
        )


    if __name__ == "__main__":
        phase, folder, n_epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
        trainer = build_trainer()
        if phase == "full":
            trainer.add_callback(CheckpointCallback(folder + "/epoch-{epoch}.pt", every=n_epochs))
            trainer.train(2 * n_epochs, seed=42)
        else:
            trainer.load_checkpoint(folder + f"/epoch-{n_epochs}.pt")
            trainer.train(n_epochs)
            trainer.save_checkpoint(folder + "/resumed.pt")
    """
)


def assert_nested_equal(actual, expected, where="checkpoint"):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_nested_equal(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_nested_equal(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), where
    else:
        assert actual == expected, where


def run_job(script: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr


def test_resume_in_new_process_is_bitwise_exact(tmp_path):
    script = tmp_path / "resume_job.py"
    script.write_text(RESUME_JOB)
    n_epochs = 3

    run_job(script, "full", str(tmp_path), str(n_epochs))
    run_job(script, "resume", str(tmp_path), str(n_epochs))

    uninterrupted = load_checkpoint(tmp_path / "epoch-6.pt")
    halfway = load_checkpoint(tmp_path / "epoch-3.pt")
    resumed = load_checkpoint(tmp_path / "resumed.pt")
    assert halfway["epoch"] == 3
    assert resumed["epoch"] == uninterrupted["epoch"] == 6
    assert len(resumed["history"]["train_loss"]) == 6
    # The second half changed the weights, so the equality below is not trivial.
    assert not torch.equal(halfway["model_state_dict"]["1.weight"], resumed["model_state_dict"]["1.weight"])
    for key in (
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "history",
        "early_stopping",
        "rng_state",
    ):
        assert_nested_equal(resumed[key], uninterrupted[key], key)


# --- helpers for the in-process tests ----------------------------------------


def make_regression_loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(48, 2, generator=generator)
    y = x @ torch.tensor([[2.0], [-1.0]]) + 0.5
    dataset = TensorDataset(x, y)
    train_loader = DataLoader(torch.utils.data.Subset(dataset, range(32)), batch_size=8, shuffle=True)
    val_loader = DataLoader(torch.utils.data.Subset(dataset, range(32, 48)), batch_size=8)
    return train_loader, val_loader


def make_trainer(model: nn.Module | None = None, loss_fn: nn.Module | None = None, **kwargs) -> Trainer:
    torch.manual_seed(1)
    model = model if model is not None else nn.Sequential(nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    train_loader, val_loader = make_regression_loaders()
    return Trainer(
        model,
        loss_fn if loss_fn is not None else nn.MSELoss(),
        optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        device="cpu",
        progress=False,
        **kwargs,
    )


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in trainer.model.state_dict().items()}


def assert_state_unchanged(trainer: Trainer, before: dict[str, torch.Tensor]) -> None:
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    trainer = make_trainer()
    trainer.train(2, seed=3)
    path = tmp_path / "checkpoint.pt"
    trainer.save_checkpoint(path, metadata={"model": {"hidden": [4, 2]}})
    return path


# --- saving --------------------------------------------------------------------


def test_save_checkpoint_leaves_no_temporary_files(saved_checkpoint):
    assert [path.name for path in saved_checkpoint.parent.iterdir()] == ["checkpoint.pt"]


def test_failed_save_keeps_previous_file(saved_checkpoint):
    before = saved_checkpoint.read_bytes()
    # A lambda cannot be pickled, so torch.save fails partway through the write.
    broken = {"format": "stepbystep.checkpoint", "model_state_dict": {"f": lambda: 0}}

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(saved_checkpoint, broken)

    assert saved_checkpoint.read_bytes() == before
    assert [path.name for path in saved_checkpoint.parent.iterdir()] == ["checkpoint.pt"]


def test_metadata_round_trips(tmp_path):
    trainer = make_trainer()
    metadata = {
        "model": {"name": "linear", "hidden": [4, 2], "dropout": 0.1, "bias": True, "init": None},
        "scaler": {"mean": [0.5, -1.25], "scale": (1.0, 2.0)},
        "class_weights": torch.tensor([0.25, 0.75]),
    }

    trainer.save_checkpoint(tmp_path / "meta.pt", metadata=metadata)
    restored = make_trainer().load_checkpoint(tmp_path / "meta.pt")

    assert_nested_equal(restored, metadata)


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        ({"scaler": {"mean": [np.float64(0.5)]}}, "metadata['scaler']['mean'][0]"),
        ({"path": Path("data")}, "metadata['path']"),
        ({1: "one"}, "key of type int"),
    ],
    ids=["numpy_scalar", "path_object", "int_key"],
)
def test_invalid_metadata_is_rejected_before_writing(tmp_path, metadata, where):
    trainer = make_trainer()

    with pytest.raises(TypeError) as excinfo:
        trainer.save_checkpoint(tmp_path / "meta.pt", metadata=metadata)

    assert where in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_callback_saves_every_k_epochs(tmp_path):
    callback = CheckpointCallback(tmp_path / "epoch-{epoch:03d}.pt", every=2, save_on_train_end=True)
    trainer = make_trainer(callbacks=[callback])

    trainer.train(5, seed=0)

    assert [path.name for path in callback.saved_paths] == ["epoch-002.pt", "epoch-004.pt", "epoch-005.pt"]
    assert [load_checkpoint(path)["epoch"] for path in callback.saved_paths] == [2, 4, 5]


# --- loading -------------------------------------------------------------------


class EpochRecorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.epochs.append(epoch)


def test_load_restores_epoch_count_and_history(saved_checkpoint):
    recorder = EpochRecorder()
    trainer = make_trainer(callbacks=[recorder])

    metadata = trainer.load_checkpoint(saved_checkpoint)
    trainer.train(2)

    assert metadata == {"model": {"hidden": [4, 2]}}
    assert recorder.epochs == [3, 4]
    assert trainer.total_epochs == 4
    assert len(trainer.losses) == 4


def test_load_model_weights_returns_metadata(saved_checkpoint):
    torch.manual_seed(99)
    model = nn.Sequential(nn.Linear(2, 1))

    metadata = load_model_weights(saved_checkpoint, model)

    expected = load_checkpoint(saved_checkpoint)["model_state_dict"]
    assert metadata == {"model": {"hidden": [4, 2]}}
    assert torch.equal(model[0].weight, expected["0.weight"])


def test_truncated_checkpoint_names_file(saved_checkpoint):
    data = saved_checkpoint.read_bytes()
    saved_checkpoint.write_bytes(data[: len(data) // 2])
    trainer = make_trainer()
    before = snapshot(trainer)

    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint") as excinfo:
        trainer.load_checkpoint(saved_checkpoint)

    assert str(saved_checkpoint) in str(excinfo.value)
    assert excinfo.value.path == saved_checkpoint
    assert_state_unchanged(trainer, before)


@pytest.mark.parametrize(
    "content", [b"", b"epoch,loss\n1,0.5\n", bytes(range(256))], ids=["empty", "csv_text", "binary_noise"]
)
def test_unreadable_file_names_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)

    assert str(path) in str(excinfo.value)


def test_missing_file_names_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as excinfo:
        load_checkpoint(tmp_path / "absent.pt")

    assert "absent.pt" in str(excinfo.value)


def test_bare_state_dict_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 1).state_dict(), path)

    with pytest.raises(CheckpointError, match="not a stepbystep training checkpoint") as excinfo:
        make_trainer().load_checkpoint(path)

    assert str(path) in str(excinfo.value)


def test_newer_format_version_is_rejected(saved_checkpoint):
    checkpoint = load_checkpoint(saved_checkpoint)
    checkpoint["format_version"] = 99
    torch.save(checkpoint, saved_checkpoint)

    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(saved_checkpoint)


@pytest.mark.parametrize(
    ("model", "expected_message"),
    [
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), "missing keys"),
        (nn.Sequential(nn.Linear(3, 1)), r"0\.weight: checkpoint \(1, 2\), model \(1, 3\)"),
    ],
    ids=["other_layers", "other_shape"],
)
def test_wrong_architecture_is_rejected(saved_checkpoint, model, expected_message):
    trainer = make_trainer(model=model)
    before = snapshot(trainer)

    with pytest.raises(CheckpointError, match=expected_message) as excinfo:
        trainer.load_checkpoint(saved_checkpoint)

    assert str(saved_checkpoint) in str(excinfo.value)
    assert "architecture" in str(excinfo.value)
    assert_state_unchanged(trainer, before)


def test_wrong_optimizer_is_rejected(saved_checkpoint):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 1))
    trainer = Trainer(model, nn.MSELoss(), torch.optim.Adam(model.parameters()), device="cpu")

    with pytest.raises(CheckpointError, match="optimizer state is for SGD, but the trainer uses Adam"):
        trainer.load_checkpoint(saved_checkpoint)


def test_missing_scheduler_is_rejected(saved_checkpoint):
    trainer = make_trainer()
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1)

    with pytest.raises(CheckpointError, match="trainer has a scheduler but the checkpoint has no scheduler state"):
        trainer.load_checkpoint(saved_checkpoint)


class CreatesMarkerFile:
    """Unpickling this object opens, and so creates, the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_checkpoint_that_runs_code_is_rejected(tmp_path, writer):
    marker = tmp_path / "marker"
    payload = {"format": "stepbystep.checkpoint", "model_state_dict": CreatesMarkerFile(marker)}
    path = tmp_path / "malicious.pt"
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(payload, file, protocol=2)

    with pytest.raises(CheckpointError, match="rejected by weights_only loading") as excinfo:
        make_trainer().load_checkpoint(path)

    assert str(path) in str(excinfo.value)
    assert not marker.exists()

    # Control: the same file run through an unrestricted unpickler does create the
    # marker, so the check above would fail if weights_only loading were off.
    if writer == "torch_save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as file:
            pickle.load(file)
    assert marker.exists()


def relocate_storages_to_cuda(path: Path) -> None:
    """Rewrite a torch zip checkpoint so that every tensor storage claims to live on cuda:0."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in entries if name.endswith("/data.pkl"))
    cpu_location = b"X\x03\x00\x00\x00cpu"
    assert cpu_location in entries[pickle_name]
    entries[pickle_name] = entries[pickle_name].replace(cpu_location, b"X\x06\x00\x00\x00cuda:0")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
def test_cuda_checkpoint_loads_on_cpu_only_machine(saved_checkpoint, caplog):
    checkpoint = load_checkpoint(saved_checkpoint)
    # A CUDA run also saves the CUDA generators' states.
    checkpoint["rng_state"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    torch.save(checkpoint, saved_checkpoint)
    relocate_storages_to_cuda(saved_checkpoint)
    # Control: without mapping to the CPU, torch cannot load this file here.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(saved_checkpoint, weights_only=True)

    trainer = make_trainer()
    trainer.load_checkpoint(saved_checkpoint)
    loaded_weight = trainer.model[0].weight.detach().clone()
    trainer.train(1)

    assert torch.equal(loaded_weight, checkpoint["model_state_dict"]["0.weight"])
    assert trainer.model[0].weight.device.type == "cpu"
    assert trainer.total_epochs == 3
    assert "skipped restoring the RNG state of 1 CUDA device(s)" in caplog.text


def test_divergence_does_not_touch_checkpoint(tmp_path):
    class ScaledMSELoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = 1.0

        def forward(self, yhat, y):
            return self.scale * nn.functional.mse_loss(yhat, y)

    class PoisonLossAfterEpoch2(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                loss_fn.scale = float("nan")

    loss_fn = ScaledMSELoss()
    checkpoints = CheckpointCallback(tmp_path / "last.pt", every=1)
    trainer = make_trainer(loss_fn=loss_fn, callbacks=[checkpoints, PoisonLossAfterEpoch2()])

    with pytest.raises(TrainingDiverged, match="epoch 3: train_loss is nan") as excinfo:
        trainer.train(5, seed=0)

    assert excinfo.value.epoch == 3
    assert excinfo.value.loss_name == "train_loss"
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert trainer.total_epochs == 2
    assert len(trainer.losses) == 2
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
