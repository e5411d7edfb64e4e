"""Fault injection against the real pipeline: signals, divergence, a lost server, full or read-only disks, hostile files.

Each case runs `dvc repro`, or a stage command as DVC runs it, in a copy of a
temporary git repository, with MLflow in the copy's SQLite store. The faults
are real: signals to the process group of `dvc repro`, a closed loopback port,
a tmpfs too small for the outputs (needs root, else skipped), a folder that the
stage may not write to, and a running `mlflow ui`. Hostile files would create
a marker file when unpickled. docs/reliability.md lists the cases and outcomes.

The base project trains the regression on 30000 points for 5 epochs with a
resume checkpoint after every epoch, so that an epoch lasts long enough to be
interrupted in the middle, and a single classifier for 2 epochs, so that the
evaluate stage stays short. Its data stages run once and every case works on
a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import BIN_DIR, commit_project, make_project, project_env, run, set_param

pytestmark = pytest.mark.slow

REGRESSION = "linear_regression"
CLASSIFIER = "moons_logistic"
EPOCHS = 5

# Time limits after which a helper gives up waiting, so that a broken pipeline
# fails the test instead of hanging it. None of them is an assertion on speed.
STAGE_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 120


# --- helpers -----------------------------------------------------------------


class CreatesMarkerFile:
    """An object whose unpickling calls ``open(path, "w")`` and so creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def write_hostile_checkpoint(path: Path, marker: Path) -> None:
    """Write a file that looks like a training checkpoint and runs code when unpickled without weights_only."""
    payload = {
        "format": "stepbystep.checkpoint",
        "format_version": 1,
        "model_state_dict": CreatesMarkerFile(marker),
    }
    torch.save(payload, path)


