"""`dvc exp` with MLflow in a temporary git repository: queued, parallel, temporary and cached experiments.

One project is shared by the tests of this module, which run in file order
and change its workspace from `test_run_cache_logs_nothing_twice` on. To stay
quick, every model trains for two epochs, and all but linear_regression,
moons_logistic and images_deep_relu are removed from params.yaml and from the
charts of dvc.yaml.
The project starts without a pipeline run and without an MLflow store, so the
two queued experiments run every stage at the same time, with two workers
that create the SQLite store together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import PROJECT_ROOT, commit_project, make_project, project_env, run, set_param

pytestmark = pytest.mark.slow

EPOCHS = 2
KEPT_CLASSIFIERS = ("moons_logistic", "images_deep_relu")
TUNED_MODEL = "images_deep_relu"
LR_KEY = f"train_classifier.{TUNED_MODEL}.lr"
QUEUED_LRS = (0.05, 0.2)
TEMP_LR = 0.1
QUEUE_WAIT_S = 1800  # a limit against a hung worker, not a performance check


# ---------------------------------------------------------------------------
# Helpers


def mlflow_client(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def model_names(project: Path) -> list[str]:
    params = yaml.safe_load((project / "params.yaml").read_text())
    return ["linear_regression", *params["train_classifier"]]


def experiments_in_show(project: Path) -> dict[str, dict[str, Any]]:
    """Return the data of every experiment in `dvc exp show --json`, by experiment name."""
    baselines = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found = {}
    for baseline in baselines:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                found[revision["name"]] = revision["data"]
    return found


def lr_of(data: dict[str, Any]) -> float:
    return data["params"]["params.yaml"]["data"]["train_classifier"][TUNED_MODEL]["lr"]


def metrics_of(data: dict[str, Any]) -> dict[str, Any]:
    return data["metrics"]["reports/metrics.json"]["data"]


def experiment_runs(project: Path, experiment: str) -> list:
    """Return the MLflow runs tagged with the DVC experiment name ``experiment``."""
    client = mlflow_client(project)
    mlflow_experiment = client.get_experiment_by_name("stepbystep")
    return client.search_runs(
        [mlflow_experiment.experiment_id], filter_string=f"tags.dvc_exp_name = '{experiment}'"
    )


def training_run(project: Path, experiment: str, model: str = TUNED_MODEL):
    runs = [run for run in experiment_runs(project, experiment) if run.data.tags.get("model_name") == model]
    assert len(runs) == 1, f"{len(runs)} training runs of {model} tagged {experiment}"
    return runs[0]


def all_training_runs(project: Path) -> list:
    client = mlflow_client(project)
    mlflow_experiment = client.get_experiment_by_name("stepbystep")
    return client.search_runs([mlflow_experiment.experiment_id], filter_string="tags.run_type = 'training'")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def ran_experiment(output: str) -> str:
    match = re.search(r"Ran experiment\(s\): (\S+)", output)
    assert match, output
    return match.group(1)


def wait_for_queue(project: Path) -> str:
    """Wait until no queued experiment is queued or running, and return the last `dvc queue status` output."""
    deadline = time.monotonic() + QUEUE_WAIT_S
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"queued experiments still running after {QUEUE_WAIT_S} s:\n{status}")
        time.sleep(5)


def queue_logs(project: Path, names: list[str]) -> str:
    return "\n".join(run(["dvc", "queue", "logs", name], project, check=False).stdout for name in names)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------------
# The project and its queued experiments


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed project with three models of two epochs, no pipeline run and no MLflow store."""
    root = make_project(tmp_path_factory.mktemp("experiments") / "project", git=False)
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    removed = [name for name in params["train_classifier"] if name not in KEPT_CLASSIFIERS]
    for name in removed:
        del params["train_classifier"][name]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    set_param(params_file, "tracking.tensorboard", False)
    set_param(params_file, "train_regression.epochs", EPOCHS)
    for name in params["train_classifier"]:
        set_param(params_file, f"train_classifier.{name}.epochs", EPOCHS)
        set_param(params_file, f"train_classifier.{name}.checkpoint_every", 1)

    dvc_file = root / "dvc.yaml"
    pipeline = yaml.safe_load(dvc_file.read_text())
    for definition in pipeline["plots"]:
        for props in definition.values():
            if props and isinstance(props.get("y"), dict):
                props["y"] = {path: field for path, field in props["y"].items() if Path(path).stem not in removed}
    dvc_file.write_text(yaml.safe_dump(pipeline, sort_keys=False))

    # Queued experiments run in a copy that contains only what git tracks.
    commit_project(root)
    return root


