"""Soak: at least 20 ``kill -9``s of the process group at random moments across the search stages
and the champion, each followed by another ``dvc repro``, while another process reads the MLflow
store; at the end the results equal an uninterrupted run's, no genome is FINISHED twice within a
stage run, and nothing is left RUNNING (the same with fewer kills on four more paths:
``test_soak_paths.py``). Before each ``dvc repro`` the soak mends ``.dvc/tmp/rwlock`` and ``dvc.lock``
as ``make study`` does (a kill inside DVC's own write of one leaves it unreadable)."""

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

from pipeline.study.dvc_repair import repair_dvc
from tests.test_e2e import make_study_repo, sh
from tests.test_reliability import comparable

pytestmark = pytest.mark.slow

SEARCHES = ["ga_search", "grid_search", "random_search", "tpe_search"]
# The four searches the kills land in: PBT and CMA-ES, not killed here, would only train twice more.
CHANGES = {"budget": {"evaluations": 8}, "study": {"methods": [s.removesuffix("_search") for s in SEARCHES]}}


def checkpoint_folder(repo: Path, stage: str) -> Path:
    return repo / "checkpoints" / ("sensitivity" if stage == "ga_sensitivity" else stage)


def forget_finished_work(repo: Path, stage: str) -> None:
    """What a stage reuses when forced: a finished repeat's results (of each sensitivity variant's
    search too), and finished retrainings. Gone, a forced run trains again (afresh after a finished
    run, resumed after a killed one): the kill lands in training."""
    folder = checkpoint_folder(repo, stage)
    for done in folder.rglob("*.done.json") if stage != "champion" else folder.glob("*.json"):
        done.unlink()


def mend_dvc(repo: Path) -> None:
    """What ``make study`` does before ``dvc repro``: a kill that lands while DVC itself rewrites
    ``.dvc/tmp/rwlock`` or ``dvc.lock`` leaves it unreadable to every later ``dvc repro``."""
    for mended in repair_dvc(repo):
        print(mended, flush=True)


def _env() -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def processes_of(repo: Path) -> dict[int, tuple[int, str]]:
    """Live processes working in ``repo`` (their folder, or their command line, names it): pid ->
    (parent pid, command line). Zombies, dead but not yet reaped, hold nothing and are left out."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z" and (cwd == str(repo) or cwd.startswith(f"{repo}/") or str(repo) in command):
            found[int(proc.name)] = (int(parent), command)
    return found


def assert_nothing_outlives_the_kill(repo: Path, grace_seconds: float = 30.0) -> None:
    """No process of the killed run (a worker, the resource tracker, the stage) still alive once
    ``grace_seconds`` have passed: orphaned workers exit on their own, within a second once started
    (one orphaned while still importing torch finishes that first: seconds on a busy machine).
    Those left are killed, then named."""
    deadline = time.monotonic() + grace_seconds
    while (left := processes_of(repo)) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"alive {grace_seconds:g} s after the kill: {left}"


def kill_during(repo: Path, stage: str, rng: random.Random, after: str | None = None,
                seconds: tuple[float, float] = (0.5, 7.0), only_the_stage: bool = False) -> bool:  # fmt: skip
    """Run ``dvc repro -f -s <stage>``, and ``kill -9`` its whole process group at a random moment
    (``seconds`` after the line ``after``; by default once the stage has started). With
    ``only_the_stage``, only the stage's process is killed (as the out-of-memory killer would):
    its worker processes are orphaned, and DVC reports the failure. Returns whether the kill came
    before the stage ended."""
    forget_finished_work(repo, stage)
    mend_dvc(repo)
    process = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=_env(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (after or f"Running stage '{stage}'") in lines.get(timeout=1):
                break
        except queue.Empty:
            if process.poll() is not None:
                break
    delay = rng.uniform(*seconds)
    time.sleep(delay)  # python start-up, data loading, training, MLflow writes: anywhere
    if process.poll() is not None:
        print(f"{stage} ended before the kill {delay:.1f} s in", flush=True)
        return False
    print(
        f"kill -9 {'the stage' if only_the_stage else 'all'} of {stage} {delay:.1f} s in: "
        f"{len(processes_of(repo))} process(es)",
        flush=True,
    )
    if not only_the_stage:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True
    stage_process = [pid for pid, (parent, command) in processes_of(repo).items()
                     if parent == process.pid and "stages/" in command]  # fmt: skip
    for pid in stage_process:
        os.kill(pid, signal.SIGKILL)
    return process.wait() != 0


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


def soak_rng() -> random.Random:
    seed = int(os.environ.get("EVOHPO_SOAK_SEED", time.time_ns() % 100_000))
    print(f"soak seed {seed} (EVOHPO_SOAK_SEED reruns it)")
    return random.Random(seed)


def compared(repo: Path, stage: str) -> dict:
    """What must equal an uninterrupted run's: the search's results, or each sensitivity variant's
    and the sensitivity table's rows."""
    if stage != "ga_sensitivity":
        return {stage: comparable(repo / "results", stage.removesuffix("_search"))}
    folder = repo / "results" / "sensitivity"
    variants = {v.name: comparable(v, "ga") for v in sorted(folder.iterdir()) if v.is_dir()}
    return variants | {"rows": json.loads((folder / "summary.json").read_text())["rows"]}


def descendants(client: MlflowClient, experiment: str, run_id: str) -> list:
    found, level = [], [run_id]
    while level:
        below = [r for parent in level for r in client.search_runs(
            [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)]  # fmt: skip
        found += below
        level = [r.info.run_id for r in below]
    return found


def assert_runs_settled(repo: Path, experiment_name: str, stages: list[str]) -> None:
    """Nothing left RUNNING in the experiment, and no genome FINISHED twice under one stage run."""
    client = MlflowClient(f"sqlite:///{repo}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    runs = client.search_runs([experiment], max_results=50_000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    stage_runs = [r for r in runs if r.data.tags.get("stage") in stages]
    assert stage_runs, f"no run of {stages} in {experiment_name}"
    for stage_run in stage_runs:
        finished = [r.data.tags["genome_hash"] for r in descendants(client, experiment, stage_run.info.run_id)
                    if r.info.status == "FINISHED" and "genome_hash" in r.data.tags]  # fmt: skip
        assert len(finished) == len(set(finished)), f"a genome FINISHED twice under {stage_run.info.run_name}"


def test_twenty_kill_9s_then_dvc_repro_equals_an_uninterrupted_run(tmp_path):
    rng = soak_rng()
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
    mend_dvc(repo)
    sh("dvc", "repro", *SEARCHES, cwd=repo)  # resumes each from its checkpoint
    while kills < 20 and tries < 60:
        kills += kill_during(repo, "champion", rng)
        tries += 1
    mend_dvc(repo)
    result = sh("dvc", "repro", cwd=repo)
    reader.stop.set()
    assert kills >= 20, f"only {kills} kills landed in {tries} tries"
    assert reader.reads > 10

    for stage in SEARCHES:
        assert compared(repo, stage) == compared(reference, stage), stage
    ours, theirs = (
        json.loads((r / "results" / "champion_details.json").read_text())["champion"] for r in (repo, reference)
    )
    assert (ours["method"], ours["test_acc"], ours["genome_hash"]) == (
        theirs["method"],
        theirs["test_acc"],
        theirs["genome_hash"],
    )
    assert_runs_settled(repo, "tiny", [*SEARCHES, "champion"])
    assert "Traceback" not in result.stdout + result.stderr
