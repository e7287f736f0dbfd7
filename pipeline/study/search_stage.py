"""A search stage end to end: one registered method on the shared evaluator and budget, once per
repeat (``study.repeats``), every evaluation logged to MLflow, the checkpoints and the stage's
results files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData
from pipeline.errors import SearchFailed
from pipeline.evaluation import EvaluationRecord, Proposal
from pipeline.search.fidelity import RungSchedule
from pipeline.jsonio import write_json
from pipeline.search.registry import get_method, own_training, study_methods
from pipeline.space import make_space
from pipeline.study.checkpoint import Checkpoint, fingerprint, platform_signature, source_digest
from pipeline.study.layout import repeat_files
from pipeline.study.lock import StageLock
from pipeline.study.runner import SearchRunner, genome_epochs
from pipeline.task import task_of
from pipeline.tracking.observer import SearchTracking
from pipeline.tracking.store import CHECKPOINT_FOLDER_TAG, Tracker
from pipeline.training.backends import make_evaluator, uses_population
from pipeline.training.models import BuilderSource, check_builder
from pipeline.training.weights import WeightStore

SHARED_SECTIONS = ("model", "space", "budget", "train", "fidelity")


def stage_fingerprint(method: str, config: StudyConfig, data_summary: dict, tracker: Tracker) -> str:
    """What a search's results depend on: its params, the prepared data, where its runs are logged
    (a checkpoint's run ids mean nothing in another store or experiment), and the code."""
    sections: dict[str, Any] = {"method": method, "seed": config.seed, "data": data_summary}
    for name in SHARED_SECTIONS + get_method(method).settings_sections:
        sections[name] = getattr(config, name).model_dump()
    sections["tracking"] = {"uri": tracker.uri, "experiment": config.mlflow.experiment}
    # A population trains to float tolerance of one network at a time (other dropout masks).
    population = uses_population(config, get_method(method).weight_rule(config))
    sections["evaluator"] = "population" if population else "sequential"
    sections["platform"] = platform_signature()
    sections["builder_source"] = source_digest(config.model)
    return fingerprint(sections)


def check_builder_on(config: StudyConfig, data: PreparedData, space: Any) -> None:
    """The study's model builder on a genome of the space (seeded), before anything trains."""
    genome = space.sample(np.random.default_rng(config.seed))
    task = task_of(data.summary)
    check_builder(
        BuilderSource.for_study(config), config.model, genome, data.image_shape, task.outputs(data.num_classes)
    )


def epoch_cost(config: StudyConfig, method: str = "") -> Callable[[Proposal], float]:
    """What a proposal costs ``budget.epochs`` when admitted: its epochs, with multi-fidelity the
    epochs its rungs train a candidate on average, and for one interval of a longer training (PBT)
    the interval's epochs."""
    schedule = RungSchedule.of(config.fidelity)
    if method and get_method(method).trains_in_intervals:
        return interval_epochs
    if schedule is None:
        return genome_epochs
    return lambda proposal: schedule.expected_epochs(int(proposal.genome["epochs"]))


def interval_epochs(proposal: Proposal) -> float:
    """The epochs one interval of a longer training trains (``Resume.start_epoch`` to ``epochs``)."""
    resume = proposal.resume
    if resume is None or resume.start_epoch is None or resume.epochs is None:
        return genome_epochs(proposal)
    return float(resume.epochs - resume.start_epoch)


def search_summary(
    method: str,
    budget: int,
    records: list[EvaluationRecord],
    wall_seconds: float,
    val_key: str = "val_acc",
    rank_by_rung: bool = True,
) -> dict[str, Any]:
    """One repeat's results: counts, times and its best (the earliest evaluation to reach the best
    fitness; its score under ``best_<val_key>``: ``best_val_acc`` or ``best_val_mae``; with
    multi-fidelity and ``rank_by_rung``, one that went furthest). Times to the best are given both
    ways: training seconds (comparable with ``total_train_seconds``) and wall seconds on the
    search's clock (comparable with ``wall_seconds``)."""
    finished = [r for r in records if r.finished]
    summary: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "evaluations": len(records),
        "failed": sum(not r.finished for r in records),
        "epochs_trained": sum(len(r.epochs) for r in records),
        "total_train_seconds": sum(r.train_seconds for r in records),
        "wall_seconds": wall_seconds,
    }
    if any(r.rung is not None for r in records):
        summary["stopped_early"] = sum(r.stopped_early for r in records)
    if finished:
        rank = EvaluationRecord.ranking_key if rank_by_rung else (lambda r: r.fitness)
        best = max(finished, key=rank)  # max() keeps the first of equal scores
        summary.update(
            **{f"best_{val_key}": best.val_score},
            best_val_loss=best.val_loss,
            best_genome=best.genome,
            best_genome_hash=best.genome_hash,
            best_run_id=best.run_id,
            evaluations_to_best=best.index + 1,
            wall_seconds_to_best=best.elapsed_seconds,
            train_seconds_to_best=sum(r.train_seconds for r in records[: best.index + 1]),
        )
    return summary


