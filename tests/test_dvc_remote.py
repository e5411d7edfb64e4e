"""Sharing data and models: `dvc push` to a local-folder remote, `dvc pull` into a fresh clone.

The clone gets code, params, dvc.lock and the small uncached reports from git,
and every cached output from the remote, so `dvc repro` there has nothing to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import copy_project, run

pytestmark = pytest.mark.slow

MODEL = "moons_logistic"
# Cached outputs of every stage: what `dvc pull` must bring into the clone.
PULLED_PATHS = [
    "data/regression/data.csv",
    "data/moons/data.csv",
    "data/images/manifest.csv",
    "data/splits/moons.json",
    "models/linear_regression/model.pt",
    f"models/{MODEL}/model.pt",
    f"models/{MODEL}/losses.csv",
    "reports/report.html",
]


@pytest.fixture(scope="module")
def shared(reproduced_pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project that ran `dvc repro`, pushed to a local remote and committed, and a clone that pulled."""
    base = tmp_path_factory.mktemp("dvc_remote")
    # A copy of the session's shared project, in which `dvc repro` ran every stage with short training.
    root = copy_project(reproduced_pipeline[0], base / "project")
    remote = base / "remote"
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], root)
    push = run(["dvc", "push"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "Run the pipeline and add the remote"], root)

    clone = base / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], base)
    pull = run(["dvc", "pull"], clone)
    return {"root": root, "remote": remote, "clone": clone, "push": push.stdout, "pull": pull.stdout}


def test_push_fills_remote(shared: dict[str, Path]) -> None:
    stored = [path for path in shared["remote"].rglob("*") if path.is_file()]

    assert "pushed" in shared["push"]
    assert len(stored) > len(PULLED_PATHS)


def test_clone_has_no_outputs_before_pull(shared: dict[str, Path]) -> None:
    # The clone's git checkout alone: only the uncached reports come with it.
    tracked = run(["git", "ls-files"], shared["clone"]).stdout.splitlines()

    assert "dvc.lock" in tracked
    assert "reports/metrics.json" in tracked
    for path in PULLED_PATHS:
        assert path not in tracked, path


def test_pull_restores_every_output(shared: dict[str, Path]) -> None:
    for path in PULLED_PATHS:
        pulled = shared["clone"] / path
        assert pulled.is_file(), path
        assert pulled.read_bytes() == (shared["root"] / path).read_bytes(), path


def test_clone_is_up_to_date(shared: dict[str, Path]) -> None:
    status = run(["dvc", "status"], shared["clone"])
    repro = run(["dvc", "repro"], shared["clone"])

    assert "Data and pipelines are up to date" in status.stdout
    assert "Running stage" not in repro.stdout
    assert "Data and pipelines are up to date" in repro.stdout
    assert not (shared["clone"] / "mlflow.db").exists()
