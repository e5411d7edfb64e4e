"""Shared fixtures: the project root, and throwaway DVC projects in temporary git repositories."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent

# What a DVC project needs from this repository to run its stages.
PROJECT_FILES = ["stages", "src", "params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config"]

# Training length of every model in the shared projects of trained_pipeline and reproduced_pipeline.
SHARED_EPOCHS = 4
SHARED_CHECKPOINT_EVERY = 2


def project_env(**extra: str) -> dict[str, str]:
    """Return an environment for subprocesses: this venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("DVC_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def run(command: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd`` and return its result; fail the test with its output if ``check``."""
    result = subprocess.run(command, cwd=cwd, env=project_env(**extra_env), capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def set_param(params_file: Path, dotted_key: str, value: Any) -> None:
    """Set one value in a params file, creating intermediate mappings as needed."""
    data = yaml.safe_load(params_file.read_text())
    *parents, last = dotted_key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def make_project(destination: Path, git: bool = True) -> Path:
    """Copy the pipeline into ``destination`` as a fresh DVC project, committed to a new git repository."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    if git:
        commit_project(destination)
    return destination


def write_cached_image_folder(folder: Path, pixels: Any, labels: Any) -> None:
    """Write uint8 ``pixels`` of shape (N, C, H, W) and 0/1 ``labels`` as an imported image folder with its cache."""
    import json

    import numpy as np

    from stepbystep.data.images import CACHE_FILE, MANIFEST_FILE
    from stepbystep.data.tables import INFO_FILE

    folder.mkdir(parents=True)
    np.save(folder / CACHE_FILE, pixels)
    lines = ["file,class,label"] + [f"c{label}/{index}.png,c{label},{label}" for index, label in enumerate(labels)]
    (folder / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    _, channels, height, width = pixels.shape
    info = {
        "kind": "images",
        "name": folder.name,
        "task": "binary",
        "classes": ["c0", "c1"],
        "positive_class": "c1",
        "channels": channels,
        "height": height,
        "width": width,
        "n_images": len(labels),
        "cache": CACHE_FILE,
    }
    (folder / INFO_FILE).write_text(json.dumps(info))


def commit_project(root: Path) -> None:
    """Make ``root`` a git repository whose first commit contains every file there."""
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.com"], root)
    run(["git", "config", "user.name", "Tests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "Initial project"], root)


def copy_project(source: Path, destination: Path) -> Path:
    """Copy the project folder ``source`` to ``destination`` and return it, with its MLflow store moved along.

    MLflow keeps absolute artifact locations in its store, so a plain copy of
    ``mlflow.db`` would read and write the artifacts of ``source``. In the
    copy's store, every path under ``source`` names the same path under
    ``destination``.
    """
    shutil.copytree(source, destination, symlinks=True)
    database = destination / "mlflow.db"
    if database.exists():
        move_store_paths(database, source, destination)
    return destination


def move_store_paths(database: Path, old_root: Path, new_root: Path) -> None:
    """Replace the folder ``old_root`` with ``new_root`` in every path and file URI of an SQLite file's text columns."""
    old, new = f"{old_root.resolve()}/", f"{new_root.resolve()}/"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, declared, *_ in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(kind in declared.upper() for kind in ("CHAR", "TEXT", "CLOB")):
                    connection.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (old, new, old),
                    )


# pytest-xdist gives each worker whole work units (pytest_xdist_make_scheduler):
# a module, or all of SHARED_PROJECT_MODULES, which use the session-scoped
# projects below, so that one worker builds those projects once.
SHARED_PROJECT_UNIT = "shared pipeline projects"
SHARED_PROJECT_MODULES = ("test_dvc_remote.py", "test_evaluation_dvc.py", "test_pipeline_training.py")
# Units of about one to four minutes each on two cores, longest first. Workers start
# them before the others, so that no long unit starts near the end of the run.
LONGEST_UNITS = (
    "test_faults.py",
    "test_experiments.py",
    SHARED_PROJECT_UNIT,
    "test_tracking_server.py",
    "test_distributed.py",
    "test_byo_pipeline.py",
)


def work_unit(module: str) -> str:
    """Return the name of the work unit of the tests in the file ``module``."""
    name = Path(module).name
    return SHARED_PROJECT_UNIT if name in SHARED_PROJECT_MODULES else name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests of the longest work units to the front, keeping the order inside each module."""

    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.path.name)
        return LONGEST_UNITS.index(unit) if unit in LONGEST_UNITS else len(LONGEST_UNITS)

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Return xdist's loadscope scheduler with the units of ``work_unit``, each run on one worker in file order.

    With pytest 9.2 and pytest-xdist 3.8, ``--dist loadgroup`` ignores
    ``xdist_group`` marks, so the units come from this scheduler instead.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid.split("::", 1)[0])

    return WorkUnitScheduling(config, log)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the pipeline in a temporary git repository with one commit."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def trained_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A committed project in which `dvc repro train_regression train_classifier` trained every model of params.yaml.

    Every model trains for ``SHARED_EPOCHS`` epochs with a checkpoint every
    ``SHARED_CHECKPOINT_EVERY``, logged to the project's MLflow store, with
    TensorBoard off. Returns the project root and the result of `dvc repro`.
    Tests only read this project; a test that changes one works on a
    ``copy_project`` of it.
    """
    root = make_project(tmp_path_factory.mktemp("trained_pipeline") / "project", git=False)
    params_file = root / "params.yaml"
    set_param(params_file, "tracking.tensorboard", False)
    classifiers = yaml.safe_load(params_file.read_text())["train_classifier"]
    for key in ["train_regression", *(f"train_classifier.{name}" for name in classifiers)]:
        set_param(params_file, f"{key}.epochs", SHARED_EPOCHS)
        set_param(params_file, f"{key}.checkpoint_every", SHARED_CHECKPOINT_EVERY)
    commit_project(root)
    return root, run(["dvc", "repro", "train_regression", "train_classifier"], root)


@pytest.fixture(scope="session")
def reproduced_pipeline(
    trained_pipeline: tuple[Path, subprocess.CompletedProcess[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A copy of ``trained_pipeline`` in which `dvc repro` ran the rest of the pipeline, the evaluate stage.

    Returns the project root and the result of `dvc repro`. Tests only read
    this project; a test that changes one works on a ``copy_project`` of it.
    """
    trained, _ = trained_pipeline
    root = copy_project(trained, tmp_path_factory.mktemp("reproduced_pipeline") / "project")
    return root, run(["dvc", "repro"], root)
