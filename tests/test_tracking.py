"""MLflow: every trained individual is a run, nested individual -> generation -> stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import parse_config
from pipeline.study.search_stage import SearchFailed, run_search_stage
from pipeline.tracking.store import PARENT_TAG, Tracker, tracking_uri

pytestmark = pytest.mark.slow


def runs_by_id(experiment: str) -> dict:
    client = MlflowClient(tracking_uri())
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return {r.info.run_id: r for r in client.search_runs([experiment_id], max_results=1000)}


def test_store_is_sqlite_under_project_root(mlflow_store):
    tracker = Tracker("x")
    assert tracker.uri == f"sqlite:///{mlflow_store}/mlruns/mlflow.db"
    assert (mlflow_store / "mlruns" / "mlflow.db").is_file()
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (mlflow_store / "mlruns" / "artifacts").as_uri()
    assert Tracker("x").experiment_id == tracker.experiment_id  # reused, not duplicated


def test_ga_runs_nest_stage_generation_individual(mlflow_store, tiny_config, prepared_digits, tmp_path):
    (summary,) = run_search_stage(
        "ga", tiny_config, prepared_digits.folder, tmp_path / "results", tmp_path / "checkpoints"
    )
    runs = runs_by_id("tiny")
    stages = [r for r in runs.values() if PARENT_TAG not in r.data.tags]
    assert [r.info.run_name for r in stages] == ["ga_search seed 42"]
    assert stages[0].data.tags["repeat"] == "0" and stages[0].data.tags["seed"] == "42"
    stage = stages[0]
    generations = {i: r for i, r in runs.items() if r.data.tags.get(PARENT_TAG) == stage.info.run_id}
    individuals = [r for r in runs.values() if r.data.tags.get(PARENT_TAG) in generations]
    # Every run is one of the three levels; individuals equal the evaluations the stage reports.
    assert len(runs) == 1 + len(generations) + len(individuals)
    assert len(individuals) == summary["evaluations"] == tiny_config.budget.evaluations
    assert len(generations) == summary["generations"]
    for run in individuals:
        tags, params = run.data.tags, run.data.params
        assert tags["method"] == "ga"
        assert {"generation", "index", "genome_hash", "parent_run_ids"} <= set(tags)
        assert set(tiny_config.space.genes) <= set(params)
        assert run.info.status == "FINISHED"
        assert "val_acc" in run.data.metrics and "train_seconds" in run.data.metrics
        if tags["generation"] != "0":
            parents = tags["parent_run_ids"].split(",")
            assert len(parents) == 2 and all(p in runs for p in parents)
    assert stage.info.status == "FINISHED"
    assert stage.data.tags["best_run_id"] == summary["best_run_id"]
    history = json.loads((tmp_path / "results" / "ga_search/seed-42_history.json").read_text())
    assert {r["run_id"] for r in history["evaluations"]} == {r.info.run_id for r in individuals}


def test_per_epoch_metrics_are_logged_as_steps(mlflow_store, tiny_config, prepared_digits, tmp_path):
    run_search_stage("random", tiny_config, prepared_digits.folder, tmp_path / "results", tmp_path / "checkpoints")
    client = MlflowClient(tracking_uri())
    history = json.loads((tmp_path / "results" / "random_search/seed-42_history.json").read_text())
    record = max(history["evaluations"], key=lambda r: r["genome"]["epochs"])
    steps = client.get_metric_history(record["run_id"], "val_acc")
    assert [m.step for m in steps] == list(range(record["genome"]["epochs"]))
    assert [m.value for m in steps] == pytest.approx([e["val_acc"] for e in record["epochs"]])


def test_grid_individuals_nest_under_stage_and_failures_are_recorded(
    mlflow_store, tiny_params_dict, prepared_digits, tmp_path
):
    tiny_params_dict["space"]["genes"]["learning_rate"] = {"type": "choice", "values": [0.05, 1.0e6]}
    config = parse_config(tiny_params_dict)
    (summary,) = run_search_stage(
        "grid", config, prepared_digits.folder, tmp_path / "results", tmp_path / "checkpoints"
    )
    runs = runs_by_id("tiny")
    stage = next(r for r in runs.values() if PARENT_TAG not in r.data.tags)
    children = [r for r in runs.values() if r.data.tags.get(PARENT_TAG) == stage.info.run_id]
    assert len(children) == summary["evaluations"] == len(runs) - 1
    failed = [r for r in children if r.info.status == "FAILED"]
    assert len(failed) == summary["failed"] > 0
    assert all("DivergedError" in r.data.tags["failure_reason"] for r in failed)
    assert all(r.data.params["learning_rate"] == "1000000.0" for r in failed)
    assert summary["best_genome"]["learning_rate"] == 0.05


def test_all_failed_stops_with_clear_message(mlflow_store, tiny_params_dict, prepared_digits, tmp_path):
    tiny_params_dict["space"]["genes"]["learning_rate"] = {"type": "float", "low": 1.0e5, "high": 1.0e6}
    tiny_params_dict["budget"]["evaluations"] = 3
    config = parse_config(tiny_params_dict)
    with pytest.raises(SearchFailed, match="all 3 individuals failed"):
        run_search_stage("random", config, prepared_digits.folder, tmp_path / "results", tmp_path / "checkpoints")
    stage = next(r for r in runs_by_id("tiny").values() if PARENT_TAG not in r.data.tags)
    assert stage.info.status == "FAILED"


def test_a_moved_repository_writes_artifacts_into_its_own_mlruns(tmp_path, monkeypatch):
    """A repo copied with its store: the experiment, its runs and its logged models point at the
    copy's mlruns/artifacts, never at the original's."""
    import shutil

    import mlflow

    original, copy = tmp_path / "original", tmp_path / "copy"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(original))
    tracker = Tracker("moved")
    run = tracker.start_run("before")
    mlflow.set_tracking_uri(tracker.uri)
    with mlflow.start_run(run_id=run):
        mlflow.log_text("hello", "note.txt")
    tracker.end_run(run)
    shutil.copytree(original, copy)

    monkeypatch.setenv("DVC_ROOT", str(copy))
    moved = Tracker("moved")
    here = (copy / "mlruns" / "artifacts").as_uri()
    assert moved.client.get_experiment(moved.experiment_id).artifact_location == here
    assert moved.client.get_run(run).info.artifact_uri.startswith(here)
    new_run = moved.start_run("after")
    mlflow.set_tracking_uri(moved.uri)
    with mlflow.start_run(run_id=new_run):
        mlflow.log_text("world", "note.txt")
    assert (copy / "mlruns" / "artifacts" / new_run / "artifacts" / "note.txt").read_text() == "world"
    assert not (original / "mlruns" / "artifacts" / new_run).exists()
    # the original is untouched: its store still names its own folder
    monkeypatch.setenv("DVC_ROOT", str(original))
    assert (
        Tracker("moved").client.get_run(run).info.artifact_uri.startswith((original / "mlruns" / "artifacts").as_uri())
    )


def test_runs_carry_the_git_commit_and_the_experiment_opens_on_model_training(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for args in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    tracker = Tracker("tagged")
    run = tracker.client.get_run(tracker.start_run("r"))
    assert run.data.tags["mlflow.source.git.commit"] == head
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_is_tagged_for_the_model_training_view(mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    Tracker("seed")  # creates the store
    experiment_id = client.create_experiment("older")
    assert "mlflow.experimentKind" not in client.get_experiment(experiment_id).tags
    Tracker("older")
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_store_killed_while_being_created_is_built_again(mlflow_store, monkeypatch):
    """A kill during MLflow's migrations leaves no half-built ``mlflow.db`` behind (the next run
    would fail on it): the schema is built in a private file that appears whole."""
    from mlflow.store.tracking import sqlalchemy_store

    real_init = sqlalchemy_store.SqlAlchemyStore.__init__

    def killed_midway(self, *args, **kwargs):
        real_init(self, *args, **kwargs)  # the tables exist in the private file ...
        raise KeyboardInterrupt  # ... and the process dies before the store appears

    monkeypatch.setattr(sqlalchemy_store.SqlAlchemyStore, "__init__", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        Tracker("killed")
    folder = mlflow_store / "mlruns"
    assert not (folder / "mlflow.db").exists() and list(folder.glob("*.tmp")) == []
    monkeypatch.setattr(sqlalchemy_store.SqlAlchemyStore, "__init__", real_init)
    tracker = Tracker("again")
    run = tracker.start_run("works")
    tracker.end_run(run)
    assert tracker.client.get_run(run).info.status == "FINISHED"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_ui_listens_on_localhost_whatever_mlflow_host_says():
    """An inherited MLFLOW_HOST (0.0.0.0, say) must not open the study's runs to the network: make ui
    pins --host 127.0.0.1, with one worker and no job runner (what `make -n` would run)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["make", "-n", "-W", ".venv/.installed", "ui"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_HOST": "0.0.0.0"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = next(line for line in done.stdout.splitlines() if " ui " in line and "mlflow" in line)
    assert "--host 127.0.0.1" in command and "0.0.0.0" not in command, command
    assert "--workers 1" in command and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in command, command