def aggregate_summary(method: str, repeats: list[dict[str, Any]], val_key: str = "val_acc") -> dict[str, Any]:
    """The stage's metrics file: numbers a user compares across experiments (``dvc metrics diff``),
    over the repeats; genomes, run ids and reasons stay in the per-repeat files."""
    best = f"best_{val_key}"
    scores = np.array([r[best] for r in repeats if r.get(best) is not None], dtype=float)
    metrics: dict[str, Any] = {
        "repeats": len(repeats),
        "repeats_failed": len(repeats) - int(scores.size),
        "evaluations": sum(r["evaluations"] for r in repeats),
        "failed_evaluations": sum(r["failed"] for r in repeats),
        "epochs_trained": sum(r["epochs_trained"] for r in repeats),
        "train_seconds": round(sum(r["total_train_seconds"] for r in repeats), 1),
    }
    if scores.size:
        metrics |= {
            f"{best}_mean": float(scores.mean()),
            f"{best}_std": float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
            f"{best}_min": float(scores.min()),
            f"{best}_max": float(scores.max()),
        }
    return metrics


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} layers]"  # the whole genome is in MLflow and the history file
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class _Progress:
    """One line per trained evaluation above a tqdm bar with the best so far."""

    def __init__(self, bar: tqdm, method: str, budget: int, val_key: str) -> None:
        self.bar, self.method, self.budget, self.val_key = bar, method, budget, val_key
        self.best: EvaluationRecord | None = None

    def __call__(self, record: EvaluationRecord, replayed: bool) -> None:
        self.bar.update(1)
        if record.finished and (self.best is None or record.ranking_key() > self.best.ranking_key()):
            self.best = record
            self.bar.set_postfix(best=f"{record.val_score:.4f}")
        if replayed:
            return
        genes = " ".join(f"{k}={_short(v)}" for k, v in record.genome.items())
        outcome = f"{self.val_key}={record.val_score:.4f}" if record.finished else f"FAILED ({record.failure})"
        if record.stopped_early:
            outcome += f" (stopped at rung {record.rung}, {len(record.epochs)} epochs)"
        where = f" gen {record.generation}" if record.generation is not None else ""
        best = f" | best so far {self.best.val_score:.4f}" if self.best is not None else ""
        self.bar.write(
            f"[{self.method}] eval {record.index + 1}/{self.budget}{where}: {outcome} "
            f"in {record.train_seconds:.1f}s{best} | {genes}"
        )


def run_search_stage(
    method: str, config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path = Path("checkpoints")
) -> list[dict[str, Any]]:
    """Run one search method once per repeat (``study.repeats``, each with its own seed); returns
    the repeats' summaries in order. Writes ``<method>_search.json`` (metrics over the repeats) and,
    per repeat, ``<method>_search/seed-<seed>.json`` (its summary) and ``..._history.json`` (every
    evaluation) under ``results_dir``.

    Each repeat keeps ``checkpoint_dir/<method>_search/seed-<seed>.jsonl``: a killed repeat resumes
    from it, and a repeat that finished with the same params, data and code is reused without
    training (so raising ``study.repeats`` trains only the new repeats). Holds
    ``<method>_search.lock`` throughout: a second run of the same stage stops at once.

    A method left out of ``study.methods`` trains nothing: its results file says it was skipped, its
    results folder stays empty, and its checkpoints are kept for when it is named again."""
    if method not in study_methods(config):
        return skip_search_stage(method, results_dir, checkpoint_dir)
    with StageLock(checkpoint_dir / f"{method}_search.lock", f"{method}_search"):
        return _run_repeats(method, config, prepared_dir, results_dir, checkpoint_dir)


def skip_search_stage(method: str, results_dir: Path, checkpoint_dir: Path) -> list[dict[str, Any]]:
    """The stage of a method the study does not run: the outputs DVC expects, holding no results."""
    stage = f"{method}_search"
    shutil.rmtree(results_dir / stage, ignore_errors=True)  # no earlier run's repeats read as this study's
    (results_dir / stage).mkdir(parents=True)
    (checkpoint_dir / stage).mkdir(parents=True, exist_ok=True)  # kept: named again, its repeats are reused
    write_json(results_dir / f"{stage}.json", {"method": method, "skipped": "not in study.methods"})
    print(f"[{method}] skipped: not in study.methods (params.yaml); nothing trained", flush=True)
    return []


