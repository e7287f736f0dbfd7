"""Soak: at least 20 ``kill -9``s of the process group at random moments across the search stages
and the champion, each followed by another ``dvc repro``, while another process reads the MLflow
store; at the end the results equal an uninterrupted run's, no genome is FINISHED twice within a
stage run, and nothing is left RUNNING."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_e2e import make_study_repo, sh
from tests.test_reliability import comparable

pytestmark = pytest.mark.slow

SEARCHES = ["ga_search", "grid_search", "random_search", "tpe_search"]
CHANGES = {"budget": {"evaluations": 8}}


def forget_finished_work(repo: Path, stage: str) -> None:
    """What a stage reuses when forced: a finished repeat's results, and finished retrainings. Gone,
    a forced run trains again (afresh after a finished run, resumed after a killed one): the kill
    lands in training."""
    folder = repo / "checkpoints" / stage
    for done in folder.glob("*.done.json") if stage != "champion" else folder.glob("*.json"):
        done.unlink()


def _env() -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def kill_during(repo: Path, stage: str, rng: random.Random) -> bool:
    """Run ``dvc repro -f -s <stage>``, and ``kill -9`` its whole process group at a random moment
    once the stage has started. Returns whether the kill came before the stage ended."""
    forget_finished_work(repo, stage)
    process = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=_env(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if f"Running stage '{stage}'" in lines.get(timeout=1):
                break
        except queue.Empty:
            if process.poll() is not None:
                break
    time.sleep(rng.uniform(0.5, 7.0))  # python start-up, data loading, training, MLflow writes: anywhere
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


class StoreReader(threading.Thread):
    """Reads the SQLite store about twice a second, as ``mlflow ui`` would."""

    def __init__(self, database: Path) -> None:
        super().__init__(daemon=True)
        self.database, self.stop, self.reads = database, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.wait(0.5):
            if not self.database.is_file():
                continue
            try:
                with sqlite3.connect(self.database, timeout=1) as connection:
                    connection.execute("SELECT count(*) FROM runs").fetchone()
                self.reads += 1
            except sqlite3.Error:
                pass


def descendants(client: MlflowClient, experiment: str, run_id: str) -> list:
    found, level = [], [run_id]
    while level:
        below = [r for parent in level for r in client.search_runs(
            [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)]  # fmt: skip
        found += below
        level = [r.info.run_id for r in below]
    return found


def test_twenty_kill_9s_then_dvc_repro_equals_an_uninterrupted_run(tmp_path):
    seed = int(os.environ.get("EVOHPO_SOAK_SEED", time.time_ns() % 100_000))
    print(f"soak seed {seed} (EVOHPO_SOAK_SEED reruns it)")
    rng = random.Random(seed)
    reference = make_study_repo(tmp_path / "reference", CHANGES)
    sh("dvc", "repro", cwd=reference)
    repo = make_study_repo(tmp_path / "killed", CHANGES)
    sh("dvc", "repro", "prepare", cwd=repo)
    reader = StoreReader(repo / "mlruns" / "mlflow.db")
    reader.start()

    kills, tries = 0, 0
    while kills < 16 and tries < 40:  # four in each search stage, on average
        kills += kill_during(repo, SEARCHES[tries % len(SEARCHES)], rng)
        tries += 1
    sh("dvc", "repro", *SEARCHES, cwd=repo)  # resumes each from its checkpoint
    while kills < 20 and tries < 60:
        kills += kill_during(repo, "champion", rng)
        tries += 1
    result = sh("dvc", "repro", cwd=repo)
    reader.stop.set()
    assert kills >= 20, f"only {kills} kills landed in {tries} tries"
    assert reader.reads > 10

    for method in ("ga", "grid", "random", "tpe"):
        assert comparable(repo / "results", method) == comparable(reference / "results", method), method
    ours, theirs = (json.loads((r / "results" / "champion_details.json").read_text())["champion"] for r in (repo, reference))
    assert (ours["method"], ours["test_acc"], ours["genome_hash"]) == (theirs["method"], theirs["test_acc"], theirs["genome_hash"])

    client = MlflowClient(f"sqlite:///{repo}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment], max_results=50_000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    stage_runs = [r for r in runs if r.data.tags.get("stage") in (*SEARCHES, "champion")]
    for stage_run in stage_runs:
        finished = [r.data.tags["genome_hash"] for r in descendants(client, experiment, stage_run.info.run_id)
                    if r.info.status == "FINISHED" and "genome_hash" in r.data.tags]  # fmt: skip
        assert len(finished) == len(set(finished)), f"a genome FINISHED twice under {stage_run.info.run_name}"
    assert "Traceback" not in result.stdout + result.stderr
