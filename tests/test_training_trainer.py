"""Behaviour of Trainer: epochs, prediction, callbacks, metrics, schedulers, early stopping and insight hooks."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from stepbystep.training import BatchedLoader, Callback, Trainer, TrainingDiverged


def make_moons_like_data() -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=generator)
    y = (x[:, :1] - x[:, 1:] > 0).float()
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])


def make_trainer(model: nn.Module | None = None, lr: float = 0.1, **kwargs) -> Trainer:
    train_data, val_data = make_moons_like_data()
    torch.manual_seed(42)
    model = model if model is not None else nn.Sequential(nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    kwargs.setdefault("train_loader", BatchedLoader(train_data, batch_size=16, shuffle=True))
    kwargs.setdefault("val_loader", BatchedLoader(val_data, batch_size=16))
    kwargs.setdefault("progress", False)
    return Trainer(model, nn.BCEWithLogitsLoss(), optimizer, device="cpu", **kwargs)


class LogsRecorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.logs: list[dict] = []

    def on_train_begin(self, trainer):
        self.events.append("begin")

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(f"epoch {epoch}")
        self.logs.append(dict(logs))

    def on_train_end(self, trainer):
        self.events.append("end")


def test_train_continues_epoch_numbers():
    recorder = LogsRecorder()
    trainer = make_trainer(callbacks=[recorder])

    trainer.train(2, seed=1)
    trainer.train(1)

    assert recorder.events == ["begin", "epoch 1", "epoch 2", "end", "begin", "epoch 3", "end"]
    assert trainer.total_epochs == 3
    assert len(trainer.losses) == 3
    assert [logs["epoch"] for logs in recorder.logs] == [1, 2, 3]


def test_epoch_logs_contain_losses_and_lr():
    recorder = LogsRecorder()
    trainer = make_trainer(callbacks=[recorder])

    trainer.train(2, seed=1)

    logs = recorder.logs[-1]
    assert logs["train_loss"] == trainer.losses[-1]
    assert logs["val_loss"] == trainer.val_losses[-1]
    assert logs["lr"] == 0.1
    assert trainer.history["lr"] == [0.1, 0.1]


def test_training_loss_decreases():
    trainer = make_trainer()

    trainer.train(20, seed=1)

    assert trainer.losses[-1] < 0.75 * trainer.losses[0]
    assert trainer.val_losses[-1] < 0.75 * trainer.val_losses[0]


def test_validation_loss_is_mean_of_batch_losses():
    trainer = make_trainer()
    trainer.train(1, seed=1)

    model = trainer.model.eval()
    with torch.no_grad():
        expected = np.mean([nn.BCEWithLogitsLoss()(model(x), y).item() for x, y in trainer.val_loader])

    assert trainer.val_losses[0] == expected


def test_predict_returns_numpy_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    trainer = make_trainer(model=model)
    x = np.random.default_rng(0).normal(size=(10, 2))

    first = trainer.predict(x)
    second = trainer.predict(torch.as_tensor(x))

    assert isinstance(first, np.ndarray)
    assert first.shape == (10, 1)
    assert first.dtype == np.float32
    # Dropout is off in eval mode, so predictions repeat.
    np.testing.assert_array_equal(first, second)
    assert model.training


def test_predict_restores_eval_mode():
    trainer = make_trainer()
    trainer.model.eval()

    trainer.predict(np.zeros((1, 2)))

    assert not trainer.model.training


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([nn.Flatten(), nn.Linear(25, 1, bias=False)], 25),
        ([nn.Flatten(), nn.Linear(25, 5, bias=False), nn.Linear(5, 3, bias=False), nn.Linear(3, 1, bias=False)], 143),
    ],
    ids=["logistic", "deep_linear"],
)
def test_count_parameters(layers, expected):
    model = nn.Sequential(*layers, nn.Sigmoid())
    trainer = Trainer(model, nn.BCELoss(), torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")

    assert trainer.count_parameters() == expected


def test_count_parameters_skips_frozen():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model[1].parameters(), lr=0.1), device="cpu")

    assert trainer.count_parameters() == 4


def test_layer_weights_by_layer_and_parameter_name():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    trainer = make_trainer(model=model)

    by_layer = trainer.layer_weights("0")
    by_parameter = trainer.layer_weights("2.bias")
    by_layer[0, 0] = 123.0

    np.testing.assert_array_equal(by_parameter, model[2].bias.detach().numpy())
    assert by_layer.shape == (3, 2)
    # The result is a copy, so editing it leaves the model alone.
    assert model[0].weight[0, 0].item() != 123.0


def test_layer_weights_rejects_unknown_names():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    trainer = make_trainer(model=model)

    with pytest.raises(KeyError, match="'hidden'"):
        trainer.layer_weights("hidden")
    with pytest.raises(ValueError, match="ReLU"):
        trainer.layer_weights("1")


def test_gradient_stats_average_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    train_data, val_data = make_moons_like_data()
    # lr 0 keeps the weights fixed, so every epoch produces the same gradients,
    # and the expected averages can be computed from the untrained model.
    trainer = make_trainer(
        model=model,
        lr=0.0,
        train_loader=BatchedLoader(train_data, batch_size=16),
        track_gradients=True,
    )
    norms = {name: [] for name, _ in model.named_parameters()}
    mean_abs = {name: [] for name, _ in model.named_parameters()}
    for x, y in trainer.train_loader:
        model.zero_grad()
        nn.BCEWithLogitsLoss()(model(x), y).backward()
        for name, parameter in model.named_parameters():
            norms[name].append(parameter.grad.norm().item())
            mean_abs[name].append(parameter.grad.abs().mean().item())
    model.zero_grad()
    recorder = LogsRecorder()
    trainer.add_callback(recorder)

    trainer.train(2, seed=0)

    logs = recorder.logs[-1]
    for name in norms:
        assert logs[f"grad_norm/{name}"] == pytest.approx(np.mean(norms[name]), rel=1e-5)
        assert logs[f"grad_mean_abs/{name}"] == pytest.approx(np.mean(mean_abs[name]), rel=1e-5)
    assert len(trainer.history["grad_norm/0.weight"]) == 2


def test_metrics_see_whole_validation_set():
    seen_sizes = []

    def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
        seen_sizes.append(len(logits))
        return ((logits > 0).float() == targets).float().mean().item()

    trainer = make_trainer(metrics={"accuracy": accuracy})
    trainer.train(3, seed=1)

    assert seen_sizes == [16, 16, 16]
    assert len(trainer.history["val_accuracy"]) == 3
    assert 0.0 <= trainer.history["val_accuracy"][-1] <= 1.0


def test_epoch_scheduler_steps_after_each_epoch():
    trainer = make_trainer()
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)

    trainer.train(3, seed=1)

    assert trainer.history["lr"] == [0.1, 0.05, 0.025]


def test_batch_scheduler_steps_after_each_batch():
    trainer = make_trainer(scheduler_interval="batch")
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)

    trainer.train(1, seed=1)

    # Four training batches halve the learning rate four times.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 16)


def test_plateau_scheduler_monitors_validation_loss():
    trainer = make_trainer()
    # An absolute threshold of 10 counts no epoch after the first as an
    # improvement, so the learning rate halves after every later epoch.
    trainer.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        trainer.optimizer, factor=0.5, patience=0, threshold=10.0, threshold_mode="abs"
    )

    trainer.train(3, seed=1)

    assert trainer.scheduler.best == trainer.val_losses[0]
    assert trainer.history["lr"] == [0.1, 0.1, 0.05]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.025


def test_early_stopping_ends_training():
    trainer = make_trainer(lr=0.0, early_stopping_patience=2)

    trainer.train(10, seed=1)

    assert trainer.total_epochs == 3
    assert trainer.best_epoch == 1
    assert trainer.stop_training


def test_early_stopping_needs_validation_loader():
    trainer = make_trainer(val_loader=None, early_stopping_patience=2)

    with pytest.raises(ValueError, match="validation loader"):
        trainer.train(1)


def test_callback_can_stop_training():
    class StopAtEpoch2(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                trainer.stop_training = True

    trainer = make_trainer(callbacks=[StopAtEpoch2()])

    trainer.train(5, seed=1)

    assert trainer.total_epochs == 2


def test_nan_validation_loss_raises_diverged():
    train_data, _ = make_moons_like_data()
    bad_val = TensorDataset(torch.full((4, 2), float("nan")), torch.ones(4, 1))
    trainer = make_trainer(val_loader=DataLoader(bad_val, batch_size=2))

    with pytest.raises(TrainingDiverged) as excinfo:
        trainer.train(2, seed=1)

    assert excinfo.value.epoch == 1
    assert excinfo.value.loss_name == "val_loss"
    assert "epoch 1" in str(excinfo.value)
    assert trainer.total_epochs == 0
    assert trainer.losses == []


def test_training_without_validation_records_none():
    trainer = make_trainer(val_loader=None)

    trainer.train(2, seed=1)

    assert trainer.val_losses == [None, None]


def test_empty_training_loader_is_an_error():
    empty = TensorDataset(torch.zeros(0, 2), torch.zeros(0, 1))
    trainer = make_trainer(train_loader=DataLoader(empty, batch_size=4))

    with pytest.raises(ValueError, match="no batches"):
        trainer.train(1)


def test_missing_training_loader_is_an_error():
    model = nn.Linear(2, 1)
    trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")

    with pytest.raises(ValueError, match="set_loaders"):
        trainer.train(1)


def test_log_line_per_epoch_without_progress_bar(caplog):
    trainer = make_trainer(progress=False)

    with caplog.at_level(logging.INFO, logger="stepbystep.training.trainer"):
        trainer.train(2, seed=1)

    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("epoch ")]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 train_loss=")
    assert "val_loss=" in lines[1]


def test_progress_bar_writes_to_stderr(capsys, caplog):
    trainer = make_trainer(progress=True)

    with caplog.at_level(logging.INFO, logger="stepbystep.training.trainer"):
        trainer.train(2, seed=1)

    assert "epochs 1-2" in capsys.readouterr().err
    assert not [record for record in caplog.records if record.levelno >= logging.INFO and "train_loss" in record.getMessage()]


def test_to_moves_optimizer_state():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_data, _ = make_moons_like_data()
    trainer = Trainer(model, nn.BCEWithLogitsLoss(), optimizer, train_loader=DataLoader(train_data, 16), device="cpu")
    trainer.train(1, seed=1)

    returned = trainer.to("cpu")

    assert returned is trainer
    assert trainer.device == torch.device("cpu")
    buffers = [state["momentum_buffer"] for state in optimizer.state.values()]
    assert all(buffer.device.type == "cpu" for buffer in buffers)
    trainer.train(1)


class CountingWrapper(nn.Module):
    """Forwards to a module and counts the calls, as DistributedDataParallel wraps one."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


def test_wrap_model_runs_steps_through_wrapper(tmp_path):
    trainer = make_trainer()
    trainer.wrap_model(CountingWrapper)

    trainer.train(1, seed=1)
    trainer.save_checkpoint(tmp_path / "wrapped.pt")

    # The epoch ran four training batches and one validation batch.
    assert trainer.forward_model.calls == 5
    state_keys = set(torch.load(tmp_path / "wrapped.pt", weights_only=True)["model_state_dict"])
    assert state_keys == {"0.weight", "0.bias"}


class EpochAwareSampler(Sampler[int]):
    """A sequential sampler that records set_epoch calls, as DistributedSampler receives them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def test_sampler_set_epoch_called_each_epoch():
    train_data, _ = make_moons_like_data()
    sampler = EpochAwareSampler(len(train_data))
    trainer = make_trainer(train_loader=BatchedLoader(train_data, batch_size=16, sampler=sampler))

    trainer.train(3, seed=1)

    assert sampler.epochs == [0, 1, 2]


def test_training_package_imports_no_tracking_libraries():
    code = (
        "import sys, stepbystep.training; "
        "loaded = [m for m in ('tensorboard', 'mlflow', 'torch.utils.tensorboard') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
