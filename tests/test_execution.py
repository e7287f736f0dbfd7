"""Where evaluations run never changes the study: worker processes on this machine and Ray tasks
on a local two-node cluster give the same records, checkpoints and MLflow nesting as one process,
in any completion order; a worker killed mid-evaluation is retried."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

# Ray reads its authentication settings when it is imported: token authentication (which Ray 2.59+
# turns on for local clusters) is set up for the test cluster and this driver before that.
RAY_TOKEN = secrets.token_hex(32)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)

import ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.errors import ExecutionError  # noqa: E402
from pipeline.study.search_stage import run_search_stage  # noqa: E402
from pipeline.tracking.store import PARENT_TAG  # noqa: E402

from tests.conftest import tiny_params  # noqa: E402

pytestmark = pytest.mark.slow

COMPARED = ("genome", "genome_hash", "status", "val_score", "val_loss", "train_loss", "epochs", "init", "index", "rung",
            "stopped_early")  # fmt: skip
# Rungs scheduled over the evaluator: synchronous successive halving gives the same records on any of them
# (the population evaluator's, to float tolerance without dropout: tests/test_population.py).
FIDELITY = {"fidelity": {"rungs": [1], "eta": 2}}
METHODS = {"ga": {}, "random": {}, "ga-merge": {"ga": {"weights": "merge"}}, "ga-fidelity": FIDELITY,
           "random-fidelity": FIDELITY}  # fmt: skip


def config_with(execution: dict, **changes):
    params = tiny_params()
    params["budget"]["evaluations"] = 7
    params["execution"] = execution
    for section, values in changes.items():
        params[section] = {**params[section], **values}
    return parse_config(params)


def search(method: str, config, root: Path, prepared, monkeypatch) -> list[dict]:
    monkeypatch.setenv("DVC_ROOT", str(root))
    run_search_stage(method, config, prepared.folder, root / "results", root / "ckpt")
    history = json.loads((root / "results" / f"{method}_search/seed-42_history.json").read_text())
    return [{k: r[k] for k in COMPARED} for r in history["evaluations"]]


def nesting(root: Path) -> dict[str, list[str]]:
    """Run name -> names of its children, for every run of the store."""
    runs = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").search_runs(
        [MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").get_experiment_by_name("tiny").experiment_id],
        max_results=1000,
    )
    names = {r.info.run_id: r.info.run_name for r in runs}
    tree: dict[str, list[str]] = {name: [] for name in names.values()}
    for run in runs:
        if PARENT_TAG in run.data.tags:
            tree[names[run.data.tags[PARENT_TAG]]].append(run.info.run_name)
    assert all(r.info.status == "FINISHED" for r in runs)
    return {name: sorted(children) for name, children in tree.items()}


SEQUENTIAL = {"backend": "local", "workers": 1, "threads_per_evaluation": 1}


@pytest.fixture(scope="module")
def sequential_results(tmp_path_factory, prepared_digits):
    """The reference: one process, one thread per evaluation."""
    results = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for method, changes in METHODS.items():
            root = tmp_path_factory.mktemp(f"sequential-{method}")
            config = config_with(SEQUENTIAL, **changes)
            results[method] = (search(method.split("-")[0], config, root, prepared_digits, monkeypatch), nesting(root))
    return results


# -- worker processes on this machine -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_two_worker_processes_give_the_sequential_study(
    method, tmp_path, monkeypatch, prepared_digits, sequential_results
):
    config = config_with({"backend": "local", "workers": 2, "threads_per_evaluation": 1}, **METHODS[method])
    records = search(method.split("-")[0], config, tmp_path, prepared_digits, monkeypatch)
    assert records == sequential_results[method][0]
    assert nesting(tmp_path) == sequential_results[method][1]
    if "fidelity" in method:
        assert {r["stopped_early"] for r in records} == {True, False}  # some rungs stopped, some promoted


def test_asynchronous_rungs_on_two_workers_finish_every_candidate_at_a_rung_it_reached(tmp_path, monkeypatch,
                                                                                      prepared_digits):  # fmt: skip
    config = config_with({"backend": "local", "workers": 2, "threads_per_evaluation": 1},
                         fidelity={"rungs": [1], "eta": 2, "mode": "asynchronous"})  # fmt: skip
    records = search("random", config, tmp_path, prepared_digits, monkeypatch)
    assert len(records) == 7 and all(r["status"] == "finished" for r in records)
    for record in records:
        full = record["genome"]["epochs"]
        assert len(record["epochs"]) == (1 if record["stopped_early"] else full)
        assert record["rung"] == (0 if record["stopped_early"] or full == 1 else 1)
    assert not any((tmp_path / "ckpt").rglob("*.ckpt"))  # no training state outlives its batch


def kill_one(find_pids, delay: float = 1.5) -> threading.Thread:
    """In the background: once ``find_pids()`` returns a process, wait ``delay`` s and SIGKILL it.
    ``thread.done.set()`` stops it looking."""

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not thread.done.is_set():
            for pid in find_pids():
                time.sleep(delay)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it finished first: look again
                thread.killed = pid  # type: ignore[attr-defined]
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.killed = None  # type: ignore[attr-defined]
    thread.done = threading.Event()  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_killed_worker_process_is_replaced_and_its_evaluation_rerun(
    tmp_path, monkeypatch, prepared_digits, sequential_results
):
    config = config_with({"backend": "local", "workers": 2, "threads_per_evaluation": 1})
    # Soon after the workers appear: while they start (loading torch and the data) or train, the pool breaks.
    thread = kill_one(lambda: [p.pid for p in multiprocessing.active_children()], delay=0.5)
    records = search("random", config, tmp_path, prepared_digits, monkeypatch)
    thread.done.set()
    thread.join()
    assert thread.killed is not None
    assert records == sequential_results["random"][0]
    assert nesting(tmp_path) == sequential_results["random"][1]


def _search_with_workers(root: str, prepared: str) -> None:
    """In a child process: a long random search on two worker processes (killed by the test)."""
    os.environ["DVC_ROOT"] = root
    config = config_with({"backend": "local", "workers": 2, "threads_per_evaluation": 1},
                         budget={"evaluations": 60})  # fmt: skip
    run_search_stage("random", config, Path(prepared), Path(root) / "results", Path(root) / "ckpt")


def test_workers_die_with_a_search_process_killed_by_kill_9(tmp_path, prepared_digits):
    """What the out-of-memory killer does: kill -9 of the search process alone. Its worker processes
    (over a GB each in a real study) and multiprocessing's resource tracker must not outlive it."""
    search_process = multiprocessing.get_context("spawn").Process(
        target=_search_with_workers, args=(str(tmp_path), str(prepared_digits.folder))
    )
    search_process.start()
    descendants: list = []
    try:
        deadline = time.monotonic() + 120
        while True:
            descendants = psutil.Process(search_process.pid).children(recursive=True)
            workers = [p for p in descendants if "resource_tracker" not in " ".join(p.cmdline())]
            if len(workers) >= 2 and (tmp_path / "ckpt" / "random_search" / "seed-42.jsonl").is_file():
                break
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        time.sleep(2)  # training
        os.kill(search_process.pid, signal.SIGKILL)
        search_process.join()

        def alive(process) -> bool:
            try:
                return process.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        # A worker watches its parent once started; one orphaned while still importing torch finishes that
        # first: seconds on a busy machine (the soak allows the same 30 s).
        deadline = time.monotonic() + 30
        while any(alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [p.pid for p in descendants if alive(p)] == []
    finally:  # nothing left behind, whatever failed
        for process in [*descendants, psutil.Process(search_process.pid) if search_process.is_alive() else None]:
            try:
                process and process.kill()
            except psutil.NoSuchProcess:
                pass


# -- Ray: a real local cluster of two nodes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray start --head`` on 127.0.0.1 and one more worker node, with token authentication (the
    token of ``RAY_TOKEN``, in the environment they inherit): both stopped at the end."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=180)  # fmt: skip
        subprocess.run([ray_cli, "start", "--address", address, *common], check=True, capture_output=True, timeout=180)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=180)