@pytest.fixture(scope="module")
def queued(project: Path) -> dict[float, str]:
    """Queue a sweep of two learning rates, run it with two workers, and return the experiment names by lr."""
    values = ",".join(str(lr) for lr in QUEUED_LRS)
    result = run(["dvc", "exp", "run", "--queue", "-S", f"{LR_KEY}={values}"], project)
    names = re.findall(r"Queued experiment '(\S+)'", result.stdout)
    assert len(names) == len(QUEUED_LRS), result.stdout

    run(["dvc", "queue", "start", "-j", "2"], project)
    status = wait_for_queue(project)

    assert status.count("Success") == len(QUEUED_LRS), status + queue_logs(project, names)
    shown = experiments_in_show(project)
    return {lr_of(shown[name]): name for name in names}


# ---------------------------------------------------------------------------
# Queued experiments in DVC and MLflow


def test_queued_experiments_in_exp_show(project: Path, queued: dict[float, str]) -> None:
    shown = experiments_in_show(project)

    assert sorted(queued) == sorted(QUEUED_LRS)
    first, second = (shown[queued[lr]] for lr in QUEUED_LRS)
    assert lr_of(first) == QUEUED_LRS[0]
    assert lr_of(second) == QUEUED_LRS[1]
    for data in (first, second):
        assert sorted(metrics_of(data)) == sorted(model_names(project))
    assert metrics_of(first)[TUNED_MODEL]["val_loss"] != metrics_of(second)[TUNED_MODEL]["val_loss"]
    assert metrics_of(first)["linear_regression"]["mse"] == metrics_of(second)["linear_regression"]["mse"]


def test_queued_runs_in_project_store(project: Path, queued: dict[float, str]) -> None:
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    for lr, name in queued.items():
        training = training_run(project, name)
        assert training.info.status == "FINISHED"
        assert training.data.params["lr"] == str(lr)
        assert training.data.params["epochs"] == str(EPOCHS)
        assert training.data.tags["dvc_exp_name"] == name
        assert training.data.tags["dvc_baseline_rev"] == baseline
        assert training.data.tags["mlflow.runName"] == f"{name}-{TUNED_MODEL}"

        artifacts = local_path(training.info.artifact_uri)
        assert artifacts.is_relative_to(project / "mlartifacts")
        assert (artifacts / "checkpoints/model.pt").stat().st_size > 0
        assert (artifacts / f"checkpoints/epoch_{EPOCHS:04d}.pt").is_file()
        snapshot = yaml.safe_load((artifacts / "code/params.yaml").read_text())
        assert snapshot["train_classifier"][TUNED_MODEL]["lr"] == lr


def test_store_and_artifacts_at_project_root(project: Path, queued: dict[float, str]) -> None:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("stepbystep")

    assert experiment.artifact_location == (project / "mlartifacts").as_uri()
    assert [path.relative_to(project) for path in project.rglob("mlflow.db")] == [Path("mlflow.db")]
    for run_info in client.search_runs([experiment.experiment_id]):
        assert ".dvc/tmp" not in run_info.info.artifact_uri, run_info.info.run_id
    assert list((project / ".dvc/tmp/exps").rglob("params.yaml")) == []


def test_every_run_file_names_a_stored_run(project: Path, queued: dict[float, str]) -> None:
    import dvc.api

    client = mlflow_client(project)
    for name in queued.values():
        for model in model_names(project):
            info = json.loads(dvc.api.read(f"models/{model}/run.json", repo=str(project), rev=name))
            stored = client.get_run(info["run_id"])
            assert stored.info.status == "FINISHED", (name, model)
            assert stored.data.tags["model_name"] == model


