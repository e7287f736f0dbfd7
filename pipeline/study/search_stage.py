"""A search stage end to end: one registered method on the shared evaluator and budget, every
evaluation logged to MLflow, the checkpoint and the stage's results files."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData
from pipeline.errors import SearchFailed
from pipeline.evaluation import EvaluationRecord
from pipeline.jsonio import write_json
from pipeline.search.registry import get_method
from pipeline.space import make_space
from pipeline.study.checkpoint import Checkpoint, fingerprint
from pipeline.study.lock import StageLock
from pipeline.study.runner import SearchRunner
from pipeline.tracking.observer import SearchTracking
from pipeline.tracking.store import Tracker
from pipeline.training.backends import make_evaluator
from pipeline.training.weights import WeightStore

SHARED_SECTIONS = ("model", "space", "budget", "train")


def stage_fingerprint(method: str, config: StudyConfig, data_summary: dict, tracker: Tracker) -> str:
    """What a search's results depend on: its params, the prepared data, where its runs are logged
    (a checkpoint's run ids mean nothing in another store or experiment), and the code."""
    sections: dict[str, Any] = {"method": method, "seed": config.seed, "data": data_summary}
    for name in SHARED_SECTIONS + get_method(method).settings_sections:
        sections[name] = getattr(config, name).model_dump()
    sections["tracking"] = {"uri": tracker.uri, "experiment": config.mlflow.experiment}
    # Results are bit-identical on one machine with one torch, not across them.
    sections["platform"] = {"torch": torch.__version__, "machine": platform.machine()}
    return fingerprint(sections)


def search_summary(method: str, budget: int, records: list[EvaluationRecord], wall_seconds: float) -> dict[str, Any]:
    """The stage's results: counts, times and its best (the earliest evaluation to reach the best score)."""
    finished = [r for r in records if r.finished]
    summary: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "evaluations": len(records),
        "failed": sum(not r.finished for r in records),
        "total_train_seconds": sum(r.train_seconds for r in records),
        "wall_seconds": wall_seconds,
    }
    if finished:
        best = max(finished, key=lambda r: r.fitness)  # max() keeps the first of equal scores
        summary.update(
            best_val_acc=best.val_acc,
            best_val_loss=best.val_loss,
            best_genome=best.genome,
            best_genome_hash=best.genome_hash,
            best_run_id=best.run_id,
            evaluations_to_best=best.index + 1,
            time_to_best_seconds=best.elapsed_seconds,
            train_seconds_to_best=sum(r.train_seconds for r in records[: best.index + 1]),
        )
    return summary


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} layers]"  # the whole genome is in MLflow and the history file
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class _Progress:
    """One line per trained evaluation above a tqdm bar with the best so far."""

    def __init__(self, bar: tqdm, method: str, budget: int) -> None:
        self.bar, self.method, self.budget, self.best = bar, method, budget, None

    def __call__(self, record: EvaluationRecord, replayed: bool) -> None:
        self.bar.update(1)
        if record.finished and (self.best is None or record.fitness > self.best):
            self.best = record.fitness
            self.bar.set_postfix(best=f"{self.best:.4f}")
        if replayed:
            return
        genes = " ".join(f"{k}={_short(v)}" for k, v in record.genome.items())
        outcome = f"val_acc={record.val_acc:.4f}" if record.finished else f"FAILED ({record.failure})"
        where = f" gen {record.generation}" if record.generation is not None else ""
        self.bar.write(
            f"[{self.method}] eval {record.index + 1}/{self.budget}{where}: {outcome} "
            f"in {record.train_seconds:.1f}s | {genes}"
        )


def run_search_stage(
    method: str, config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path = Path("checkpoints")
) -> dict[str, Any]:
    """Run one search method end to end; writes ``<method>_search.json`` (summary metrics) and
    ``<method>_search_history.json`` (every evaluation) under ``results_dir``. Resumes from
    ``checkpoint_dir/<method>_search.jsonl`` when a killed run with the same fingerprint left one.
    Holds ``<method>_search.lock`` throughout: a second run of the same stage stops at once."""
    with StageLock(checkpoint_dir / f"{method}_search.lock", f"{method}_search"):
        return _run_search_stage(method, config, prepared_dir, results_dir, checkpoint_dir)