def ray_execution(address: str) -> dict:
    return {"backend": "ray", "ray": {"address": address, "num_cpus": 1, "max_retries": 2}}


def test_the_cluster_has_two_nodes(ray_cluster):
    ray.init(address=ray_cluster, logging_level="ERROR")
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()


@pytest.mark.parametrize("method", ["ga", "random", "ga-merge", "ga-fidelity"])
def test_a_search_on_ray_equals_the_local_one(
    method, ray_cluster, tmp_path, monkeypatch, prepared_digits, sequential_results
):
    config = config_with(ray_execution(ray_cluster), **METHODS[method])
    records = search(method.split("-")[0], config, tmp_path, prepared_digits, monkeypatch)
    assert records == sequential_results[method][0]
    assert nesting(tmp_path) == sequential_results[method][1]  # stage -> generation -> individual, as locally
    assert not ray.is_initialized()  # the stage disconnected; the cluster stays up for the next


# A user's builder in a file of its own (written to the test's folder, outside the repository): Ray's
# workers get its code from the driver, not from the file.
USER_BUILDER = """
from torch import nn


def build(genome, input_shape, outputs):
    channels, height, width = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, genome["units"]), nn.Tanh(),
                         nn.Linear(genome["units"], outputs))
"""


def custom_builder_with_adam(folder: Path, execution: dict):
    builder = folder / "user_model.py"
    folder.mkdir(parents=True, exist_ok=True)
    builder.write_text(USER_BUILDER)
    genes = {"units": {"type": "choice", "values": [8, 16, 32]}}
    return config_with(execution, model={"builder": f"{builder}:build", "source": str(builder)},
                       train={"optimizer": "adam", "lr_schedule": "cosine"},
                       space={"genes": {**tiny_params()["space"]["genes"], **genes}})  # fmt: skip