def copy_project(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    return destination


def start_repro(project: Path, log: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    """Start `dvc repro ARGS` in its own process group, with stdout and stderr going to ``log``."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            ["dvc", "repro", *args],
            cwd=project,
            env=project_env(**extra_env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_pattern(log: Path, pattern: str, process: subprocess.Popen, start: int = 0) -> re.Match:
    """Wait until ``log`` contains ``pattern`` after offset ``start`` and return the match."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    compiled = re.compile(pattern)
    while time.monotonic() < deadline:
        match = compiled.search(log.read_text(), start)
        if match:
            return match
        if process.poll() is not None:
            pytest.fail(f"dvc repro exited {process.returncode} before printing {pattern!r}:\n{log.read_text()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"dvc repro did not print {pattern!r} within {STAGE_TIMEOUT_S} s:\n{log.read_text()}")


def wait_for_file(folder: Path, pattern: str, process: subprocess.Popen) -> Path:
    """Wait until ``folder`` contains a file matching ``pattern`` and return it."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
        if process.poll() is not None:
            pytest.fail(f"dvc repro exited {process.returncode} before writing {folder / pattern}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"dvc repro did not write {folder / pattern} within {STAGE_TIMEOUT_S} s")


def signal_group(process: subprocess.Popen, signum: int) -> int:
    """Send ``signum`` to the process group of ``process``, as a terminal's Ctrl+C or a kill does, and wait."""
    os.killpg(process.pid, signum)
    try:
        return process.wait(timeout=STAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"dvc repro did not exit after signal {signal.Signals(signum).name}")


def interrupt_mid_epoch(
    project: Path, log: Path, signum: int, epoch_s: float | None = None
) -> tuple[int, float]:
    """Start `dvc repro train_regression` and send ``signum`` a third of an epoch after an epoch ends.

    Without ``epoch_s``, the duration of an epoch is measured between the log
    lines of the first two epochs, and the signal arrives in the third.
    Returns the exit status of `dvc repro` and the epoch duration.
    """
    epoch_line = rf"epoch \d+/{EPOCHS} "
    process = start_repro(project, log, "train_regression")
    match = wait_for_pattern(log, epoch_line, process)
    if epoch_s is None:
        started = time.monotonic()
        wait_for_pattern(log, epoch_line, process, match.end())
        epoch_s = time.monotonic() - started
    time.sleep(epoch_s / 3)
    return signal_group(process, signum), epoch_s


def mlflow_client(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def training_runs(project: Path, model: str = REGRESSION) -> list:
    """Return the training runs of ``model`` in the project's store, oldest first."""
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("stepbystep")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.model_name = '{model}'", order_by=["attributes.start_time ASC"]
    )
    return list(runs)


def resume_files(project: Path, model: str = REGRESSION) -> list[Path]:
    folder = project / ".resume" / model
    return sorted(folder.iterdir()) if folder.is_dir() else []


def checkpoint_epochs(project: Path, model: str = REGRESSION) -> list[int]:
    """Return the epoch of every resume checkpoint of ``model``, loaded as the pipeline loads it."""
    from stepbystep.training.checkpoint import load_checkpoint

    return [load_checkpoint(path)["epoch"] for path in resume_files(project, model) if path.suffix == ".pt"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output


def assert_same_values(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    """Assert that two loaded checkpoints hold the same values, tensors compared bit for bit."""
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_values(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same_values(left, right, f"{where}[{index}]")
    elif isinstance(expected, float) and expected != expected:
        assert actual != actual, where
    else:
        assert actual == expected, where


def assert_same_model(project: Path, reference: Path, model: str = REGRESSION) -> None:
    """Assert that ``project`` trained the same model.pt and losses.csv as ``reference``, bit for bit."""
    from stepbystep.training.checkpoint import load_checkpoint

    actual = load_checkpoint(project / "models" / model / "model.pt")
    expected = load_checkpoint(reference / "models" / model / "model.pt")
    for key in ("model_state_dict", "optimizer_state_dict", "history", "rng_state", "metadata", "epoch"):
        assert_same_values(actual[key], expected[key], key)
    assert (project / "models" / model / "model.pt").read_bytes() == (reference / "models" / model / "model.pt").read_bytes()
    assert (project / "models" / model / "losses.csv").read_bytes() == (reference / "models" / model / "losses.csv").read_bytes()


# --- the base project and an uninterrupted reference run -----------------------


@pytest.fixture(scope="module")
def base_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a long regression epoch and one classifier, whose data stages ran."""
    root = make_project(tmp_path_factory.mktemp("faults") / "base", git=False)
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train_classifier"] = {CLASSIFIER: params["train_classifier"][CLASSIFIER]}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    set_param(params_file, "tracking.tensorboard", False)
    set_param(params_file, "generate_data.regression.n_samples", 30000)
    set_param(params_file, "train_regression.epochs", EPOCHS)
    set_param(params_file, "train_regression.checkpoint_every", 1)
    set_param(params_file, f"train_classifier.{CLASSIFIER}.epochs", 2)

    # The charts of dvc.yaml name the plot files of every classifier; keep those of the one left.
    dvc_file = root / "dvc.yaml"
    pipeline = yaml.safe_load(dvc_file.read_text())
    for definition in pipeline["plots"]:
        for props in definition.values():
            if props and isinstance(props.get("y"), dict):
                props["y"] = {path: field for path, field in props["y"].items() if Path(path).stem == CLASSIFIER}
    pipeline["plots"] = [
        definition
        for definition in pipeline["plots"]
        if not any(isinstance(props, dict) and props.get("y") == {} for props in definition.values())
    ]
    dvc_file.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    commit_project(root)

    run(["dvc", "repro", "split"], root)
    return root


@pytest.fixture
def project(base_project: Path, tmp_path: Path) -> Path:
    """A fresh copy of the base project."""
    return copy_project(base_project, tmp_path / "project")


class StorePoller:
    """Read runs and metrics from an MLflow server's REST API in a loop, as an open MLflow UI does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests = 0
        self.failures: list[str] = []
        self.run_ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def call(self, path: str, body: dict | None = None) -> dict:
        """Send one request, recording a failure instead of raising it, and return the JSON response."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError) as error:
            detail = error.read().decode(errors="replace")[:500] if isinstance(error, urllib.error.HTTPError) else ""
            self.failures.append(f"{path}: {error} {detail}")
            return {}

    def _loop(self) -> None:
        while not self._stop.is_set():
            experiments = self.call("/api/2.0/mlflow/experiments/search", {"max_results": 100})
            ids = [experiment["experiment_id"] for experiment in experiments.get("experiments", [])]
            if ids:
                found = self.call("/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 100})
                for item in found.get("runs", []):
                    run_id = item["info"]["run_id"]
                    self.run_ids.add(run_id)
                    self.call(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train_loss")
            self._stop.wait(0.2)

    def __enter__(self) -> StorePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def start_mlflow_ui(database: Path, port: int, log: Path) -> subprocess.Popen:
    """Start `mlflow ui` on 127.0.0.1:``port`` over the SQLite file ``database`` and wait until it responds."""
    env = project_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log, "w") as handle:
        server = subprocess.Popen(
            [
                str(BIN_DIR / "mlflow"), "ui",
                "--backend-store-uri", f"sqlite:///{database}",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            cwd=database.parent,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"mlflow ui exited {server.returncode}:\n{log.read_text()}")
            time.sleep(0.5)
    stop_process_group(server)
    pytest.fail(f"mlflow ui did not respond within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()}")


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def reference(base_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted `dvc repro evaluate`, run while `mlflow ui` reads the same SQLite store."""
    folder = tmp_path_factory.mktemp("reference")
    root = copy_project(base_project, folder / "project")
    port = free_port()
    server = start_mlflow_ui(root / "mlflow.db", port, folder / "mlflow-ui.log")
    try:
        with StorePoller(f"http://127.0.0.1:{port}") as poller:
            result = run(["dvc", "repro", "evaluate"], root, check=False)
        # One more request after the writer finished reads the final state.
        experiment = poller.call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=stepbystep")
        experiment_id = experiment["experiment"]["experiment_id"]
        final = poller.call("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
    finally:
        stop_process_group(server)
    return {"root": root, "result": result, "poller": poller, "final_runs": final.get("runs", [])}


def test_reference_run_succeeds(reference: dict[str, Any]) -> None:
    result = reference["result"]

    assert result.returncode == 0, result.stderr
    assert "Running stage 'evaluate'" in result.stdout


def test_mlflow_ui_reads_while_stages_write(reference: dict[str, Any]) -> None:
    poller: StorePoller = reference["poller"]
    statuses = {item["info"]["run_name"]: item["info"]["status"] for item in reference["final_runs"]}

    assert reference["result"].returncode == 0, reference["result"].stderr
    assert poller.failures == []
    assert poller.requests > 10
    assert len(poller.run_ids) >= 2
    assert statuses[REGRESSION] == "FINISHED"
    assert statuses[CLASSIFIER] == "FINISHED"


# --- killed training ---------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(base_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A training interrupted by SIGINT, resumed and killed by SIGKILL, then resumed to the end by `dvc repro`."""
    folder = tmp_path_factory.mktemp("interrupted")
    root = copy_project(base_project, folder / "project")

    sigint_status, epoch_s = interrupt_mid_epoch(root, folder / "sigint.log", signal.SIGINT)
    sigint_checkpoints = checkpoint_epochs(root)
    sigint_runs = training_runs(root)
    sigkill_status, _ = interrupt_mid_epoch(root, folder / "sigkill.log", signal.SIGKILL, epoch_s)
    sigkill_checkpoints = checkpoint_epochs(root)
    sigkill_runs = training_runs(root)
    final = run(["dvc", "repro", "evaluate"], root, check=False)
    return {
        "root": root,
        "sigint": {
            "status": sigint_status,
            "checkpoint_epochs": sigint_checkpoints,
            "runs": sigint_runs,
            "log": (folder / "sigint.log").read_text(),
        },
        "sigkill": {
            "status": sigkill_status,
            "checkpoint_epochs": sigkill_checkpoints,
            "runs": sigkill_runs,
            "log": (folder / "sigkill.log").read_text(),
        },
        "final": final,
    }


def test_sigint_ends_run_killed(interrupted: dict[str, Any]) -> None:
    sigint = interrupted["sigint"]

    assert sigint["status"] != 0
    assert len(sigint["runs"]) == 1
    assert sigint["runs"][0].info.status == "KILLED"
    assert re.search(r"interrupted during epoch \d+; the next run resumes from \S+\.pt", sigint["log"])
    assert "error: interrupted" in sigint["log"]
    assert_no_traceback(sigint["log"])


def test_interrupts_keep_last_checkpoint(interrupted: dict[str, Any]) -> None:
    (sigint_epoch,) = interrupted["sigint"]["checkpoint_epochs"]
    (sigkill_epoch,) = interrupted["sigkill"]["checkpoint_epochs"]

    assert sigint_epoch >= 2
    assert sigkill_epoch > sigint_epoch
    assert sigkill_epoch < EPOCHS


def test_resume_continues_from_checkpoint(interrupted: dict[str, Any]) -> None:
    (sigint_epoch,) = interrupted["sigint"]["checkpoint_epochs"]
    (sigkill_epoch,) = interrupted["sigkill"]["checkpoint_epochs"]
    final_log = interrupted["final"].stderr

    assert f"resuming at epoch {sigint_epoch} " in interrupted["sigkill"]["log"]
    assert f"resuming at epoch {sigkill_epoch} " in final_log
    assert f"epoch {sigkill_epoch + 1}/{EPOCHS} " in final_log
    assert f"epoch {sigkill_epoch}/{EPOCHS} " not in final_log


def test_resumed_training_is_bitwise_identical(interrupted: dict[str, Any], reference: dict[str, Any]) -> None:
    assert interrupted["final"].returncode == 0, interrupted["final"].stderr

    assert_same_model(interrupted["root"], reference["root"])
    metrics = (interrupted["root"] / "reports" / "metrics.json").read_bytes()
    assert metrics == (reference["root"] / "reports" / "metrics.json").read_bytes()


def test_killed_run_marked_and_linked(interrupted: dict[str, Any]) -> None:
    sigint_run, sigkill_run, final_run = training_runs(interrupted["root"])

    # Nothing can end a run at SIGKILL; the next training of the same configuration ends it.
    assert interrupted["sigkill"]["runs"][1].info.status == "RUNNING"
    assert sigkill_run.info.status == "KILLED"
    assert sigint_run.info.status == "KILLED"
    assert final_run.info.status == "FINISHED"
    assert sigkill_run.data.tags["resumed_from"] == sigint_run.info.run_id
    assert final_run.data.tags["resumed_from"] == sigkill_run.info.run_id


def test_resumed_run_has_full_history(interrupted: dict[str, Any]) -> None:
    *_, final_run = training_runs(interrupted["root"])
    history = mlflow_client(interrupted["root"]).get_metric_history(final_run.info.run_id, "train_loss")

    assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1))


def test_finished_training_removes_resume_files(interrupted: dict[str, Any]) -> None:
    assert resume_files(interrupted["root"]) == []


# --- a diverging loss and an unreachable tracking server ----------------------------


def test_diverging_loss_stops_training(project: Path) -> None:
    # A learning rate of 100 makes the squared error of the regression overflow in the first epoch.
    set_param(project / "params.yaml", "train_regression.lr", 100.0)

    result = run(["dvc", "repro", "train_regression"], project, check=False)

    assert result.returncode != 0
    assert "error: linear_regression: training diverged at epoch 1: train_loss is nan" in result.stderr
    assert "Fix: lower train_regression.lr (now 100.0)" in result.stderr
    assert_no_traceback(result.stderr)
    assert not any((project / "models" / REGRESSION).glob("*"))
    (failed_run,) = training_runs(project)
    assert failed_run.info.status == "FAILED"


def test_unreachable_server_fails_fast(project: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    result = run(["dvc", "repro", "train_regression"], project, check=False, MLFLOW_TRACKING_URI=uri)
    elapsed_s = time.monotonic() - started

    assert result.returncode != 0
    assert elapsed_s < 30
    assert f"error: MLflow tracking server {uri} is unreachable" in result.stderr
    assert "Fix: start the server" in result.stderr
    assert "unset MLFLOW_TRACKING_URI" in result.stderr
    assert_no_traceback(result.stderr)
    assert not any((project / "models" / REGRESSION).glob("*"))


def test_server_lost_mid_training(project: Path, tmp_path: Path) -> None:
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_ui(store / "mlflow.db", port, tmp_path / "mlflow-ui.log")
    log = tmp_path / "repro.log"
    try:
        # Without MLflow's HTTP retries (3 by default here) each failing request gives up at once.
        process = start_repro(
            project, log, "train_regression", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"
        )
        wait_for_pattern(log, rf"epoch 2/{EPOCHS} ", process)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    status = process.wait(timeout=STAGE_TIMEOUT_S)
    output = log.read_text()

    assert status != 0
    assert re.search(rf"error: MLflow run \w+ stopped: MLflow tracking server {uri} is unreachable", output)
    assert "Fix: start the server" in output
    assert_no_traceback(output)
    assert not any((project / "models" / REGRESSION).glob("*"))
    (checkpoint_epoch,) = checkpoint_epochs(project)
    assert checkpoint_epoch >= 2


# --- a full disk and a folder without write permission ---------------------------------


@pytest.fixture
def tiny_tmpfs(project: Path):
    """A 4 KiB tmpfs mounted on the regression's output folder: too small for model.pt."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = project / "models" / REGRESSION
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if os.path.ismount(folder):
            subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_fails_cleanly(project: Path, tiny_tmpfs: Path, reference: dict[str, Any]) -> None:
    result = run(["dvc", "repro", "train_regression"], project, check=False)
    left_in_folder = sorted(path.name for path in tiny_tmpfs.iterdir())
    checkpoints = checkpoint_epochs(project)
    (failed_run,) = training_runs(project)
    subprocess.run(["umount", str(tiny_tmpfs)], check=True)

    assert result.returncode != 0
    assert f"error: failed to write models/{REGRESSION}/model.pt: No space left on device" in result.stderr
    assert "Fix: free disk space and run the stage again" in result.stderr
    assert_no_traceback(result.stderr)
    assert left_in_folder == []
    assert failed_run.info.status == "FAILED"
    # Nothing is lost: the last resume checkpoint contains every epoch, and the next run finishes from it.
    assert checkpoints == [EPOCHS]
    rerun = run(["dvc", "repro", "train_regression"], project)
    assert f"resuming at epoch {EPOCHS} " in rerun.stderr
    assert_same_model(project, reference["root"])


def test_read_only_folder_fails_cleanly(project: Path) -> None:
    folder = project / "models" / REGRESSION
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    command = ["dvc", "repro", "train_regression"]
    if os.geteuid() == 0:
        # Root writes anywhere through CAP_DAC_OVERRIDE; without it, the folder's mode applies.
        command = ["setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-all", "--", *command]

    result = run(command, project, check=False)
    folder.chmod(0o755)

    assert result.returncode != 0
    assert f"error: failed to write models/{REGRESSION}/model.pt: Permission denied" in result.stderr
    assert "Fix: make the folder writable and run the stage again" in result.stderr
    assert_no_traceback(result.stderr)
    assert list(folder.iterdir()) == []
    (failed_run,) = training_runs(project)
    assert failed_run.info.status == "FAILED"
    assert checkpoint_epochs(project) == [EPOCHS]


def test_read_only_reports_fail_cleanly(reference: dict[str, Any], tmp_path: Path) -> None:
    project = copy_project(reference["root"], tmp_path / "project")
    reports = project / "reports"
    shutil.rmtree(reports)
    reports.mkdir(mode=0o555)
    command = ["dvc", "repro", "--single-item", "--force", "evaluate"]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-all", "--", *command]

    result = run(command, project, check=False)
    reports.chmod(0o755)

    assert result.returncode != 0
    assert "error: failed to write reports/metrics.json: Permission denied" in result.stderr
    assert "Fix: make the folder writable and run the stage again" in result.stderr
    assert_no_traceback(result.stderr)
    assert list(reports.iterdir()) == []


# --- hostile files ---------------------------------------------------------------------------


def test_hostile_resume_checkpoint_never_runs(project: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    marker = tmp_path / "marker"
    log = tmp_path / "first.log"
    # The run-id file appears when the first run starts, before its first checkpoint. Its name is the
    # configuration's fingerprint, which names the resume checkpoint as well.
    process = start_repro(project, log, "train_regression")
    run_file = wait_for_file(project / ".resume" / REGRESSION, "*.run", process)
    signal_group(process, signal.SIGKILL)
    write_hostile_checkpoint(run_file.with_suffix(".pt"), marker)

    result = run(["dvc", "repro", "train_regression"], project)

    assert not marker.exists()
    assert "ignoring unusable resume checkpoint" in result.stderr
    assert "rejected by weights_only loading, so nothing in it was run or loaded" in result.stderr
    assert_same_model(project, reference["root"])
    killed_run, final_run = training_runs(project)
    assert killed_run.info.status == "KILLED"
    assert "resumed_from" not in final_run.data.tags
    # Control: unrestricted unpickling of the same content runs the payload.
    control = tmp_path / "control.pt"
    write_hostile_checkpoint(control, marker)
    torch.load(control, weights_only=False)
    assert marker.exists()


def test_hostile_model_file_never_runs(reference: dict[str, Any], tmp_path: Path) -> None:
    project = copy_project(reference["root"], tmp_path / "project")
    marker = tmp_path / "marker"
    model_file = project / "models" / REGRESSION / "model.pt"
    write_hostile_checkpoint(model_file, marker)

    # --single-item runs evaluate alone; without it DVC would train the regression again first.
    result = run(["dvc", "repro", "--single-item", "evaluate"], project, check=False)

    assert result.returncode != 0
    assert not marker.exists()
    assert f"error: cannot evaluate model '{REGRESSION}': checkpoint {model_file.relative_to(project)}" in result.stderr
    assert "rejected by weights_only loading, so nothing in it was run or loaded" in result.stderr
    assert_no_traceback(result.stderr)


YAML_TAGS = {
    "object_apply": "!!python/object/apply:builtins.open [{marker}, w]",
    "object_new": "!!python/object/new:builtins.open [{marker}, w]",
    "name": "!!python/name:builtins.open",
}


@pytest.mark.parametrize("tag", YAML_TAGS.values(), ids=YAML_TAGS.keys())
def test_params_with_python_tags_rejected(project: Path, tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "marker"
    params_file = project / "params.yaml"
    text = params_file.read_text()
    hostile = text.replace("  n_images: 300\n", f"  n_images: {tag.format(marker=marker)}\n")
    assert hostile != text
    params_file.write_text(hostile)

    repro = run(["dvc", "repro", "build_images"], project, check=False)
    stage = run(["python", "stages/build_images.py"], project, check=False)

    assert not marker.exists()
    assert repro.returncode != 0
    assert "could not determine a constructor for the tag" in repro.stderr
    assert stage.returncode == 1
    assert "error: rejected params.yaml at line" in stage.stderr
    assert "YAML tags that construct Python objects are not allowed" in stage.stderr
    assert_no_traceback(stage.stderr)


# --- extreme but valid params -------------------------------------------------------------------

EXTREME_CLASSIFIER = "images_deep_relu"


@pytest.fixture(scope="module")
def extreme(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole pipeline with one epoch, batches larger than the data and 2x2 images, then one validation image."""
    root = make_project(tmp_path_factory.mktemp("extreme") / "project", git=False)
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train_classifier"] = {EXTREME_CLASSIFIER: params["train_classifier"][EXTREME_CLASSIFIER]}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    set_param(params_file, "tracking.tensorboard", False)
    set_param(params_file, "build_images.img_size", 2)
    for key in ("train_regression", f"train_classifier.{EXTREME_CLASSIFIER}"):
        set_param(params_file, f"{key}.epochs", 1)
        set_param(params_file, f"{key}.batch_size", 100000)
    dvc_file = root / "dvc.yaml"
    pipeline = yaml.safe_load(dvc_file.read_text())
    pipeline["plots"] = [
        definition for definition in pipeline["plots"] if not any("_moons" in name for name in definition)
    ]
    for definition in pipeline["plots"]:
        for props in definition.values():
            if props and isinstance(props.get("y"), dict):
                props["y"] = {path: field for path, field in props["y"].items() if Path(path).stem == EXTREME_CLASSIFIER}
    dvc_file.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    commit_project(root)

    tiny = run(["dvc", "repro"], root, check=False)
    tiny_outputs = {
        "losses": (root / "models" / EXTREME_CLASSIFIER / "losses.csv").read_text().splitlines(),
        "metrics": json.loads((root / "reports" / "metrics.json").read_text()) if tiny.returncode == 0 else None,
    }

    # Ten images split 0.9 / 0.1 leave one validation image, so one class.
    set_param(params_file, "build_images.n_images", 10)
    set_param(params_file, "split.images.train_fraction", 0.9)
    set_param(params_file, "split.images.val_fraction", 0.1)
    one_sample = run(["dvc", "repro"], root, check=False)
    return {"root": root, "tiny": tiny, "tiny_outputs": tiny_outputs, "one_sample": one_sample}


def test_tiny_params_run_whole_pipeline(extreme: dict[str, Any]) -> None:
    from stepbystep.training.checkpoint import load_checkpoint

    result = extreme["tiny"]
    checkpoint = load_checkpoint(extreme["root"] / "models" / REGRESSION / "model.pt")

    assert result.returncode == 0, result.stderr
    assert "Running stage 'evaluate'" in result.stdout
    # A header and one epoch.
    assert len(extreme["tiny_outputs"]["losses"]) == 2
    assert checkpoint["epoch"] == 1
    assert sorted(extreme["tiny_outputs"]["metrics"]) == sorted([REGRESSION, EXTREME_CLASSIFIER])


def test_one_validation_sample_clear_error(extreme: dict[str, Any]) -> None:
    from stepbystep.training.checkpoint import load_checkpoint

    result = extreme["one_sample"]
    metadata = load_checkpoint(extreme["root"] / "models" / EXTREME_CLASSIFIER / "model.pt")["metadata"]

    assert result.returncode != 0
    assert f"Running stage 'train_classifier@{EXTREME_CLASSIFIER}'" in result.stdout
    assert metadata["input_shape"] == [1, 2, 2]
    assert (
        f"error: cannot evaluate model '{EXTREME_CLASSIFIER}': the validation split of dataset 'images' "
        "has 1 sample and only the class labels"
    ) in result.stderr
    assert "Fix: raise split.images.val_fraction" in result.stderr
    assert_no_traceback(result.stderr)


def test_hostile_image_cache_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from stepbystep.data.importing import import_dataset
    from stepbystep.data.loading import read_dataset
    from stepbystep.errors import DataError
    from stepbystep.params import ImportDataParams

    monkeypatch.chdir(tmp_path)
    for label, name in enumerate(["cat", "dog"]):
        folder = tmp_path / "raw" / name
        folder.mkdir(parents=True)
        for index in range(2):
            pixels = np.full((4, 4), 60 * index + 100 * label, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    params = ImportDataParams(kind="images", path="raw", task="binary", positive_class="dog", channels=1)
    import_dataset("pets", params, Path("data/pets"))
    marker = tmp_path / "marker"
    cache = tmp_path / "data" / "pets" / "images.npy"
    np.save(cache, np.array([CreatesMarkerFile(marker)] * 4, dtype=object), allow_pickle=True)

    with pytest.raises(DataError, match="cannot read image cache") as excinfo:
        read_dataset(Path("data/pets"))

    # The memory-mapped load rejects arrays of Python objects before unpickling any.
    assert "Python objects in dtype" in str(excinfo.value)
    assert not marker.exists()
    # Control: loading the same file with pickles allowed runs the payload.
    np.load(cache, allow_pickle=True)
    assert marker.exists()
