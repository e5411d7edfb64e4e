"""The MLflow tracking layer against real SQLite stores in temporary folders."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stepbystep.errors import UserError
from stepbystep.tracking import mlflow_store
from stepbystep.tracking import mlflow_tracking as tracking

mlflow = mlflow_store.import_mlflow()
from mlflow import MlflowClient  # noqa: E402 - after import_mlflow sets MLflow's environment defaults

DVC_VARIABLES = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in DVC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # The tests reach only 127.0.0.1, so a configured proxy must not forward those requests.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with MLflow's schema, created once because the migrations take about 3 s."""
    folder = tmp_path_factory.mktemp("template")
    uri = mlflow_store.local_tracking_uri(folder)
    mlflow_store.prepare_store(uri)
    return folder / mlflow_store.DATABASE_FILE


def git(folder: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def write_code_tree(root: Path) -> None:
    (root / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "src" / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (root / "src" / "pkg.egg-info").mkdir()
    (root / "src" / "pkg.egg-info" / "PKG-INFO").write_text("Name: pkg\n")
    (root / "stages").mkdir()
    (root / "stages" / "train.py").write_text("print('train')\n")
    (root / "params.yaml").write_text("train:\n  lr: 0.1\n")
    (root / "dvc.yaml").write_text("stages: {}\n")


@pytest.fixture
def project(tmp_path: Path, migrated_database: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with a code tree and a migrated ``mlflow.db``, set as DVC_ROOT and current directory."""
    root = tmp_path / "project"
    root.mkdir()
    write_code_tree(root)
    (root / ".gitignore").write_text("mlflow.db*\nmlartifacts/\n")
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=T", "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q", "-m", "code")
    shutil.copyfile(migrated_database, root / mlflow_store.DATABASE_FILE)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def client_for(root: Path) -> MlflowClient:
    return MlflowClient(mlflow_store.local_tracking_uri(root))


def make_regressor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.PReLU(), nn.Linear(4, 1), nn.Sigmoid())


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


# ---------------------------------------------------------------------------
# Tracking URI


def test_tracking_uri_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_store.tracking_uri() == "http://127.0.0.1:5000"
    assert mlflow_store.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_tracking_uri_from_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = tmp_path / "main"
    copy = main / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(main))
    monkeypatch.chdir(copy)

    assert mlflow_store.project_root() == main.resolve()
    assert mlflow_store.tracking_uri() == f"sqlite:////{str(main.resolve()).lstrip('/')}/mlflow.db"


def test_tracking_uri_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert mlflow_store.project_root() == tmp_path.resolve()
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow_store.tracking_uri().startswith("sqlite:////")


def test_tracking_uri_explicit_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "other"))
    assert mlflow_store.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_sqlite_database_path_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert mlflow_store.sqlite_database_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert mlflow_store.sqlite_database_path("sqlite:////abs/x.db?timeout=30") == Path("/abs/x.db")
    assert mlflow_store.sqlite_database_path("sqlite:///rel.db") == tmp_path.resolve() / "rel.db"
    assert mlflow_store.sqlite_database_path("sqlite:///:memory:") is None
    assert mlflow_store.sqlite_database_path("http://127.0.0.1:5000") is None


# ---------------------------------------------------------------------------
# Experiment


def test_experiment_artifacts_inside_root(project: Path) -> None:
    uri = mlflow_store.connect()
    first = mlflow_store.get_or_create_experiment("stepbystep", uri)
    second = mlflow_store.get_or_create_experiment("stepbystep", uri)

    location = client_for(project).get_experiment(first).artifact_location
    assert first == second
    assert location == (project / "mlartifacts").resolve().as_uri()
    assert location.startswith("file:///")


def test_deleted_experiment_raises(project: Path) -> None:
    uri = mlflow_store.connect()
    experiment_id = mlflow_store.get_or_create_experiment("gone", uri)
    client_for(project).delete_experiment(experiment_id)

    with pytest.raises(UserError, match="mlflow experiments restore"):
        mlflow_store.get_or_create_experiment("gone", uri)


# ---------------------------------------------------------------------------
# Params and metrics


def test_flatten_params_nesting() -> None:
    config = {
        "lr": 0.1,
        "hidden_sizes": [8, 4],
        "normalization": {"method": "standardize", "clip": None},
        "empty": {},
        "flag": True,
    }
    assert tracking.flatten_params(config) == {
        "lr": "0.1",
        "hidden_sizes": "[8, 4]",
        "normalization.method": "standardize",
        "normalization.clip": "None",
        "empty": "{}",
        "flag": "True",
    }


def test_epoch_metrics_filter() -> None:
    logs = {
        "epoch": 3,
        "train_loss": 0.5,
        "val_loss": None,
        "lr": np.float32(0.1),
        "flag": True,
        "note": "text",
        "grad_norm/0.weight": float("nan"),
    }
    metrics = {metric.key: metric for metric in tracking.epoch_metrics(logs, epoch=3)}

    assert sorted(metrics) == ["grad_norm/0.weight", "lr", "train_loss"]
    assert all(metric.step == 3 for metric in metrics.values())
    assert metrics["lr"].value == pytest.approx(0.1)


# ---------------------------------------------------------------------------
# Training run


def train_tiny(callback: tracking.MlflowCallback, checkpoint: Path, epochs: int) -> nn.Module:
    """Train a small classifier and call the callback as the trainer does, with a checkpoint every 2 epochs."""
    model = make_regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(16, 2)
    y = (x.sum(dim=1, keepdim=True) > 1).float()

    callback.on_train_begin(None)
    for epoch in range(1, epochs + 1):
        loss = nn.functional.binary_cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if epoch % 2 == 0:
            torch.save({"epoch": epoch, "state_dict": model.state_dict()}, checkpoint)
        logs = {
            "epoch": epoch,
            "train_loss": loss.item(),
            "val_loss": None if epoch == 1 else loss.item() * 1.1,
            "lr": 0.1,
            "note": "not a number",
        }
        callback.on_epoch_end(None, epoch, logs)
    callback.on_train_end(None)
    return model


def test_training_run_end_to_end(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stage runs in a DVC temporary copy, and DVC_ROOT names the main project.
    temporary_copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    temporary_copy.mkdir(parents=True)
    write_code_tree(temporary_copy)
    monkeypatch.chdir(temporary_copy)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    monkeypatch.setenv("DVC_STAGE", "train_classifier@tiny")
    config = {"lr": 0.1, "hidden_sizes": [4], "normalization": {"method": "standardize"}, "long": "x" * 7000}
    checkpoint = project / ".resume" / "tiny.pt"
    checkpoint.parent.mkdir()
    x_example = np.random.default_rng(0).random((5, 2)).astype(np.float32)

    with tracking.start_training_run("stepbystep", "tiny", "train_classifier", config) as run:
        callback = tracking.MlflowCallback(checkpoint_every=2, checkpoint_path_fn=lambda epoch: checkpoint)
        model = train_tiny(callback, checkpoint, epochs=5)
        tracking.log_final_checkpoint(checkpoint)
        info = tracking.log_final_model(model, x_example)
        snapshot = tracking.log_code_snapshot()
    run_id = run.info.run_id

    client = client_for(project)
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "exp-1-tiny"

    tags = finished.data.tags
    assert tags["model_name"] == "tiny"
    assert tags["run_type"] == "training"
    assert tags["dvc_stage"] == "train_classifier@tiny"
    assert tags["dvc_exp_name"] == "exp-1"
    assert tags["dvc_baseline_rev"] == "a" * 40
    assert tags["git_commit"] == git(project, "rev-parse", "HEAD")
    assert tags["model_serialization"] == "pt2"
    assert "resumed_from" not in tags

    params = finished.data.params
    assert params["lr"] == "0.1"
    assert params["hidden_sizes"] == "[4]"
    assert params["normalization.method"] == "standardize"
    assert len(params["long"]) == tracking.MAX_PARAM_VALUE_LENGTH
    assert params["long"].endswith("...[truncated]")

    train_steps = [metric.step for metric in client.get_metric_history(run_id, "train_loss")]
    val_steps = [metric.step for metric in client.get_metric_history(run_id, "val_loss")]
    assert sorted(train_steps) == [1, 2, 3, 4, 5]
    assert sorted(val_steps) == [2, 3, 4, 5]
    assert "note" not in finished.data.metrics
    assert "epoch" not in finished.data.metrics

    checkpoints = sorted(item.path for item in client.list_artifacts(run_id, "checkpoints"))
    assert checkpoints == ["checkpoints/epoch_0002.pt", "checkpoints/epoch_0004.pt", "checkpoints/tiny.pt"]
    assert callback.logged_checkpoints == ["checkpoints/epoch_0002.pt", "checkpoints/epoch_0004.pt"]

    assert snapshot == ["src", "stages", "params.yaml", "dvc.yaml"]
    code = {item.path for item in client.list_artifacts(run_id, "code")}
    assert code == {"code/src", "code/stages", "code/params.yaml", "code/dvc.yaml"}
    source = {item.path for item in client.list_artifacts(run_id, "code/src")}
    assert source == {"code/src/pkg"}
    package = {item.path for item in client.list_artifacts(run_id, "code/src/pkg")}
    assert package == {"code/src/pkg/__init__.py"}

    # Artifacts live in the main project, not in the temporary copy.
    artifact_root = Path(finished.info.artifact_uri.removeprefix("file://"))
    assert artifact_root.is_relative_to(project / "mlartifacts")
    assert (artifact_root / "checkpoints" / "epoch_0004.pt").is_file()

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    for rows in (x_example, x_example[:1], np.random.default_rng(1).random((9, 2)).astype(np.float32)):
        with torch.no_grad():
            expected = model(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(loaded.predict(rows), expected, rtol=1e-6)


class DataDependentModel(nn.Module):
    """A model whose ``forward`` branches on tensor values, which ``torch.export`` rejects."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def test_model_falls_back_to_pickle(project: Path) -> None:
    torch.manual_seed(0)
    model = DataDependentModel()
    x_example = np.random.default_rng(0).random((4, 2)).astype(np.float32)

    with tracking.start_training_run("stepbystep", "branchy", "train", {}) as run:
        info = tracking.log_final_model(model, x_example)

    client = client_for(project)
    assert client.get_run(run.info.run_id).data.tags["model_serialization"] == "pickle"
    # The trial export keeps a failed pt2 attempt out of the experiment's logged models.
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    statuses = [str(model.status) for model in logged if model.source_run_id == run.info.run_id]
    assert statuses == ["READY"]
    predictions = mlflow.pyfunc.load_model(info.model_uri).predict(x_example)
    with torch.no_grad():
        np.testing.assert_allclose(predictions, model(torch.from_numpy(x_example)).numpy(), rtol=1e-6)


def test_model_with_flatten_input(project: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 3), nn.ReLU(), nn.Linear(3, 1))
    images = np.random.default_rng(0).random((3, 1, 5, 5)).astype(np.float32)

    with tracking.start_training_run("stepbystep", "images", "train", {}):
        info = tracking.log_final_model(model, images)

    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(mlflow.pyfunc.load_model(info.model_uri).predict(images), expected, rtol=1e-6)


def test_run_failed_on_exception(project: Path) -> None:
    with pytest.raises(ValueError, match="boom"):
        with tracking.start_training_run("stepbystep", "tiny", "train", {"lr": 0.1}) as run:
            raise ValueError("boom")

    assert client_for(project).get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_run_killed_on_keyboard_interrupt(project: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
            raise KeyboardInterrupt

    assert client_for(project).get_run(run.info.run_id).info.status == "KILLED"


def test_run_killed_on_sigterm(project: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    with pytest.raises(tracking.RunTerminated):
        with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends

    assert client_for(project).get_run(run.info.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_resumed_run_links_and_history(project: Path) -> None:
    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as interrupted:
        pass
    history = {
        "train_loss": [0.9, 0.8, 0.7],
        "val_loss": [None, 0.85, 0.75],
        "lr": [0.1, 0.1, 0.1],
        "grad_norm/0.weight": [0.5, 0.4],
    }

    with tracking.start_training_run(
        "stepbystep", "tiny", "train", {}, resumed_from_run_id=interrupted.info.run_id
    ) as resumed:
        count = tracking.log_history(history, total_epochs=3)

    client = client_for(project)
    run_id = resumed.info.run_id
    assert client.get_run(run_id).data.tags["resumed_from"] == interrupted.info.run_id
    assert count == 10
    train = {metric.step: metric.value for metric in client.get_metric_history(run_id, "train_loss")}
    assert train == {1: 0.9, 2: 0.8, 3: 0.7}
    assert sorted(metric.step for metric in client.get_metric_history(run_id, "val_loss")) == [2, 3]
    # A shorter list ends at the last epoch.
    assert sorted(metric.step for metric in client.get_metric_history(run_id, "grad_norm/0.weight")) == [2, 3]


# ---------------------------------------------------------------------------
# Evaluation


def test_metrics_into_finished_run(project: Path, tmp_path: Path) -> None:
    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        pass
    client = client_for(project)
    run_id = run.info.run_id
    end_time = client.get_run(run_id).info.end_time
    report = tmp_path / "metrics.json"
    report.write_text('{"accuracy": 0.9}\n')
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "roc.csv").write_text("fpr,tpr\n0,0\n1,1\n")

    tracking.log_metrics_to_run(run_id, {"accuracy": 0.9, "roc_auc": 0.95}, [report, plots])

    evaluated = client.get_run(run_id)
    assert evaluated.info.status == "FINISHED"
    assert evaluated.info.end_time == end_time
    assert evaluated.data.metrics["accuracy"] == pytest.approx(0.9)
    assert evaluated.data.metrics["roc_auc"] == pytest.approx(0.95)
    names = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert names == {"evaluation/metrics.json", "evaluation/plots"}
    assert [item.path for item in client.list_artifacts(run_id, "evaluation/plots")] == ["evaluation/plots/roc.csv"]


def test_metrics_into_missing_run(project: Path) -> None:
    with pytest.raises(UserError, match="0123456789abcdef0123456789abcdef not found"):
        tracking.log_metrics_to_run("0123456789abcdef0123456789abcdef", {"accuracy": 0.9})


def test_comparison_run_links_models(project: Path, tmp_path: Path) -> None:
    run_ids = {}
    for name in ("moons_logistic", "moons_deep"):
        with tracking.start_training_run("stepbystep", name, "train", {}) as run:
            run_ids[name] = run.info.run_id
    table = tmp_path / "comparison.csv"
    report = tmp_path / "report.md"

    with tracking.start_comparison_run(
        "stepbystep", run_ids, artifacts=[table, report], metrics={"moons_deep.accuracy": 0.9}
    ) as comparison:
        # The stage writes its report files inside the block.
        table.write_text("model,accuracy\nmoons_deep,0.9\n")
        report.write_text("# Comparison\n")

    client = client_for(project)
    compared = client.get_run(comparison.info.run_id)
    assert compared.info.status == "FINISHED"
    assert compared.info.run_name == "comparison"
    assert compared.data.tags["run_type"] == "comparison"
    assert compared.data.tags["compared_models"] == "moons_logistic,moons_deep"
    assert compared.data.tags["compared_run.moons_logistic"] == run_ids["moons_logistic"]
    assert compared.data.tags["compared_run.moons_deep"] == run_ids["moons_deep"]
    assert compared.data.metrics["moons_deep.accuracy"] == pytest.approx(0.9)
    names = {item.path for item in client.list_artifacts(compared.info.run_id, "comparison")}
    assert names == {"comparison/comparison.csv", "comparison/report.md"}


# ---------------------------------------------------------------------------
# Tracking server


def test_unreachable_server_fails_fast(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    started = time.monotonic()
    with pytest.raises(UserError) as raised:
        mlflow_store.check_tracking_server()
    elapsed = time.monotonic() - started

    assert elapsed < 10
    assert uri in str(raised.value)
    assert "unset MLFLOW_TRACKING_URI" in str(raised.value)
    assert "mlflow server" in str(raised.value)


def test_unreachable_server_stops_run_start(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    started = time.monotonic()
    with pytest.raises(UserError, match=uri):
        with tracking.start_training_run("stepbystep", "tiny", "train", {}):
            pytest.fail("the run must not start")
    assert time.monotonic() - started < 10


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass


@pytest.mark.parametrize(("status", "reachable"), [(200, True), (401, True), (503, False)])
def test_server_check_status_codes(status: int, reachable: bool) -> None:
    handler = type("Handler", (_StatusHandler,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if reachable:
            mlflow_store.check_tracking_server(uri)
        else:
            with pytest.raises(UserError, match="HTTP 503"):
                mlflow_store.check_tracking_server(uri)
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------
# Concurrency


def test_write_waits_for_locked_database(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write waits out a 6 s lock, longer than SQLite's default 5 s busy timeout, without a retry."""
    with tracking.start_training_run("stepbystep", "tiny", "train", {}) as run:
        pass
    locked = threading.Event()

    def hold_lock() -> None:
        connection = sqlite3.connect(project / "mlflow.db", isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(6)
        connection.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(timeout=10)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=mlflow_store.__name__):
        tracking.log_metrics_to_run(run.info.run_id, {"accuracy": 0.5})
    waited = time.monotonic() - started
    holder.join()

    assert waited > 5
    assert client_for(project).get_run(run.info.run_id).data.metrics["accuracy"] == 0.5
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stepbystep.tracking import mlflow_tracking as tracking

    name, ready_dir = sys.argv[1], Path(sys.argv[2])
    (ready_dir / name).touch()
    deadline = time.monotonic() + 60
    while len(list(ready_dir.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    with tracking.start_training_run("stepbystep", name, "train", {"worker": name}) as run:
        callback = tracking.MlflowCallback()
        callback.on_train_begin(None)
        for epoch in range(1, 6):
            callback.on_epoch_end(None, epoch, {"train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch})
    print(run.info.run_id)
    """
)


@pytest.mark.slow
def test_two_processes_share_new_store(tmp_path: Path) -> None:
    root = tmp_path / "project"
    ready = tmp_path / "ready"
    root.mkdir()
    ready.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "DVC_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}

    workers = [
        subprocess.Popen(
            [sys.executable, str(script), name, str(ready)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]

    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert "database is locked" not in stderr
    run_ids = [stdout.strip().splitlines()[-1] for stdout, _ in outputs]
    client = client_for(root)
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "train_loss")) == 5
    experiments = {client.get_run(run_id).info.experiment_id for run_id in run_ids}
    assert len(experiments) == 1