@dataclass
class _Repeat:
    index: int
    seed: int
    config: StudyConfig
    fingerprint: str
    done_file: Path
    reused: dict[str, Any] | None = None  # the finished results of an earlier run with this fingerprint
    checkpoint: Checkpoint | None = None


def _run_repeats(
    method: str, config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path
) -> list[dict[str, Any]]:
    stage = f"{method}_search"
    tracker = Tracker(config.mlflow.experiment)
    data = PreparedData.open(prepared_dir)
    config = own_training(method, config.with_prepared_task(data.summary))
    space = make_space(config.space, data.image_shape)
    check_builder_on(config, data, space)  # a user's builder that fails, before anything trains
    val_key = task_of(data.summary).val_key
    folder = checkpoint_dir / stage
    repeats = []
    for index, seed in enumerate(config.repeat_seeds()):
        repeat_config = config.for_repeat(seed)
        repeat = _Repeat(index, seed, repeat_config, stage_fingerprint(method, repeat_config, data.summary, tracker),
                         folder / f"seed-{seed}.done.json")  # fmt: skip
        repeat.reused = _finished_repeat(repeat, tracker)
        if repeat.reused is None:
            repeat.checkpoint = _open_checkpoint(method, repeat, folder, tracker)
        repeats.append(repeat)
    # Under the lock no other process owns this stage's runs: those left RUNNING were a killed run's.
    resumed = {r.checkpoint.stage_run_id for r in repeats if r.checkpoint is not None} - {None}
    stale = tracker.close_stale_stage_runs(stage, keep=resumed, checkpoint_folder=str(folder.resolve()))
    if stale:
        print(f"[{method}] marked {stale} run(s) left RUNNING by an earlier, killed run as KILLED", flush=True)
    (results_dir / stage).mkdir(parents=True, exist_ok=True)
    summaries = []
    for repeat in repeats:
        if repeat.reused is not None:
            print(f"[{method}] repeat {repeat.index} (seed {repeat.seed}): reused, finished earlier with the same "
                  "params, data and code", flush=True)  # fmt: skip
            # The seed names a repeat; its position may have moved (study.seeds edited).
            summary = repeat.reused["summary"] | {"repeat": repeat.index}
            history = repeat.reused["history"]  # written by this code: the fingerprint holds its version
            if repeat.reused["summary"].get("repeat") != repeat.index:
                tracker.set_tags(repeat.reused["stage_run_id"], {"repeat": repeat.index})
        else:
            summary, history = _search_once(method, repeat, space, data, tracker, folder, val_key)
        summary_file, history_file = repeat_files(results_dir, method, repeat.seed)
        write_json(history_file, history)
        write_json(summary_file, summary)
        summaries.append(summary)
    write_json(results_dir / f"{stage}.json", aggregate_summary(method, summaries, val_key))
    failed = [s for s in summaries if "best_genome" not in s]
    if len(failed) == len(summaries):
        raise SearchFailed(
            f"{method} search: all {' + '.join(str(s['evaluations']) for s in summaries)} individuals failed "
            f"({len(summaries)} repeat(s); see failure_reason in MLflow); "
            "no champion can be chosen. Narrow the search space (e.g. space.genes.learning_rate.high)"
        )
    return summaries


