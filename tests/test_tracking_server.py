"""A training stage logging to a remote MLflow tracking server that serves the artifacts.

Each test starts ``mlflow server --serve-artifacts`` on a free loopback port,
with a SQLite backend store or with a PostgreSQL server started for the test.
It points ``dvc repro`` at the server with ``MLFLOW_TRACKING_URI=http://...``
and finds the run, its metrics and its model through the server's API alone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN_DIR, commit_project, make_project, project_env, run, set_param

pytestmark = pytest.mark.slow

MODEL = "moons_logistic"
STAGE = f"train_classifier@{MODEL}"
EPOCHS = 4
SERVER_START_TIMEOUT_S = 180


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    # The server runs in its own session, so the signal reaches its workers too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, folder: Path) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 with served artifacts under ``folder``, and yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "mlflow-server.log"
    command = [
        str(BIN_DIR / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(folder / "served-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=folder, env=project_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def data_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose data and split stages ran, with few training epochs."""
    root = make_project(tmp_path_factory.mktemp("tracking_server") / "project", git=False)
    set_param(root / "params.yaml", f"train_classifier.{MODEL}.epochs", EPOCHS)
    set_param(root / "params.yaml", f"train_classifier.{MODEL}.checkpoint_every", 2)
    commit_project(root)
    run(["dvc", "repro", "split"], root)
    return root


def train_against(root: Path, url: str) -> str:
    """Run the training stage with ``MLFLOW_TRACKING_URI=url`` and return its run id from run.json."""
    run(["dvc", "repro", "--force", "--single-item", "--no-run-cache", STAGE], root, MLFLOW_TRACKING_URI=url)
    return json.loads((root / "models" / MODEL / "run.json").read_text())["run_id"]


def check_run_on_server(root: Path, url: str, run_id: str) -> None:
    """Find the run, its metrics, checkpoints and model through the server, and compare the model with model.pt."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from stepbystep.training.checkpoint import load_checkpoint
    from stepbystep.workflows.training import build_model

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("stepbystep")
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:")

    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.model_name = '{MODEL}'")
    assert [found.info.run_id for found in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["epochs"] == str(EPOCHS)

    train_loss = client.get_metric_history(run_id, "train_loss")
    assert [metric.step for metric in train_loss] == list(range(1, EPOCHS + 1))
    checkpoints = sorted(item.path for item in client.list_artifacts(run_id, "checkpoints"))
    assert checkpoints == ["checkpoints/epoch_0002.pt", "checkpoints/epoch_0004.pt", "checkpoints/model.pt"]

    mlflow.set_tracking_uri(url)
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    checkpoint = load_checkpoint(root / "models" / MODEL / "model.pt")
    model = build_model(checkpoint["metadata"])
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    features = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.as_tensor(features)).numpy()
    predicted = np.asarray(logged.predict(features))
    np.testing.assert_allclose(predicted.reshape(expected.shape), expected, rtol=1e-6)

    # Nothing was written to a local store: runs and artifacts live on the server.
    assert not (root / "mlflow.db").exists()
    assert not (root / "mlartifacts").exists()


def test_stage_logs_to_sqlite_server(data_project: Path, tmp_path: Path) -> None:
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as url:
        run_id = train_against(data_project, url)
        check_run_on_server(data_project, url, run_id)

    served = list((tmp_path / "served-artifacts").rglob("model.pt"))
    assert served, "the server stored no checkpoint under its artifacts destination"


# --- PostgreSQL ------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Return the folder of PostgreSQL's initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(Path(path).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root, so root runs them as the postgres user.
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Run a throwaway PostgreSQL server on 127.0.0.1 and yield the URI of its database ``mlflow``."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (no initdb or pg_ctl); `apt-get install postgresql` provides it")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser, which PostgreSQL's initdb needs to drop root")
        try:
            import pwd

            postgres_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user exists to run the PostgreSQL server")

    # A folder outside pytest's private temp folder, which the postgres user cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="stepbystep-postgres-"))
    if os.geteuid() == 0:
        os.chown(folder, postgres_user.pw_uid, postgres_user.pw_gid)
    data, log_path = folder / "data", folder / "server.log"
    port = free_port()
    as_user = _as_postgres_user()
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
        subprocess.run(
            [*pg_ctl, "-l", str(log_path), "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True
        )
        started = True
        subprocess.run(
            [*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    except subprocess.CalledProcessError as error:
        log = log_path.read_text() if log_path.exists() else ""
        pytest.fail(f"{' '.join(error.cmd)} exited {error.returncode}: {error.stderr.decode()}\n{log}")
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_stage_logs_to_postgres_server(data_project: Path, tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg, the PostgreSQL driver of the MLflow server, is not installed")
    with postgres_server() as database_uri, mlflow_server(database_uri, tmp_path) as url:
        run_id = train_against(data_project, url)
        check_run_on_server(data_project, url, run_id)