def _run_search_stage(
    method: str, config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path
) -> dict[str, Any]:
    spec = get_method(method)
    stage = f"{method}_search"
    budget = config.budget.evaluations
    tracker = Tracker(config.mlflow.experiment)
    tracking = SearchTracking(tracker, config.seed)
    data = PreparedData.open(prepared_dir)
    space = make_space(config.space, data.image_shape)
    checkpoint, message = Checkpoint.open(
        checkpoint_dir / f"{stage}.jsonl", stage_fingerprint(method, config, data.summary, tracker)
    )
    if checkpoint.stage_run_id is not None and not tracker.run_exists(checkpoint.stage_run_id):
        checkpoint.restart()
        message = (f"checkpoint {checkpoint.path} names runs the MLflow store {tracker.uri} does not hold "
                   "(deleted or replaced): starting afresh")  # fmt: skip
    print(f"[{method}] {message}", flush=True)
    # Under the lock no other process owns this stage's runs: those left RUNNING were a killed run's.
    stale = tracker.close_stale_stage_runs(stage, keep={checkpoint.stage_run_id} - {None})
    if stale:
        print(f"[{method}] marked {stale} run(s) left RUNNING by an earlier, killed run as KILLED", flush=True)
    weight_rule = spec.weight_rule(config)
    weight_store = None
    if weight_rule != "none":
        weights_dir = checkpoint_dir / f"{method}_weights"
        if not checkpoint.records and weights_dir.exists():
            shutil.rmtree(weights_dir)  # a fresh start: weights of another run's genomes must not be reused
        weight_store = WeightStore(weights_dir)
    evaluator = make_evaluator(config, data, weight_rule, weight_store)
    strategy = spec.build(config, space)
    if checkpoint.stage_run_id is not None:
        stage_run = checkpoint.stage_run_id
        settled = tracking.reopen_stage(stage_run, list(checkpoint.group_runs.values()), checkpoint.records)
        if settled:
            print(f"[{method}] {settled}", flush=True)
    else:
        stage_run = tracking.start_stage(
            stage,
            params={"budget": budget, "seed": config.seed, "dataset": data.summary["dataset"],
                    "train_size": data.summary["sizes"]["train"], "val_size": data.summary["sizes"]["val"],
                    **strategy.stage_params()},
            tags={"method": method, "stage": stage},
        )  # fmt: skip
        checkpoint.set_stage_run(stage_run)
    try:
        with tqdm(total=budget, desc=f"{method} search", unit="eval", disable=None) as bar:
            runner = SearchRunner(strategy, evaluator, budget, checkpoint, tracking, stage_run, _Progress(bar, method, budget))
            records = runner.run()
    except BaseException as exc:
        # Ctrl-C or SIGTERM (KeyboardInterrupt/SystemExit) is a kill, anything else a failure.
        tracking.fail_stage(stage_run, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    finally:
        evaluator.close()
    summary = search_summary(method, budget, records, runner.elapsed()) | strategy.summary()
    history = {"evaluations": [r.to_dict() for r in records], "generations": strategy.history()}
    write_json(results_dir / f"{stage}_history.json", history)
    write_json(results_dir / f"{stage}.json", summary)
    if "best_val_acc" not in summary:
        tracking.fail_stage(stage_run, "FAILED", "every individual failed")
        raise SearchFailed(
            f"{method} search: all {summary['evaluations']} individuals failed (see failure_reason in MLflow); "
            "no champion can be chosen. Narrow the search space (e.g. space.genes.learning_rate.high)"
        )
    tracking.finish_stage(stage_run, summary)
    checkpoint.mark_complete()
    return summary
