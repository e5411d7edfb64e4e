"""Training with DistributedDataParallel under torchrun: the engine, the stage under `dvc repro`, and resume.

Two processes on the CPU (gloo) must train the weights of one process with the
same global batch, up to floating-point rounding, and leave one MLflow run and
one set of outputs. torchrun's rendezvous store listens on every network
interface (torch 2.14 has no option to bind it), so the commands that start
torchrun run in a network namespace that has only the loopback interface,
where the machine allows one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN_DIR, PROJECT_ROOT, commit_project, make_project, project_env, run, set_param
from stepbystep.errors import ParamsError
from stepbystep.params import read_params_file, validate_params
from stepbystep.training import distributed
from stepbystep.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

MODEL = "moons_logistic"
STAGE = f"train_classifier@{MODEL}"
KEY = f"train_classifier.{MODEL}"
# 200 epochs leave the resume test about 190 epochs, several seconds, to stop
# the run after its first checkpoint and before it finishes.
EPOCHS = 200
CHECKPOINT_EVERY = 10
# 80 training rows in batches of 11: every batch splits unevenly over 2 ranks.
BATCH_SIZE = 11
STARTUP_TIMEOUT_S = 300


@functools.cache
def _network_namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = ["unshare", "--net", "--", "sh", "-c", "ip link set lo up"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def loopback_only(command: list[str]) -> list[str]:
    """Return ``command`` run in a new network namespace whose only interface is loopback, when unshare allows it."""
    if not _network_namespace_works():
        return command
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


# --- the engine ----------------------------------------------------------------

# Trains small models with the Trainer, once per case, in one process or as
# one rank of torchrun's group. Each rank saves its weights and history.
ENGINE_JOB = textwrap.dedent(
    """
    import sys

    import torch
    from torch import nn

    from stepbystep.data.samplers import make_balanced_sampler
    from stepbystep.training import BatchedLoader, Trainer, TransformedTensorDataset, distributed

    # name: (training rows, batch size, sampler). With 2 ranks, 80 rows in
    # batches of 11 split unevenly, and 81 rows in batches of 16 leave rank 1
    # without a sample in the last batch.
    CASES = {
        "uneven_shards": (80, 11, "shuffle"),
        "empty_shard": (81, 16, "shuffle"),
        "balanced": (80, 16, "balanced"),
    }


    def build_trainer(n_rows, batch_size, sampler, context):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(n_rows + 20, 3, generator=generator)
        noise = 0.3 * torch.randn(n_rows + 20, 1, generator=generator)
        y = (x.sum(dim=1, keepdim=True) + noise > 0.8).float()
        train_data = TransformedTensorDataset(x[:n_rows], y[:n_rows])
        val_data = TransformedTensorDataset(x[n_rows:], y[n_rows:])
        if sampler == "balanced":
            train_loader = BatchedLoader(train_data, batch_size=batch_size, sampler=make_balanced_sampler(y[:n_rows]))
        else:
            train_loader = BatchedLoader(train_data, batch_size=batch_size, shuffle=True)
        val_loader = BatchedLoader(val_data, batch_size=7)
        if context.is_distributed:
            train_loader = distributed.shard_loader(train_loader, context)
            val_loader = distributed.shard_loader(val_loader, context)

        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return Trainer(
            model,
            nn.BCEWithLogitsLoss(),
            optimizer,
            train_loader=train_loader,
            val_loader=val_loader,
            device="cpu",
            track_gradients=True,
            progress=False,
        )


    if __name__ == "__main__":
        folder = sys.argv[1]
        with distributed.process_group() as context:
            for name, (n_rows, batch_size, sampler) in CASES.items():
                trainer = build_trainer(n_rows, batch_size, sampler, context)
                trainer.set_seed(42)
                distributed.prepare_trainer(trainer, context, seed=42)
                trainer.train(6)
                result = {"state_dict": trainer.model.state_dict(), "history": trainer.history}
                torch.save(result, f"{folder}/{name}-rank{context.rank}.pt")
    """
)
ENGINE_CASES = ("uneven_shards", "empty_shard", "balanced")


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with ``single/<case>-rank0.pt`` from one process and ``ddp/<case>-rank{0,1}.pt`` from torchrun."""
    folder = tmp_path_factory.mktemp("engine")
    script = folder / "engine_job.py"
    script.write_text(ENGINE_JOB)
    (folder / "single").mkdir()
    (folder / "ddp").mkdir()

    run([sys.executable, str(script), str(folder / "single")], folder)
    torchrun = [str(BIN_DIR / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(folder / "ddp")]
    run(loopback_only(torchrun), folder, GLOO_SOCKET_IFNAME="lo")
    return folder


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_two_ranks_match_one_process(engine_results: Path, case: str) -> None:
    single = _load(engine_results / "single" / f"{case}-rank0.pt")
    ddp = _load(engine_results / "ddp" / f"{case}-rank0.pt")

    for name, expected in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][name], expected, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(
            torch.tensor(ddp["history"][key]), torch.tensor(single["history"][key]), rtol=1e-5, atol=1e-7, msg=key
        )
    assert ddp["history"].keys() == single["history"].keys()


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_ranks_hold_identical_replicas(engine_results: Path, case: str) -> None:
    rank0 = _load(engine_results / "ddp" / f"{case}-rank0.pt")
    rank1 = _load(engine_results / "ddp" / f"{case}-rank1.pt")

    for name, weights in rank0["state_dict"].items():
        assert torch.equal(rank1["state_dict"][name], weights), name
    assert rank1["history"]["train_loss"] == rank0["history"]["train_loss"]
    assert rank1["history"]["val_loss"] == rank0["history"]["val_loss"]


