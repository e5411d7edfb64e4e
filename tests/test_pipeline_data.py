"""The data stages under `dvc repro` in a temporary git repository: outputs and staleness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run, set_param

pytestmark = pytest.mark.slow


def ran(output: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in output


def test_dvc_repro_reruns_only_changed_stages(project: Path) -> None:
    first = run(["dvc", "repro", "split"], project)

    assert ran(first.stdout, "generate_data")
    assert ran(first.stdout, "build_images")
    assert ran(first.stdout, "split")
    assert json.loads((project / "data/splits/images.json").read_text())["n_samples"] == 300

    unchanged = run(["dvc", "repro", "split"], project)

    assert not ran(unchanged.stdout, "generate_data")
    assert not ran(unchanged.stdout, "build_images")
    assert not ran(unchanged.stdout, "split")

    set_param(project / "params.yaml", "build_images.n_images", 120)
    changed = run(["dvc", "repro", "split"], project)

    assert not ran(changed.stdout, "generate_data")
    assert ran(changed.stdout, "build_images")
    assert ran(changed.stdout, "split")
    assert json.loads((project / "data/splits/images.json").read_text())["n_samples"] == 120


def test_split_param_reruns_split_only(project: Path) -> None:
    run(["dvc", "repro", "split"], project)
    set_param(project / "params.yaml", "split.moons.seed", 7)

    changed = run(["dvc", "repro", "split"], project)

    assert not ran(changed.stdout, "generate_data")
    assert not ran(changed.stdout, "build_images")
    assert ran(changed.stdout, "split")


def test_dvc_repro_stops_on_invalid_params(project: Path) -> None:
    set_param(project / "params.yaml", "build_images.img_size", 1)

    result = run(["dvc", "repro", "split"], project, check=False)

    assert result.returncode != 0
    assert "build_images.img_size = 1" in result.stderr + result.stdout
    assert not (project / "data/images").exists()