def test_params_metrics_plots_diff(project: Path, queued: dict[float, str]) -> None:
    first, second = (queued[lr] for lr in QUEUED_LRS)

    params = json.loads(run(["dvc", "params", "diff", first, second, "--json"], project).stdout)
    metrics = json.loads(run(["dvc", "metrics", "diff", first, second, "--json"], project).stdout)
    plots = json.loads(run(["dvc", "plots", "diff", first, second, "--json"], project).stdout)

    assert list(params["params.yaml"]) == [LR_KEY]
    assert params["params.yaml"][LR_KEY]["old"] == QUEUED_LRS[0]
    assert params["params.yaml"][LR_KEY]["new"] == QUEUED_LRS[1]
    assert f"{TUNED_MODEL}.val_loss" in metrics["reports/metrics.json"]
    assert not any(key.startswith("linear_regression.") for key in metrics["reports/metrics.json"])
    losses = plots["data"][f"reports/plots/losses/{TUNED_MODEL}.csv"][0]
    assert set(losses["revisions"]) == {first, second}


def test_compare_prints_last_experiments(project: Path, queued: dict[float, str]) -> None:
    result = run([sys.executable, "-m", "stepbystep.tracking.compare", "--last", "2"], project)
    lines = result.stdout.splitlines()

    header = next(line for line in lines if line.startswith("experiment")).split()
    assert header[:7] == ["experiment", "model", "run_id", "status", "lr", "epochs", "batch_size"]
    assert {"val_loss", "eval/accuracy", "eval/roc_auc"} <= set(header[7:])
    for lr, name in queued.items():
        run_id = training_run(project, name).info.run_id
        (row,) = [line.split() for line in lines if run_id in line]
        assert row[:5] == [name, TUNED_MODEL, run_id, "FINISHED", str(lr)]


def test_compare_by_revision(project: Path, queued: dict[float, str]) -> None:
    name = queued[QUEUED_LRS[0]]

    result = run([sys.executable, "-m", "stepbystep.tracking.compare", "--rev", name, "--params", "lr"], project)

    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(name)]
    assert sorted(row[1] for row in rows) == sorted(model_names(project))
    (tuned,) = [row for row in rows if row[1] == TUNED_MODEL]
    assert tuned[2] == training_run(project, name).info.run_id
    assert tuned[4:6] == [name, str(QUEUED_LRS[0])]


def test_compare_without_store(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "stepbystep.tracking.compare"], tmp_path, check=False)

    assert result.returncode == 1
    assert f"no MLflow store at {tmp_path.resolve() / 'mlflow.db'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_ui_serves_runs(project: Path, queued: dict[float, str], tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "mlflow-ui.log"

    # -o keeps make from reinstalling the environment, which this test does not need.
    makefile = str(PROJECT_ROOT / "Makefile")
    command = ["make", "-f", makefile, "-o", ".venv/.installed", "mlflow-ui", f"MLFLOW_PORT={port}"]
    recipe = run([*command, "-n"], project).stdout
    assert "--host 127.0.0.1" in recipe
    assert f"sqlite:///{project.resolve()}/mlflow.db" in recipe
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, cwd=project, env=project_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow UI did not start on port {port}:\n{log_path.read_text()}")
            time.sleep(1)

        experiment = http_json(f"{base_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stepbystep")
        experiment_id = experiment["experiment"]["experiment_id"]
        name = queued[QUEUED_LRS[0]]
        found = http_json(
            f"{base_url}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [experiment_id], "filter": f"tags.dvc_exp_name = '{name}'"},
        )
        run_names = sorted(item["info"]["run_name"] for item in found["runs"])
        assert f"{name}-{TUNED_MODEL}" in run_names

        training = training_run(project, name)
        listing = http_json(f"{base_url}/api/2.0/mlflow/artifacts/list?run_id={training.info.run_id}&path=checkpoints")
        assert "checkpoints/model.pt" in [item["path"] for item in listing["files"]]
        with urllib.request.urlopen(
            f"{base_url}/get-artifact?path=checkpoints/model.pt&run_uuid={training.info.run_id}", timeout=30
        ) as response:
            served = response.read()
        assert served == (local_path(training.info.artifact_uri) / "checkpoints/model.pt").read_bytes()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# ---------------------------------------------------------------------------
# Temporary experiments


def test_temp_experiment_artifacts_survive(project: Path, queued: dict[float, str]) -> None:
    import mlflow
    import numpy as np

    from stepbystep.training.checkpoint import load_checkpoint

    result = run(["dvc", "exp", "run", "--temp", "-S", f"{LR_KEY}={TEMP_LR}"], project)
    name = ran_experiment(result.stdout)

    assert f"Running stage 'train_classifier@{TUNED_MODEL}'" in result.stdout
    assert list((project / ".dvc/tmp/exps").rglob("params.yaml")) == []
    training = training_run(project, name)
    assert training.data.params["lr"] == str(TEMP_LR)
    artifacts = local_path(training.info.artifact_uri)
    assert artifacts.is_relative_to(project / "mlartifacts")

    checkpoint = load_checkpoint(artifacts / "checkpoints/model.pt")
    assert checkpoint["metadata"]["config"]["lr"] == TEMP_LR
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    logged = mlflow.pyfunc.load_model(f"runs:/{training.info.run_id}/model")
    images = np.zeros((3, 1, 5, 5), dtype=np.float32)
    assert np.asarray(logged.predict(images)).shape[0] == 3