def test_a_custom_builder_with_adam_on_ray_equals_one_process(ray_cluster, tmp_path, monkeypatch, prepared_digits):
    local = search("ga", custom_builder_with_adam(tmp_path / "code", SEQUENTIAL), tmp_path / "local", prepared_digits,
                   monkeypatch)  # fmt: skip
    on_ray = search("ga", custom_builder_with_adam(tmp_path / "code", ray_execution(ray_cluster)), tmp_path / "ray",
                    prepared_digits, monkeypatch)  # fmt: skip
    assert on_ray == local
    assert all(r["status"] == "finished" for r in local)
    assert len({r["genome"]["units"] for r in local}) > 1  # the builder's own gene is searched


def ray_task_pids() -> list[int]:
    """Ray names a worker process ``ray::<function>`` while it runs that task."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "ray::_train_task" in line]


def test_a_worker_killed_during_an_evaluation_is_retried(
    ray_cluster, tmp_path, monkeypatch, prepared_digits, sequential_results
):
    thread = kill_one(ray_task_pids, delay=0.0)
    records = search("random", config_with(ray_execution(ray_cluster)), tmp_path, prepared_digits, monkeypatch)
    thread.done.set()
    thread.join()
    assert thread.killed is not None  # a worker died while it ran an evaluation
    assert records == sequential_results["random"][0]
    assert nesting(tmp_path) == sequential_results["random"][1]


def test_an_unreachable_cluster_is_one_line(tmp_path, monkeypatch, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    config = config_with(ray_execution(f"127.0.0.1:{free_port()}"))
    with pytest.raises(ExecutionError, match=r"Ray cluster at 127.0.0.1:\d+ is not reachable") as raised:
        run_search_stage("random", config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert "\n" not in str(raised.value)
