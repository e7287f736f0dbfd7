"""Faults: killed stages resume without retraining, failures inside an evaluation are recorded,
and broken stores or data files get one clear line."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.training import evaluator as evaluate_module
from pipeline.data import DatasetError, PreparedData
from pipeline.study.search_stage import run_search_stage
from pipeline.tracking.store import PARENT_TAG, Tracker, TrackingError, tracking_uri
from tests.test_e2e import make_study_repo, sh

pytestmark = pytest.mark.slow


def individual_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    return [r for r in runs if "genome_hash" in r.data.tags]


def finished_hashes(runs: list) -> list[str]:
    return sorted(r.data.tags["genome_hash"] for r in runs if r.info.status == "FINISHED")


def checkpoint_lines(path: Path) -> list[dict]:
    """The complete lines of an append-only checkpoint (a line being written is left out)."""
    lines = []
    for raw in path.read_text().split("\n")[:-1]:
        lines.append(json.loads(raw))
    return lines


def checkpointed_evaluations(path: Path) -> int:
    return sum(line["kind"] == "evaluation" for line in checkpoint_lines(path))


def comparable(results_dir: Path, method: str) -> tuple[dict, list]:
    summary = json.loads((results_dir / f"{method}_search/seed-42.json").read_text())
    history = json.loads((results_dir / f"{method}_search/seed-42_history.json").read_text())
    keep = ("evaluations", "failed", "best_val_acc", "best_genome", "evaluations_to_best")
    return {k: summary[k] for k in keep}, [(r["genome_hash"], r["val_score"]) for r in history["evaluations"]]


class CountingTrainer:
    """Wraps the evaluator's single-individual training, counting it and interrupting on call ``stop_at``."""

    def __init__(self, monkeypatch, stop_at=None, exception=KeyboardInterrupt):
        self.calls = 0
        self.stop_at = stop_at
        self.exception = exception
        real = evaluate_module.SequentialEvaluator.train

        def wrapped(evaluator, request):
            self.calls += 1
            if self.calls == self.stop_at:
                # Interrupt mid-training: the run exists, the fit never finishes.
                original_fit = evaluate_module.fit_genome

                def interrupted(*args, **kwargs):
                    raise self.exception()

                evaluate_module.fit_genome = interrupted
                try:
                    return real(evaluator, request)
                finally:
                    evaluate_module.fit_genome = original_fit
            return real(evaluator, request)

        monkeypatch.setattr(evaluate_module.SequentialEvaluator, "train", wrapped)


def test_interrupted_architecture_ga_with_merged_weights_resumes_to_the_same_result(
    tmp_path, monkeypatch, tiny_params_dict, prepared_digits
):
    """Phased growth, merged weights and early stopping: a resumed search finds the parents' weights
    it saved before the kill and ends exactly where an uninterrupted one does."""
    from pipeline.config import parse_config

    tiny_params_dict["space"]["kind"] = "architecture"
    tiny_params_dict["space"]["architecture"] = {
        "conv_layers": {"min": 1, "max": 2}, "fc_layers": {"min": 1, "max": 1},
        "conv": {"filters": [4, 8]}, "fc": {"units": [8, 16]}, "phases": {"count": 2},
    }  # fmt: skip
    tiny_params_dict["budget"]["evaluations"] = 8
    tiny_params_dict["ga"]["weights"] = "merge"
    tiny_params_dict["train"]["early_stopping"] = {"patience": 1}
    config = parse_config(tiny_params_dict)

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "reference"))
    run_search_stage(
        "ga", config, prepared_digits.folder, tmp_path / "reference" / "results", tmp_path / "reference" / "ckpt"
    )

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "resumed"))
    results, checkpoints = tmp_path / "resumed" / "results", tmp_path / "resumed" / "ckpt"
    stop_at = 6  # in the second phase: its children merge weights saved before the kill
    CountingTrainer(monkeypatch, stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        run_search_stage("ga", config, prepared_digits.folder, results, checkpoints)
    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config, prepared_digits.folder, results, checkpoints)
    assert counter.calls == 8 - (stop_at - 1)
    assert comparable(results, "ga") == comparable(tmp_path / "reference" / "results", "ga")
    history = json.loads((results / "ga_search/seed-42_history.json").read_text())["evaluations"]
    reference = json.loads((tmp_path / "reference" / "results" / "ga_search/seed-42_history.json").read_text())[
        "evaluations"
    ]
    assert [(r["init"], r["epochs"]) for r in history] == [(r["init"], r["epochs"]) for r in reference]
    assert any(r["init"] == "merge" for r in history[stop_at - 1 :])


