"""Reliability, round two: each fault injected at its exact point. After each: no genome FINISHED
twice, no run left RUNNING, results equal to an uninterrupted run, one line naming the culprit."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import parse_config
from pipeline.errors import USER_ERRORS, CheckpointError, OutputError, TrackingError
from pipeline.study import checkpoint as checkpoint_module
from pipeline.search.registry import method_names
from pipeline.study.champion import run_champion_stage
from pipeline.study.lock import StageLock
from pipeline.study.search_stage import run_search_stage
from pipeline.tracking.store import CHECKPOINT_FOLDER_TAG, Tracker, tracking_uri

from tests.conftest import REPO_ROOT, tiny_params
from tests.test_reliability import CountingTrainer, comparable

pytestmark = pytest.mark.slow


def all_runs(uri: str, experiment: str = "tiny") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=10_000) if found else []


def assert_settled(uri: str) -> list:
    """Nothing RUNNING; within each stage run, no genome (PBT: no member's interval) FINISHED twice.
    Returns the runs."""
    runs = all_runs(uri)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parent = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}

    def stage_of(run_id: str) -> str:
        while parent.get(run_id):
            run_id = parent[run_id]
        return run_id

    finished: dict[tuple[str, str], int] = {}
    for run in runs:
        if run.info.status == "FINISHED" and "genome_hash" in run.data.tags:
            # PBT trains a member's genome again each interval: a training is a genome at a member's interval.
            tags = run.data.tags
            key = (stage_of(run.info.run_id), tags["genome_hash"], tags.get("member", ""), tags.get("interval", ""))
            finished[key] = finished.get(key, 0) + 1
    assert [k for k, n in finished.items() if n > 1] == []
    return runs


def config_of(budget: int = 7):
    params = tiny_params()
    params["budget"]["evaluations"] = budget
    return parse_config(params)


def interrupted_ga_search(tmp_path: Path, monkeypatch, prepared, stop_at: int) -> Path:
    """The GA stage of ``config_of()`` in a store under ``tmp_path``, interrupted (Ctrl-C) as its
    ``stop_at``-th training; returns its checkpoint file."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    CountingTrainer(monkeypatch, stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        run_search_stage("ga", config_of(), prepared.folder, tmp_path / "results", tmp_path / "ckpt")
    return tmp_path / "ckpt" / "ga_search" / "seed-42.jsonl"


@pytest.fixture
def reference(tmp_path_factory, prepared_digits):
    """An uninterrupted GA search of ``config_of()``, in a store of its own."""
    root = tmp_path_factory.mktemp("reference")
    previous = os.environ.get("DVC_ROOT")
    os.environ["DVC_ROOT"] = str(root)
    try:
        run_search_stage("ga", config_of(), prepared_digits.folder, root / "results", root / "ckpt")
    finally:
        os.environ.pop("DVC_ROOT") if previous is None else os.environ.__setitem__("DVC_ROOT", previous)
    return root / "results"


# -- kill -9 at an exact point: a child process dies with os._exit where the hook fires ----------------------------


def _die_at(root: str, prepared: str, where: str, after: int) -> None:
    """In a child process: run the GA stage and die like ``kill -9`` (no cleanup at all) at ``where``."""
    os.environ["DVC_ROOT"] = root
    from pipeline.study import runner, search_stage
    from pipeline.tracking import observer

    calls = {"n": 0}

    def dying(original):
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == after:
                os._exit(137)
            return result

        return wrapped

    if where == "after_checkpoint_append":  # the record is written, its run not yet finished
        checkpoint_module.Checkpoint.append = dying(checkpoint_module.Checkpoint.append)
    elif where == "after_finish_individual":
        observer.SearchTracking.finish_individual = dying(observer.SearchTracking.finish_individual)
    elif where == "after_stage_run_created":  # before the checkpoint names it
        observer.SearchTracking.start_stage = dying(observer.SearchTracking.start_stage)
    del runner, search_stage
    run_search_stage("ga", config_of(), Path(prepared), Path(root) / "results", Path(root) / "ckpt")


@pytest.mark.parametrize(("where", "after"), [
    ("after_checkpoint_append", 4), ("after_finish_individual", 2), ("after_stage_run_created", 1),
])  # fmt: skip
def test_kill_9_at_an_exact_point_then_resume(tmp_path, monkeypatch, prepared_digits, reference, where, after):
    child = multiprocessing.get_context("spawn").Process(
        target=_die_at, args=(str(tmp_path), str(prepared_digits.folder), where, after)
    )
    child.start()
    child.join(300)
    assert child.exitcode == 137
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    runs = assert_settled(tracking_uri())
    individuals = [r for r in runs if "genome_hash" in r.data.tags]
    assert sorted({r.data.tags["genome_hash"] for r in individuals if r.info.status == "FINISHED"}) == sorted(
        {h for h, _ in comparable(reference, "ga")[1]}
    )


def _champion_until_killed(root: str, prepared: str, how: str) -> None:
    os.environ["DVC_ROOT"] = root
    from pipeline.training import evaluator  # the champion trains through retrain_and_test

    real_fit = evaluator.fit_genome

    def fit_then_die(*args, **kwargs):
        outcome = real_fit(*args, **kwargs)
        if how == "kill":
            os._exit(137)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered as SystemExit by the stage's handler
        time.sleep(5)
        return outcome

    evaluator.fit_genome = fit_then_die
    from pipeline.study.cli import _terminate

    signal.signal(signal.SIGTERM, _terminate)
    run_champion_stage(config_of(), Path(prepared), Path(root) / "results", Path(root) / "models" / "champion.pt",
                       Path(root) / "ckpt")  # fmt: skip


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_killed_champion_leaves_nothing_running(tmp_path, monkeypatch, prepared_digits, how):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for method in method_names():  # the champion reads every registered method's results
        run_search_stage(method, config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    child = multiprocessing.get_context("spawn").Process(
        target=_champion_until_killed, args=(str(tmp_path), str(prepared_digits.folder), how)
    )
    child.start()
    child.join(300)
    assert child.exitcode == (137 if how == "kill" else 128 + signal.SIGTERM)
    statuses = {r.info.run_name: r.info.status for r in all_runs(tracking_uri()) if "champion" in r.info.run_name}
    if how == "term":  # closed on the way out
        assert "RUNNING" not in statuses.values() and statuses["champion"] == "KILLED"
    run_champion_stage(config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "models" / "m.pt",
                       tmp_path / "ckpt")  # fmt: skip
    assert_settled(tracking_uri())


# -- damaged checkpoints --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"[]\n", b"null\n", b'"x"\n', b"42\n", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"])
def test_an_unreadable_checkpoint_is_one_line_and_the_search_goes_on(
    tmp_path, monkeypatch, prepared_digits, reference, capsys, content
):
    interrupted_ga_search(tmp_path, monkeypatch, prepared_digits, stop_at=4).write_bytes(content)
    CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    out = capsys.readouterr().out
    assert (
        f"checkpoint {tmp_path / 'ckpt' / 'ga_search' / 'seed-42.jsonl'} unreadable" in out and "starting afresh" in out
    )
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    assert_settled(tracking_uri())


def test_a_truncated_checkpoint_keeps_its_valid_part_and_no_genome_finishes_twice(
    tmp_path, monkeypatch, prepared_digits, reference, capsys
):
    path = interrupted_ga_search(tmp_path, monkeypatch, prepared_digits, stop_at=6)
    lines = path.read_bytes().split(b"\n")
    evaluations = [i for i, line in enumerate(lines) if b'"kind":"evaluation"' in line]
    # cut inside the 4th record: the 4th and 5th records are lost, their runs FINISHED in MLflow
    path.write_bytes(b"\n".join(lines[: evaluations[3]]) + b"\n" + lines[evaluations[3]][:40])
    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    out = capsys.readouterr().out
    assert "3 finished evaluations reused" in out and "2 superseded (record lost)" in out
    assert counter.calls == 7 - 3
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    assert_settled(tracking_uri())


def test_a_checkpoint_cut_before_a_generations_group_line_settles_that_generations_runs(
    tmp_path, monkeypatch, prepared_digits, reference, capsys
):
    """The cut loses a finished generation's group_run line and its records: the runs under that lost group
    run (FINISHED ones, and one a kill -9 left RUNNING) must not stay RUNNING nor end FINISHED twice."""
    path = interrupted_ga_search(tmp_path, monkeypatch, prepared_digits, stop_at=6)
    lines = path.read_bytes().split(b"\n")
    groups = [i for i, line in enumerate(lines) if b'"kind":"group_run"' in line]
    assert len(groups) == 3, "the interrupted search reached its third generation"
    # cut before generation 1's group line: generation 1 (finished) and 2 (interrupted) are lost
    lost_group = json.loads(lines[groups[1]])["run_id"]
    kept = sum(b'"kind":"evaluation"' in line for line in lines[: groups[1]])
    path.write_bytes(b"\n".join(lines[: groups[1]]) + b"\n")
    client = MlflowClient(tracking_uri())
    lost = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{lost_group}'")  # fmt: skip
    assert [r.info.status for r in lost].count("FINISHED") >= 1
    client.update_run(lost[0].info.run_id, "RUNNING")  # as a kill -9 leaves it
    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    out = capsys.readouterr().out
    assert f"{kept} finished evaluations reused" in out
    assert counter.calls == 7 - kept
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    runs = assert_settled(tracking_uri())
    assert {r.info.status for r in runs if r.info.run_id == lost_group} == {"KILLED"}


def test_a_malformed_checkpoint_entry_keeps_the_valid_prefix_and_the_search_goes_on(
    tmp_path, monkeypatch, prepared_digits, reference, capsys
):
    path = interrupted_ga_search(tmp_path, monkeypatch, prepared_digits, stop_at=6)
    valid = path.read_bytes()
    for entry in (b'{"kind":"stage_run"}', b'{"kind":"group_run","group":"x","run_id":"abc"}',
                  b'{"kind":"group_run","group":1}', b'{"kind":"surprise"}'):  # fmt: skip
        path.write_bytes(valid + entry + b"\n")
        checkpoint, note = checkpoint_module.Checkpoint.open(path, json.loads(valid.split(b"\n")[0])["fingerprint"])
        assert "kept the valid part" in note and "is not a checkpoint entry" in note, note
        assert path.read_bytes() == valid
    path.write_bytes(valid + b'{"kind":"stage_run"}\n')
    CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert "kept the valid part" in capsys.readouterr().out
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    assert_settled(tracking_uri())


def test_one_sensitivity_variant_does_not_close_anothers_runs(mlflow_store):
    """The sensitivity stage runs ``ga_search`` once per variant, each resumed from its own checkpoint
    folder: a reused variant must not mark a later variant's killed runs KILLED (that variant's resume
    reopens them and closes each individual from its record). Untagged (older) runs are still closed."""
    tracker = Tracker("sensitivity")
    runs = {}
    for name, folder in (("mine", "/ckpt/mutation_rate-0.5/ga_search"), ("other", "/ckpt/population_size-8/ga_search"),
                         ("untagged", None)):  # fmt: skip
        tags = {"stage": "ga_search"} | ({CHECKPOINT_FOLDER_TAG: folder} if folder else {})
        stage_run = tracker.start_run(f"ga_search {name}", tags=tags)
        runs[name] = (stage_run, tracker.start_run("individual", parent_id=stage_run))
    closed = tracker.close_stale_stage_runs("ga_search", keep=set(),
                                            checkpoint_folder="/ckpt/mutation_rate-0.5/ga_search")  # fmt: skip
    status = {
        run_id: MlflowClient(tracker.uri).get_run(run_id).info.status for pair in runs.values() for run_id in pair
    }
    assert closed == 4
    assert [status[r] for r in runs["mine"]] == ["KILLED", "KILLED"]
    assert [status[r] for r in runs["other"]] == ["RUNNING", "RUNNING"]
    assert [status[r] for r in runs["untagged"]] == ["KILLED", "KILLED"]


# -- store and checkpoint disagree ----------------------------------------------------------------------------------


def test_a_deleted_store_starts_the_search_afresh_and_says_so(tmp_path, monkeypatch, prepared_digits, capsys):
    interrupted_ga_search(tmp_path, monkeypatch, prepared_digits, stop_at=3)
    for leftover in (tmp_path / "mlruns").glob("mlflow.db*"):
        leftover.unlink()
    # A new stage process opens the store afresh; this one caches store and engine by URI: forget them.
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert "does not hold (deleted or replaced): starting afresh" in capsys.readouterr().out
    assert counter.calls == 7
    runs = assert_settled(tracking_uri())
    assert len([r for r in runs if "genome_hash" in r.data.tags]) == 7


def test_a_renamed_experiment_does_not_reuse_the_checkpoint(tmp_path, monkeypatch, prepared_digits, capsys):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    run_search_stage("random", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    params = tiny_params()
    params["budget"]["evaluations"] = 7
    params["mlflow"]["experiment"] = "renamed"
    counter = CountingTrainer(monkeypatch)
    run_search_stage("random", parse_config(params), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert "made with other params, data or code: starting afresh" in capsys.readouterr().out
    assert counter.calls == 7
    assert len([r for r in all_runs(tracking_uri(), "renamed") if "genome_hash" in r.data.tags]) == 7


# -- the same stage twice, a locked store, an unwritable artifact folder, a full disk ------------------------------


def test_the_same_stage_started_twice_stops_the_second_with_one_line(tmp_path, monkeypatch, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with StageLock(tmp_path / "ckpt" / "ga_search.lock", "ga_search"):
        with pytest.raises(
            CheckpointError, match=rf"ga_search.lock: ga_search is already running in process {os.getpid()}"
        ):
            run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "ga_search" / "seed-42.jsonl").exists()  # nothing started
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")  # free again


def test_a_second_stage_process_prints_one_line_naming_the_holder(tmp_path):
    from tests.test_e2e import make_study_repo, sh

    repo = make_study_repo(tmp_path / "repo")
    sh("dvc", "repro", "prepare", cwd=repo)
    with StageLock(repo / "checkpoints" / "grid_search.lock", "grid_search"):
        done = subprocess.run([sys.executable, "stages/search.py", "grid"], cwd=repo, capture_output=True, text=True,
                              env={**os.environ, "DVC_ROOT": str(repo)})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: checkpoints/grid_search.lock: grid_search is already running in process {os.getpid()}; "
        "wait for it to finish or stop it"
    ]


def test_a_locked_store_is_retried_then_named_in_one_line(mlflow_store, monkeypatch):
    tracker = Tracker("locked")
    run = tracker.start_run("r")
    database = mlflow_store / "mlruns" / "mlflow.db"

    def hold_exclusive(seconds: float) -> None:
        with sqlite3.connect(database, timeout=30) as connection:
            connection.execute("BEGIN EXCLUSIVE")
            time.sleep(seconds)

    holder = threading.Thread(target=hold_exclusive, args=(2.0,))
    holder.start()
    time.sleep(0.3)
    tracker.log_metrics(run, {"x": 1.0})  # waits for the writer, then succeeds
    holder.join()
    assert MlflowClient(tracker.uri).get_run(run).data.metrics["x"] == 1.0

    # A store that stays busy: retried with backoff, then one line naming it.
    attempts = {"n": 0}

    def busy(*args, **kwargs):
        attempts["n"] += 1
        raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT INTO metrics ...]")

    monkeypatch.setattr(Tracker, "busy_seconds", 1.0)
    monkeypatch.setattr(tracker.client, "log_batch", busy)
    started = time.monotonic()
    with pytest.raises(
        TrackingError, match=r"mlflow.db stayed locked by another writer for \d s; stop the other"
    ) as raised:
        tracker.log_metrics(run, {"x": 2.0})
    assert "\n" not in str(raised.value) and attempts["n"] >= 3 and time.monotonic() - started < 5
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):  # anything but a busy store is not retried
        tracker.log_metrics(run, {"x": 2.0})


def test_mlflows_traceback_for_a_busy_store_is_dropped_and_other_errors_still_show(capfd):
    """While another writer holds the store past SQLite's 20 s busy timeout, MLflow's session logger
    prints an ERROR with a chained traceback each time; the tracker retries and names it in one line."""
    import mlflow.store.db.utils as mlflow_db_utils
    from sqlalchemy.exc import OperationalError

    logger = mlflow_db_utils._logger
    for text in ("database is locked", "no such table: runs"):
        try:
            raise OperationalError("UPDATE runs SET ...", {}, sqlite3.OperationalError(text))
        except OperationalError as exc:
            logger.exception("SQLAlchemy database error. The following exception is caught.\n%s", exc)
    err = capfd.readouterr().err
    assert "database is locked" not in err
    assert "no such table: runs" in err and "Traceback" in err


def test_unwritable_artifacts_fail_the_champion_before_any_training(tmp_path, monkeypatch, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for method in method_names():  # the champion reads every registered method's results
        run_search_stage(method, config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    (tmp_path / "mlruns" / "artifacts").write_text("a file where the artifact folder should be")
    from pipeline.training import evaluator

    trained = []
    monkeypatch.setattr(evaluator, "fit_genome", lambda *a, **k: trained.append(1))
    with pytest.raises(TrackingError, match=r"mlruns/artifacts: cannot write MLflow artifacts there"):
        run_champion_stage(
            config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "m.pt", tmp_path / "ckpt"
        )
    assert trained == []


def test_artifacts_unwritable_after_the_start_up_check_is_one_line_and_keeps_the_retrainings(
    tmp_path, monkeypatch, prepared_digits
):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for method in method_names():
        run_search_stage(method, config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    import mlflow.pytorch

    from pipeline.training import evaluator

    artifacts = tmp_path / "mlruns" / "artifacts" / "1"

    def read_only(*args, **kwargs):  # what log_model meets once the folder turned read-only
        raise OSError(errno.EROFS, "Read-only file system", str(artifacts))

    monkeypatch.setattr(mlflow.pytorch, "log_model", read_only)
    with pytest.raises(TrackingError) as info:
        run_champion_stage(
            config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "m.pt", tmp_path / "ckpt"
        )
    message = str(info.value)
    assert message.startswith(f"{artifacts}: cannot store the champion's model (Read-only file system)"), message
    assert "\n" not in message and isinstance(info.value, USER_ERRORS)
    runs = assert_settled(tracking_uri())
    champion_runs = [r for r in runs if r.data.tags.get("stage") == "champion"]
    assert [r.info.status for r in champion_runs] == ["FAILED"]
    monkeypatch.undo()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    trained = []
    real_fit = evaluator.fit_genome
    monkeypatch.setattr(evaluator, "fit_genome", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    run_champion_stage(config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "m.pt", tmp_path / "ckpt")
    assert trained == []  # every retraining reused
    assert (tmp_path / "m.pt").is_file()
    assert_settled(tracking_uri())


def test_a_full_disk_while_checkpointing_is_one_line_and_the_checkpoint_stays_valid(
    tmp_path, monkeypatch, prepared_digits
):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    real_fsync, writes = os.fsync, {"n": 0}

    def fsync_until_full(fd):
        writes["n"] += 1
        if writes["n"] == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync_until_full)
    with pytest.raises(CheckpointError, match=r"seed-42.jsonl: cannot write the checkpoint \(the disk is full\)"):
        run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    monkeypatch.setattr(checkpoint_module.os, "fsync", real_fsync)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert_settled(tracking_uri())


def test_a_full_disk_while_marking_a_repeat_done_is_one_line_and_the_rerun_trains_nothing(
    tmp_path, monkeypatch, prepared_digits, reference
):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    real_write_text = Path.write_text

    def full_for_the_done_file(self, *args, **kwargs):
        if self.name.endswith(".done.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_the_done_file)
    with pytest.raises(OutputError) as info:
        run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert isinstance(info.value, USER_ERRORS)
    done = tmp_path / "ckpt" / "ga_search" / "seed-42.done.json"
    assert str(info.value).startswith(f"{done}: cannot write (the disk is full)")
    assert not done.exists() and not done.with_name(done.name + ".tmp").exists()
    monkeypatch.setattr(Path, "write_text", real_write_text)
    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert counter.calls == 0  # every evaluation replayed from the checkpoint
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    assert_settled(tracking_uri())


def test_a_full_disk_under_mlruns_is_one_line_and_the_next_run_settles_everything(
    tmp_path, monkeypatch, prepared_digits, reference
):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    real_log_batch, calls = MlflowClient.log_batch, {"n": 0}

    def full_after_a_while(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:
            raise MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO metrics ...]")
        return real_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", full_after_a_while)
    with pytest.raises(TrackingError) as info:
        run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    message = str(info.value)
    assert "the disk is full; free space and run the stage again" in message and "\n" not in message, message
    assert isinstance(info.value, USER_ERRORS)
    monkeypatch.setattr(MlflowClient, "log_batch", real_log_batch)
    run_search_stage("ga", config_of(), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert comparable(tmp_path / "results", "ga") == comparable(reference, "ga")
    assert_settled(tracking_uri())


def test_stage_scripts_print_one_line_for_a_user_error(tmp_path):
    """Every user error of a stage is one line on stderr, exit status 2, no traceback."""
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text() + "seed: 1\n")  # duplicate key
    done = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "search.py"), "ga"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: params.yaml: duplicate key seed (line {len((REPO_ROOT / 'params.yaml').read_text().splitlines()) + 1})"
    ]
