"""Buffered epoch metrics and the cheaper model logging, against real SQLite stores."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stepbystep.tracking import mlflow_store
from stepbystep.tracking import mlflow_tracking as tracking

mlflow = mlflow_store.import_mlflow()
from mlflow import MlflowClient  # noqa: E402 - after import_mlflow sets MLflow's environment defaults
from mlflow.utils import requirements_utils  # noqa: E402


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with MLflow's schema, created once because the migrations take seconds."""
    folder = tmp_path_factory.mktemp("template")
    mlflow_store.prepare_store(mlflow_store.local_tracking_uri(folder))
    return folder / mlflow_store.DATABASE_FILE


@pytest.fixture
def root(tmp_path: Path, migrated_database: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with a migrated ``mlflow.db``, set as DVC_ROOT and current directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / mlflow_store.DATABASE_FILE).write_bytes(migrated_database.read_bytes())
    for name in ("DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(folder))
    monkeypatch.chdir(folder)
    yield folder
    while mlflow.active_run() is not None:
        mlflow.end_run()


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(mlflow_store.local_tracking_uri(folder))


def logged_steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def epoch_logs(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch, "lr": 0.1}


def test_metrics_wait_for_checkpoint_epoch(root: Path) -> None:
    checkpoint = root / "resume.pt"
    checkpoint.write_bytes(b"checkpoint")
    client = client_for(root)

    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        run_id = run.info.run_id
        callback = tracking.MlflowCallback(
            checkpoint_every=3, checkpoint_path_fn=lambda epoch: checkpoint, flush_interval_s=3600
        )
        callback.on_train_begin(None)
        callback.on_epoch_end(None, 1, epoch_logs(1))
        callback.on_epoch_end(None, 2, epoch_logs(2))
        before_checkpoint = logged_steps(client, run_id)
        callback.on_epoch_end(None, 3, epoch_logs(3))
        at_checkpoint = logged_steps(client, run_id)
        callback.on_epoch_end(None, 4, epoch_logs(4))
        after_checkpoint = logged_steps(client, run_id)
        callback.on_train_end(None)
        at_end = logged_steps(client, run_id)

    assert before_checkpoint == []
    assert at_checkpoint == [1, 2, 3]
    assert after_checkpoint == [1, 2, 3]
    assert at_end == [1, 2, 3, 4]
    assert logged_steps(client, run_id, "val_loss") == [1, 2, 3, 4]
    assert callback.logged_checkpoints == ["checkpoints/epoch_0003.pt"]


def test_zero_interval_writes_every_epoch(root: Path) -> None:
    client = client_for(root)

    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        callback = tracking.MlflowCallback(flush_interval_s=0)
        callback.on_train_begin(None)
        callback.on_epoch_end(None, 1, epoch_logs(1))
        after_first = logged_steps(client, run.info.run_id)

    assert after_first == [1]


def test_failed_run_keeps_buffered_metrics(root: Path) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
            callback = tracking.MlflowCallback(flush_interval_s=3600)
            callback.on_train_begin(None)
            for epoch in range(1, 4):
                callback.on_epoch_end(None, epoch, epoch_logs(epoch))
            raise RuntimeError("diverged")

    client = client_for(root)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert logged_steps(client, run.info.run_id) == [1, 2, 3]


def test_run_end_writes_buffered_metrics(root: Path) -> None:
    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        callback = tracking.MlflowCallback(flush_interval_s=3600)
        callback.on_train_begin(None)
        for epoch in range(1, 6):
            callback.on_epoch_end(None, epoch, epoch_logs(epoch))

    client = client_for(root)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert logged_steps(client, run.info.run_id) == [1, 2, 3, 4, 5]


def test_long_run_split_into_batches(root: Path) -> None:
    """3000 metrics exceed MLflow's 1000 per request, so the client splits one flush into several writes."""
    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        callback = tracking.MlflowCallback(flush_interval_s=3600)
        callback.on_train_begin(None)
        for epoch in range(1, 1001):
            callback.on_epoch_end(None, epoch, epoch_logs(epoch))
        callback.on_train_end(None)

    client = client_for(root)
    assert logged_steps(client, run.info.run_id) == list(range(1, 1001))
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 1000


def test_negative_interval_rejected() -> None:
    with pytest.raises(ValueError, match="flush_interval_s"):
        tracking.MlflowCallback(flush_interval_s=-1)


def test_model_logged_without_package_scan(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []

    def record_scan() -> dict[str, list[str]]:
        scans.append(True)
        return {}

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", record_scan)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    example = np.random.default_rng(0).random((4, 2)).astype(np.float32)

    with tracking.start_training_run("stepbystep", "tiny", "train", {}):
        info = tracking.log_final_model(model, example)

    assert scans == []
    assert requirements_utils._MODULES_TO_PACKAGES is None
    model_folder = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    requirements = (model_folder / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    np.testing.assert_allclose(loaded.predict(example), expected, rtol=1e-6)


def test_model_exported_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exported = []
    export = torch.export.export

    def counting_export(*args: object, **kwargs: object) -> object:
        exported.append(args[0])
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting_export)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3), nn.ReLU(), nn.Linear(3, 1))
    images = np.random.default_rng(0).random((4, 1, 5, 5)).astype(np.float32)

    with tracking.start_training_run("stepbystep", "images", "train", {}) as run:
        info = tracking.log_final_model(model, images)

    assert len(exported) == 1
    assert torch.export.export is counting_export
    assert client_for(root).get_run(run.info.run_id).data.tags["model_serialization"] == "pt2"
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    for rows in (images, images[:3]):
        with torch.no_grad():
            expected = model(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(loaded.predict(rows), expected, rtol=1e-6)


def test_reused_export_matches_trial_call() -> None:
    model = nn.Linear(2, 1)
    example = np.ones((3, 2), dtype=np.float32)
    program, error = tracking._trial_export(model, example)
    batch = [{0: torch.export.Dim.AUTO}]

    with tracking._reused_export(model, example, program):
        same = torch.export.export(model, (torch.from_numpy(example.copy()),), dynamic_shapes=batch)
        other_rows = torch.export.export(model, (torch.zeros(3, 2),), dynamic_shapes=batch)
        other_model = torch.export.export(nn.Linear(2, 1), (torch.from_numpy(example),), dynamic_shapes=batch)

    assert error is None
    assert same is program
    assert other_rows is not program
    assert other_model is not program


LIGHTNING_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from torch import nn
    from stepbystep.tracking import mlflow_tracking as tracking

    with tracking.start_training_run("stepbystep", "tiny", "train", {}):
        tracking.log_final_model(nn.Linear(2, 1), np.ones((2, 2), dtype=np.float32))
    imported_by_logging = "pytorch_lightning" in sys.modules
    import pytorch_lightning
    print(json.dumps({"imported_by_logging": imported_by_logging, "importable": pytorch_lightning is not None}))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None, reason="pytorch_lightning is not installed")
def test_model_logging_leaves_lightning_importable(root: Path) -> None:
    """Logging hides pytorch_lightning from mlflow.pytorch only, so the process can still import it afterwards."""
    env = {**os.environ, "DVC_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-c", LIGHTNING_PROBE], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"imported_by_logging": False, "importable": True}