def test_single_process_without_process_group() -> None:
    env_before = {name: os.environ.get(name) for name in distributed.TORCHRUN_VARIABLES}
    assert env_before == {"RANK": None, "WORLD_SIZE": None}

    distributed.relaunch_with_torchrun(1)
    with distributed.process_group() as context:
        assert context == distributed.SINGLE_PROCESS
        assert not torch.distributed.is_initialized()
    assert not context.is_distributed
    assert context.is_main


def test_params_reject_batch_below_processes() -> None:
    data = read_params_file(PROJECT_ROOT / "params.yaml")
    data["train_classifier"][MODEL]["nproc_per_node"] = 4
    data["train_classifier"][MODEL]["batch_size"] = 3

    with pytest.raises(ParamsError) as raised:
        validate_params(data, "params.yaml")

    assert "batch_size 3 is smaller than nproc_per_node 4" in str(raised.value)
    assert "Fix: set batch_size to at least nproc_per_node" in str(raised.value)


def test_torchrun_command() -> None:
    command = distributed.torchrun_command(4, ["stages/train_classifier.py", MODEL])

    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "stages/train_classifier.py",
        MODEL,
    ]


# --- the stage under dvc repro -------------------------------------------------


def _mlflow_runs(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stepbystep"], filter_string=f"tags.model_name = '{MODEL}'")
    return runs.sort_values("start_time").reset_index(drop=True)


def _event_files(root: Path) -> list[Path]:
    return sorted((root / "runs" / MODEL).glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project where `dvc repro` trained the model with 1 process, then with 2 after a params change."""
    root = make_project(tmp_path_factory.mktemp("distributed_stage") / "project", git=False)
    params_file = root / "params.yaml"
    set_param(params_file, f"{KEY}.epochs", EPOCHS)
    set_param(params_file, f"{KEY}.checkpoint_every", CHECKPOINT_EVERY)
    set_param(params_file, f"{KEY}.batch_size", BATCH_SIZE)
    commit_project(root)

    run(loopback_only(["dvc", "repro", STAGE]), root)
    single = load_checkpoint(root / "models" / MODEL / "model.pt")
    event_files_before = len(_event_files(root))

    set_param(params_file, f"{KEY}.nproc_per_node", 2)
    result = run(loopback_only(["dvc", "repro", STAGE]), root)
    ddp = load_checkpoint(root / "models" / MODEL / "model.pt")
    return {
        "root": root,
        "single": single,
        "ddp": ddp,
        "output": result.stdout + result.stderr,
        "new_event_files": len(_event_files(root)) - event_files_before,
    }


def test_stage_two_processes_match_one(stage_runs: dict) -> None:
    single, ddp = stage_runs["single"], stage_runs["ddp"]

    assert "Running stage 'train_classifier@moons_logistic'" in stage_runs["output"]
    assert single["metadata"]["world_size"] == 1
    assert ddp["metadata"]["world_size"] == 2
    assert ddp["epoch"] == single["epoch"] == EPOCHS
    for name, expected in single["model_state_dict"].items():
        torch.testing.assert_close(ddp["model_state_dict"][name], expected, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(
        torch.tensor(ddp["history"]["val_loss"]), torch.tensor(single["history"]["val_loss"]), rtol=1e-5, atol=1e-7
    )


def test_stage_writes_one_set_of_outputs(stage_runs: dict) -> None:
    root = stage_runs["root"]

    assert sorted(path.name for path in (root / "models").iterdir()) == [MODEL]
    assert sorted(path.name for path in (root / "models" / MODEL).iterdir()) == ["losses.csv", "model.pt", "run.json"]
    assert len((root / "models" / MODEL / "losses.csv").read_text().splitlines()) == EPOCHS + 1
    assert list((root / ".resume" / MODEL).iterdir()) == []
    assert stage_runs["new_event_files"] == 1


def test_stage_records_one_mlflow_run(stage_runs: dict) -> None:
    root = stage_runs["root"]
    runs = _mlflow_runs(root)

    # One run from the single-process repro, one from the two-process repro.
    assert len(runs) == 2
    assert list(runs["status"]) == ["FINISHED", "FINISHED"]
    assert list(runs["params.nproc_per_node"]) == ["1", "2"]
    info = json.loads((root / "models" / MODEL / "run.json").read_text())
    assert info["run_id"] == runs["run_id"].iloc[1]


def _wait_for_checkpoint(folder: Path, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.pt"))
        if found:
            return found[0]
        if process.poll() is not None:
            pytest.fail(f"the run exited with {process.returncode} before writing a checkpoint")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint in {folder} after {STARTUP_TIMEOUT_S} s")


def test_killed_run_resumes_from_checkpoint(stage_runs: dict) -> None:
    root = stage_runs["root"]
    output_dir = root / "models" / MODEL
    shutil.rmtree(output_dir)
    runs_before = len(_mlflow_runs(root))

    # The stage restarts itself as torchrun in the same process, so SIGTERM
    # reaches torchrun, which stops both ranks as a preempted job would be.
    command = loopback_only([sys.executable, "stages/train_classifier.py", MODEL])
    process = subprocess.Popen(command, cwd=root, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for_checkpoint(root / ".resume" / MODEL, process)
    process.send_signal(signal.SIGTERM)
    killed_output, _ = process.communicate(timeout=STARTUP_TIMEOUT_S)

    assert process.returncode != 0, killed_output.decode()
    assert not (output_dir / "model.pt").exists()
    checkpoints = list((root / ".resume" / MODEL).glob("*.pt"))
    assert len(checkpoints) == 1
    saved_epoch = load_checkpoint(checkpoints[0])["epoch"]
    assert 0 < saved_epoch < EPOCHS
    killed_run = _mlflow_runs(root).iloc[-1]
    # KILLED when rank 0 handles SIGTERM first, FAILED when rank 1's exit breaks a collective first.
    assert killed_run["status"] in ("KILLED", "FAILED")

    # The same command again, as after a preemption; `dvc repro` would restore
    # the outputs of the uninterrupted run from its run cache instead.
    result = run(loopback_only([sys.executable, "stages/train_classifier.py", MODEL]), root)

    assert f"resuming at epoch {saved_epoch}" in result.stdout + result.stderr
    resumed = load_checkpoint(output_dir / "model.pt")
    expected = stage_runs["ddp"]
    assert resumed["epoch"] == EPOCHS
    for name, weights in expected["model_state_dict"].items():
        assert torch.equal(resumed["model_state_dict"][name], weights), name
    assert resumed["history"]["train_loss"] == expected["history"]["train_loss"]
    runs = _mlflow_runs(root)
    assert len(runs) == runs_before + 2
    assert runs["tags.resumed_from"].iloc[-1] == killed_run["run_id"]
    assert list((root / ".resume" / MODEL).iterdir()) == []
