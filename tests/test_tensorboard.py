"""TensorBoardCallback writes loss curves whose steps continue after a resume, and the model graph."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stepbystep.tracking.tensorboard import TensorBoardCallback
from stepbystep.training import Callback, Trainer, TrainingDiverged


def make_trainer(callbacks=()) -> Trainer:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, generator=generator)
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    train_loader = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    torch.manual_seed(3)
    # Dropout draws from the global RNG, so any draw the graph tracing adds shows up in the weights.
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.3), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        nn.BCEWithLogitsLoss(),
        optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        device="cpu",
        callbacks=callbacks,
        progress=False,
    )


def read_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_losses_continue_after_resume(tmp_path):
    log_dir = tmp_path / "runs"
    first = make_trainer(callbacks=[TensorBoardCallback(log_dir)])
    first.train(2, seed=42)
    first.save_checkpoint(tmp_path / "checkpoint.pt")

    second = make_trainer(callbacks=[TensorBoardCallback(log_dir)])
    second.load_checkpoint(tmp_path / "checkpoint.pt")
    second.train(2)

    training = read_scalars(log_dir / "loss_training", "loss")
    validation = read_scalars(log_dir / "loss_validation", "loss")
    assert [step for step, _ in training] == [1, 2, 3, 4]
    assert [step for step, _ in validation] == [1, 2, 3, 4]
    assert [value for _, value in training] == pytest.approx(second.losses, rel=1e-6)
    assert [value for _, value in validation] == pytest.approx(second.val_losses, rel=1e-6)
    assert [step for step, _ in read_scalars(log_dir, "lr")] == [1, 2, 3, 4]


def test_losses_survive_divergence(tmp_path):
    class PoisonWeightsAtEpoch2(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                with torch.no_grad():
                    trainer.model[0].weight.fill_(float("nan"))

    log_dir = tmp_path / "runs"
    trainer = make_trainer(callbacks=[TensorBoardCallback(log_dir), PoisonWeightsAtEpoch2()])

    with pytest.raises(TrainingDiverged):
        trainer.train(5, seed=42)

    assert [step for step, _ in read_scalars(log_dir / "loss_training", "loss")] == [1, 2]


def test_graph_is_written_once(tmp_path):
    log_dir = tmp_path / "runs"
    trainer = make_trainer(callbacks=[TensorBoardCallback(log_dir)])

    trainer.train(1, seed=42)
    trainer.train(1)

    graph_files = []
    for event_file in sorted(log_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(event_file))
        events.Reload()
        if events.Tags()["graph"]:
            graph_files.append(event_file)
    assert len(graph_files) == 1


def test_graph_does_not_change_training(tmp_path):
    plain = make_trainer()
    plain.train(3, seed=42)
    logged = make_trainer(callbacks=[TensorBoardCallback(tmp_path / "runs")])
    logged.train(3, seed=42)

    for key, value in plain.model.state_dict().items():
        assert torch.equal(logged.model.state_dict()[key], value), key
    assert logged.losses == plain.losses


def test_given_writer_stays_open(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "runs"))
    trainer = make_trainer(callbacks=[TensorBoardCallback(writer=writer, tag="bce", add_graph=False)])

    trainer.train(2, seed=42)
    writer.add_scalar("after_training", 1.0, 0)
    writer.close()

    assert [step for step, _ in read_scalars(tmp_path / "runs" / "bce_training", "bce")] == [1, 2]


def test_callback_needs_exactly_one_destination(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        TensorBoardCallback()