def _finished_repeat(repeat: _Repeat, tracker: Tracker) -> dict[str, Any] | None:
    """The results an earlier run of this repeat left, when its params, data and code were the same
    and its MLflow runs are still in the store; else None (the repeat trains)."""
    if not repeat.done_file.is_file():
        return None
    try:
        done = json.loads(repeat.done_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != repeat.fingerprint:
        return None
    if not {"summary", "history", "stage_run_id"} <= done.keys() or not tracker.run_exists(done["stage_run_id"]):
        return None
    return done


def _open_checkpoint(method: str, repeat: _Repeat, folder: Path, tracker: Tracker) -> Checkpoint:
    checkpoint, message = Checkpoint.open(folder / f"seed-{repeat.seed}.jsonl", repeat.fingerprint)
    if checkpoint.stage_run_id is not None and not tracker.run_exists(checkpoint.stage_run_id):
        checkpoint.restart()
        message = (f"checkpoint {checkpoint.path} names runs the MLflow store {tracker.uri} does not hold "
                   "(deleted or replaced): starting afresh")  # fmt: skip
    print(f"[{method}] repeat {repeat.index} (seed {repeat.seed}): {message}", flush=True)
    return checkpoint


def _search_once(
    method: str, repeat: _Repeat, space: Any, data: PreparedData, tracker: Tracker, folder: Path, val_key: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One repeat's search: train (or replay from its checkpoint), log, and return its summary and
    history. A repeat in which every individual failed is recorded, not raised: the others go on."""
    spec = get_method(method)
    stage = f"{method}_search"
    config, checkpoint = repeat.config, repeat.checkpoint
    assert checkpoint is not None
    budget = config.budget.evaluations
    tracking = SearchTracking(tracker, config.seed, val_key)
    weight_rule = spec.weight_rule(config)
    weight_store = None
    if weight_rule != "none":
        weights_dir = folder / f"seed-{repeat.seed}-weights"
        if not checkpoint.records and weights_dir.exists():
            shutil.rmtree(weights_dir)  # a fresh start: weights of another run's genomes must not be reused
        weight_store = WeightStore(weights_dir)
    fidelity_state = (folder / f"seed-{repeat.seed}-fidelity", repeat.fingerprint) if config.fidelity.enabled else None
    evaluator = make_evaluator(config, data, weight_rule, weight_store, fidelity_state)
    strategy = spec.build(config, space)
    states = folder / f"seed-{repeat.seed}-states"
    if hasattr(strategy, "state_dir"):
        # It resumes training states between its proposals (PBT's members): kept here, so a killed
        # search resumes from the last interval's; a fresh start must not find another run's.
        if not checkpoint.records and states.exists():
            shutil.rmtree(states)
        strategy.state_dir = states
    if checkpoint.stage_run_id is not None:
        stage_run = checkpoint.stage_run_id
        settled = tracking.reopen_stage(stage_run, list(checkpoint.group_runs.values()), checkpoint.records)
        if settled:
            print(f"[{method}] {settled}", flush=True)
    else:
        stage_run = tracking.start_stage(
            f"{stage} seed {repeat.seed}",
            params={"budget": budget, "seed": config.seed, "repeat": repeat.index, "dataset": data.summary["dataset"],
                    "train_size": data.summary["sizes"]["train"], "val_size": data.summary["sizes"]["val"],
                    **strategy.stage_params()},
            tags={"method": method, "stage": stage, "repeat": repeat.index, "seed": config.seed,
                  CHECKPOINT_FOLDER_TAG: str(folder.resolve())},
            description=f"{spec.label}, repeat {repeat.index} (seed {config.seed}): {budget} evaluations on "
                        f"{data.summary['dataset']}; every evaluated individual is a run below (the GA's under "
                        "its generation); metrics: the search's best.",
        )  # fmt: skip
        checkpoint.set_stage_run(stage_run)
    label = f"{method} r{repeat.index}"
    try:
        with (
            tracker.ends_on_error(stage_run),
            tqdm(total=budget, desc=f"{label} search", unit="eval", disable=None) as bar,
        ):
            progress = _Progress(bar, label, budget, val_key)
            runner = SearchRunner(strategy, evaluator, budget, checkpoint, tracking, stage_run, progress,
                                  epoch_budget=config.budget.epochs, epoch_cost=epoch_cost(config, method))  # fmt: skip
            records = runner.run()
    finally:
        evaluator.close()
    shutil.rmtree(states, ignore_errors=True)  # reached only when the search ended: its schedule is in the history
    rank_by_rung = config.fidelity.ranking == "rung"
    summary = search_summary(method, budget, records, runner.elapsed(), val_key, rank_by_rung) | strategy.summary()
    if runner.stop_reason:
        summary["stop_reason"] = runner.stop_reason
    summary |= {"repeat": repeat.index, "seed": config.seed, "stage_run_id": stage_run}
    history = {"evaluations": [r.to_dict() for r in records], "generations": strategy.history()}
    if "best_genome" in summary:
        tracking.finish_stage(stage_run, summary)
    else:
        print(f"[{method}] repeat {repeat.index} (seed {repeat.seed}): every individual failed", flush=True)
        tracking.fail_stage(stage_run, "FAILED", "every individual failed")
    # The results first, then the mark: a kill between them resumes by replay, training nothing.
    write_json(repeat.done_file, {"fingerprint": repeat.fingerprint, "stage_run_id": stage_run,
                                  "summary": summary, "history": history})  # fmt: skip
    checkpoint.mark_complete()
    return summary, history