# ---------------------------------------------------------------------------
# Experiments in the workspace


def test_run_cache_logs_nothing_twice(project: Path, queued: dict[float, str]) -> None:
    lr = QUEUED_LRS[0]
    original = training_run(project, queued[lr])
    client = mlflow_client(project)
    runs_before = len(all_training_runs(project))
    history_before = len(client.get_metric_history(original.info.run_id, "eval/roc_auc"))

    result = run(["dvc", "exp", "run", "-S", f"{LR_KEY}={lr}"], project)
    name = ran_experiment(result.stdout)

    assert f"Stage 'train_classifier@{TUNED_MODEL}' is cached - skipping run" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    assert len(all_training_runs(project)) == runs_before
    assert [run.info.run_id for run in experiment_runs(project, name) if run.data.tags["run_type"] == "training"] == []
    assert len(client.get_metric_history(original.info.run_id, "eval/roc_auc")) == history_before
    run_file = json.loads((project / f"models/{TUNED_MODEL}/run.json").read_text())
    assert run_file["run_id"] == original.info.run_id

    table = run([sys.executable, "-m", "stepbystep.tracking.compare", "--rev", name, "--model", TUNED_MODEL], project)
    (row,) = [line.split() for line in table.stdout.splitlines() if line.startswith(name)]
    assert row[2] == original.info.run_id
    assert row[4] == queued[lr]


def test_set_param_reruns_only_that_model(project: Path) -> None:
    result = run(["dvc", "exp", "run", "-S", "train_classifier.moons_logistic.lr=0.3"], project)
    name = ran_experiment(result.stdout)

    assert "Running stage 'train_classifier@moons_logistic'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    for stage in ("generate_data", "build_images", "split", "train_regression", f"train_classifier@{TUNED_MODEL}"):
        assert f"Running stage '{stage}'" not in result.stdout, stage
    training = training_run(project, name, "moons_logistic")
    assert training.data.params["lr"] == "0.3"
    assert training.data.tags["mlflow.runName"] == f"{name}-moons_logistic"


def test_exp_apply_restores_best(project: Path, queued: dict[float, str]) -> None:
    shown = experiments_in_show(project)
    best = min(queued.values(), key=lambda name: metrics_of(shown[name])[TUNED_MODEL]["val_loss"])

    run(["dvc", "exp", "apply", best], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train_classifier"][TUNED_MODEL]["lr"] == lr_of(shown[best])
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics[TUNED_MODEL]["val_loss"] == metrics_of(shown[best])[TUNED_MODEL]["val_loss"]
    run_file = json.loads((project / f"models/{TUNED_MODEL}/run.json").read_text())
    assert run_file["run_id"] == training_run(project, best).info.run_id
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


# ---------------------------------------------------------------------------
# Resume checkpoints of parallel trainings


def test_parallel_training_gets_own_resume_files(tmp_path: Path) -> None:
    from stepbystep.workflows.training import _claim_resume_files

    folder = tmp_path / ".resume" / "moons_logistic"
    code = (
        "import sys; from pathlib import Path; from stepbystep.workflows.training import _claim_resume_files; "
        "print(*_claim_resume_files(Path(sys.argv[1]), 'abc'), sep='\\n')"
    )

    claimed = _claim_resume_files(folder, "abc")
    other = subprocess.run(
        [sys.executable, "-c", code, str(folder)], env=project_env(), capture_output=True, text=True, check=True
    )

    assert claimed == (folder / "abc.pt", folder / "abc.run")
    assert _claim_resume_files(folder, "abc") == claimed
    private = [Path(line) for line in other.stdout.splitlines()]
    assert [path.parent for path in private] == [folder, folder]
    assert [path.suffix for path in private] == [".pt", ".run"]
    assert all(re.fullmatch(r"abc-\d+", path.stem) for path in private), private
