"""Shared fixtures: the project root, and throwaway DVC projects in temporary git repositories."""

from __future__ import annotations

import os
import shutil
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


def commit_project(root: Path) -> None:
    """Make ``root`` a git repository whose first commit contains every file there."""
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.com"], root)
    run(["git", "config", "user.name", "Tests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "Initial project"], root)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the pipeline in a temporary git repository with one commit."""
    return make_project(tmp_path / "project")