def test_interrupted_ga_resumes_without_retraining(tmp_path, monkeypatch, tiny_params_dict, prepared_digits):
    from pipeline.config import parse_config

    tiny_params_dict["budget"]["evaluations"] = 7
    config = parse_config(tiny_params_dict)

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "reference"))
    run_search_stage(
        "ga", config, prepared_digits.folder, tmp_path / "reference" / "results", tmp_path / "reference" / "ckpt"
    )
    reference_uri = tracking_uri()

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "resumed"))
    results, checkpoints = tmp_path / "resumed" / "results", tmp_path / "resumed" / "ckpt"
    stop_at = 4
    CountingTrainer(monkeypatch, stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        run_search_stage("ga", config, prepared_digits.folder, results, checkpoints)
    saved = checkpoint_lines(checkpoints / "ga_search" / "seed-42.jsonl")
    assert not any(line["kind"] == "complete" for line in saved)
    assert checkpointed_evaluations(checkpoints / "ga_search" / "seed-42.jsonl") == stop_at - 1

    counter = CountingTrainer(monkeypatch)
    run_search_stage("ga", config, prepared_digits.folder, results, checkpoints)
    assert counter.calls == 7 - (stop_at - 1)  # finished evaluations are not trained again
    assert comparable(results, "ga") == comparable(tmp_path / "reference" / "results", "ga")

    runs = individual_runs(tracking_uri(), "tiny")
    assert finished_hashes(runs) == finished_hashes(individual_runs(reference_uri, "tiny"))
    assert len(finished_hashes(runs)) == len(set(finished_hashes(runs))) == 7
    assert [r.info.status for r in runs].count("KILLED") == 1
    stages = [r for r in MlflowClient(tracking_uri()).search_runs(
        [r.info.experiment_id for r in runs[:1]], filter_string="tags.stage = 'ga_search'")]  # fmt: skip
    assert len(stages) == 1 and stages[0].info.status == "FINISHED"  # the stage run was reused


def test_changed_params_start_afresh_and_say_so(tmp_path, monkeypatch, tiny_params_dict, prepared_digits, capsys):
    from pipeline.config import parse_config

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    config = parse_config(tiny_params_dict)
    CountingTrainer(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_search_stage("random", config, prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    tiny_params_dict["train"]["lr_gamma"] = 0.5  # the same repeat (seed), other params
    counter = CountingTrainer(monkeypatch)
    run_search_stage("random", parse_config(tiny_params_dict), prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    assert "made with other params, data or code: starting afresh" in capsys.readouterr().out
    assert counter.calls == config.budget.evaluations


def test_out_of_memory_and_broken_model_are_failed_individuals(tmp_path, monkeypatch, tiny_config, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    real_fit = evaluate_module.fit_genome
    calls = {"n": 0}

    def faulty_fit(genome, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if calls["n"] == 3:
            raise ValueError("images of 2x2 are too small for two 3x3 convolutions")
        return real_fit(genome, **kwargs)

    monkeypatch.setattr(evaluate_module, "fit_genome", faulty_fit)
    (summary,) = run_search_stage("random", tiny_config, prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    assert summary["evaluations"] == tiny_config.budget.evaluations
    assert summary["failed"] == 2
    failed = [r for r in individual_runs(tracking_uri(), "tiny") if r.info.status == "FAILED"]
    reasons = sorted(r.data.tags["failure_reason"] for r in failed)
    assert reasons[0].startswith("OutOfMemoryError: CUDA out of memory")
    assert reasons[1].startswith("ValueError: images of 2x2")


def _log_runs(uri: str, experiment: str, parent: str, worker: int, count: int) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracker = Tracker(experiment)
    for i in range(count):
        run = tracker.start_run(f"w{worker}-{i}", parent_id=parent, params={"i": i}, tags={"worker": worker})
        tracker.log_metrics(run, {"val_acc": i / count})
        tracker.end_run(run)


def test_concurrent_writers_lose_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = Tracker("concurrent")  # creates the database before any worker starts
    parent = tracker.start_run("stage")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_log_runs, args=(tracker.uri, "concurrent", parent, w, 10)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * 4
    children = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                                          max_results=1000)  # fmt: skip
    assert len(children) == 40
    assert all(r.info.status == "FINISHED" for r in children)


def test_unreachable_server_and_unwritable_store_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(TrackingError, match="http://127.0.0.1:9 is not usable.*MLFLOW_TRACKING_URI"):
        Tracker("x")
    assert time.monotonic() - started < 60
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "mlruns").write_text("a file where the store's folder should be")
    with pytest.raises(TrackingError, match="mlruns.*writable"):
        Tracker("x")


def test_corrupt_prepared_split_is_named(tmp_path, prepared_digits):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared_digits.folder, copy)
    with open(copy / "val.pt", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\xff\x00\xff")
    with pytest.raises(DatasetError, match=r"val.pt: checksum mismatch.*dvc repro -f prepare"):
        PreparedData.open(copy).load("val")


def test_kill_9_of_a_running_stage_then_dvc_repro_resumes(tmp_path):
    """A real ``dvc repro`` killed with SIGKILL to its whole process group at a random evaluation."""
    params_changes = {"budget": {"evaluations": 8}}
    reference = make_study_repo(tmp_path / "reference", params_changes)
    killed = make_study_repo(tmp_path / "killed", params_changes)
    for repo in (reference, killed):
        sh("dvc", "repro", "prepare", cwd=repo)
    sh("dvc", "repro", "ga_search", cwd=reference)

    kill_after = random.Random().randint(1, 6)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(["dvc", "repro", "ga_search"], cwd=killed, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = killed / "checkpoints" / "ga_search" / "seed-42.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if checkpointed_evaluations(checkpoint) >= kill_after:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        assert process.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before_kill = checkpointed_evaluations(checkpoint)
    assert done_before_kill < 8, f"killed too late (after {kill_after})"

    result = sh("dvc", "repro", "ga_search", cwd=killed)
    assert (
        f"resuming from checkpoints/ga_search/seed-42.jsonl: {done_before_kill} finished"
        in result.stdout + result.stderr
    )
    assert comparable(killed / "results", "ga") == comparable(reference / "results", "ga")
    runs = individual_runs(f"sqlite:///{killed}/mlruns/mlflow.db", "tiny")
    reference_runs = individual_runs(f"sqlite:///{reference}/mlruns/mlflow.db", "tiny")
    assert finished_hashes(runs) == finished_hashes(reference_runs)
    assert len(set(finished_hashes(runs))) == len(finished_hashes(runs)) == 8
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len(runs) - 8 == [r.info.status for r in runs].count("KILLED") <= 1
