"""The champion: each method's best configuration of each repeat retrained at full fidelity and
scored on the held-out test set; the best by the task's validation metric (accuracy, or MAE) is
logged to MLflow as a model and registered. It trains through the evaluators' ``TrainingContext``
(``retrain_and_test``) and logs through ``pipeline.tracking``, like every other training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData, TensorSplit
from pipeline.errors import SearchFailed, TrackingError
from pipeline.jsonio import write_json
from pipeline.search.registry import own_training, study_methods
from pipeline.space import genome_hash, genome_seed
from pipeline.study.checkpoint import fingerprint, platform_signature, source_digest
from pipeline.study.lock import StageLock
from pipeline.study.layout import repeat_files
from pipeline.task import Task, task_of
from pipeline.tracking.models import log_registered_model
from pipeline.tracking.observer import mlflow_params
from pipeline.tracking.store import Tracker
from pipeline.training.evaluator import TrainingContext, retrain_and_test
from pipeline.training.device import training_device
from pipeline.training.models import BuilderSource, check_builder


def load_repeat_summaries(results_dir: Path, config: StudyConfig) -> dict[str, list[dict[str, Any]]]:
    """The per-repeat summaries of every method the study runs (``study.methods``), in repeat order."""
    summaries: dict[str, list[dict[str, Any]]] = {}
    for method in study_methods(config):
        summaries[method] = []
        for seed in config.repeat_seeds():
            path, _ = repeat_files(results_dir, method, seed)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run the {method}_search stage first")
            summaries[method].append(json.loads(path.read_text()))
    return summaries


def retrain_fingerprint(
    config: StudyConfig, data_summary: dict, genome: dict, seed: int, schedule: list | None = None
) -> str:
    """What a full-fidelity retraining depends on; the same one is never trained twice."""
    return fingerprint({
        "genome": genome, "seed": seed, "data": data_summary, "model": config.model.model_dump(),
        **({"schedule": schedule} if schedule else {}),
        "builder_source": source_digest(config.model),
        "space_kind": config.space.kind, "train": config.train.model_dump(),
        "champion": {"epochs": config.champion.epochs, "train_size": config.champion.train_size},
        "platform": platform_signature(),
    })  # fmt: skip


class RetrainCache:
    """Finished retrainings by fingerprint: ``<key>.json`` (results, run id) and ``<key>.pt``
    (weights), so that the champion stage retrains only what changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, tracker: Tracker) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json"
        if not path.is_file() or not (self.folder / f"{key}.pt").is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(stored, dict) or not tracker.run_exists(stored.get("run_id", "")):
            return None  # its run is gone from the store: retrain, so every number links to a run
        return stored

    def put(self, key: str, result: dict[str, Any], network: torch.nn.Module) -> None:
        torch.save(network.state_dict(), self.folder / f"{key}.pt")
        write_json(self.folder / f"{key}.json", result)  # last: a kill before it leaves no entry

    def weights(self, key: str) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / f"{key}.pt", map_location="cpu", weights_only=True)


def choose_champion(entries: list[dict[str, Any]], task: Task) -> dict[str, Any] | None:
    """The retrained configuration with the best validation score (never the test score); ties keep
    the first (registry order, then repeat order)."""
    finished = [e for e in entries if task.test_key in e]
    return max(finished, key=lambda e: task.fitness(e[task.val_key])) if finished else None


def run_champion_stage(
    config: StudyConfig, prepared_dir: Path, results_dir: Path, model_path: Path, lock_dir: Path = Path("checkpoints")
) -> dict[str, Any]:
    """Retrain each method's best of each repeat, test it, log and register the overall best (by
    validation score); holds ``lock_dir/champion.lock`` throughout, so a second run of the stage
    stops at once. Retrainings finished before with the same inputs are reused from
    ``lock_dir/champion/``."""
    with StageLock(lock_dir / "champion.lock", "champion"):
        return _run_champion_stage(config, prepared_dir, results_dir, model_path, RetrainCache(lock_dir / "champion"))


def _run_champion_stage(
    config: StudyConfig, prepared_dir: Path, results_dir: Path, model_path: Path, cache: RetrainCache
) -> dict[str, Any]:
    summaries = load_repeat_summaries(results_dir, config)
    if not any("best_genome" in s for repeats in summaries.values() for s in repeats):
        raise SearchFailed("every search failed: there is no configuration to retrain")
    tracker = Tracker(config.mlflow.experiment)
    tracker.check_artifacts_writable()  # before any training: the model is saved there at the end
    stale = tracker.close_stale_stage_runs("champion", keep=set())
    if stale:
        print(f"[champion] marked {stale} run(s) left RUNNING by an earlier, killed run as KILLED", flush=True)
    data = PreparedData.open(prepared_dir)
    splits = {
        "train": data.load("full_train", limit=config.champion.train_size, seed=config.seed).to(training_device()),
        "val": data.load("val").to(training_device()),
        "test": data.load("test").to(training_device()),
    }
    task = task_of(data.summary)
    builder = BuilderSource.for_study(config)
    # The searches' training context; the champion trains one network at a time, on all of its threads.
    context = dataclasses.replace(TrainingContext.for_study(config, data), threads=None)
    first_best = next(s["best_genome"] for repeats in summaries.values() for s in repeats if "best_genome" in s)
    check_builder(builder, config.model, first_best, data.image_shape, task.outputs(data.num_classes))
    stage_run = tracker.start_run(
        "champion",
        params={"epochs": config.champion.epochs, "train_size": len(splits["train"]), "test_size": len(splits["test"]),
                "repeats": len(config.repeat_seeds())},
        tags={"stage": "champion"},
        description="Each method's best of each repeat retrained at full fidelity and tested on the held-out "
                    "test set (one run each, below); the champion, chosen by validation, is the registered model.",
    )  # fmt: skip
    entries: list[dict[str, Any]] = []
    trained = reused = 0
    total = sum("best_genome" in s for repeats in summaries.values() for s in repeats)
    with tracker.ends_on_error(stage_run):
        for method, repeats in summaries.items():
            for summary in repeats:
                if "best_genome" not in summary:
                    continue  # every individual of this repeat failed: nothing to retrain
                genome, seed = summary["best_genome"], genome_seed(summary["seed"], summary["best_genome"])
                key = retrain_fingerprint(config, data.summary, genome, seed, summary.get("best_schedule"))
                result = cache.get(key, tracker)
                was_reused = result is not None
                if result is None:
                    result = _retrain_logged(method, summary, genome, seed, key, config, context, splits, tracker,
                                             stage_run, cache, task)  # fmt: skip
                    trained += 1
                else:
                    reused += 1
                print(progress_line(trained + reused, total, method, summary["seed"], result, task, was_reused),
                      flush=True)  # fmt: skip
                entries.append({"method": method, "repeat": summary["repeat"], "seed": summary["seed"],
                                "genome": genome, "genome_hash": genome_hash(genome), "key": key,
                                **({"schedule": summary["best_schedule"]} if summary.get("best_schedule") else {}),
                                f"search_{task.val_key}": summary[f"best_{task.val_key}"], **result})  # fmt: skip
        print(f"[champion] {trained} retrained, {reused} reused (same genome, seed, data and settings as before)",
              flush=True)  # fmt: skip
        champion = choose_champion(entries, task)
        if champion is None:
            raise SearchFailed("every best configuration failed when retrained at full fidelity; see MLflow")
        network = context.network_builder()(champion["genome"])
        network.load_state_dict(cache.weights(champion["key"]))
        champion = champion | _log_champion_model(network, splits["test"], config, tracker, champion["run_id"])
    model_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict(), "genome": champion["genome"], "schedule": champion.get("schedule"),
                "model": config.model.model_dump(), "dataset": data.summary}, model_path)  # fmt: skip
    tracker.log_metrics(stage_run, {task.test_key: champion[task.test_key], "test_loss": champion["test_loss"]})
    tracker.set_tags(stage_run, {"champion_method": champion["method"], "champion_run_id": champion["run_id"]})
    tracker.end_run(stage_run)
    details = {
        "champion": champion,
        "retrained": entries,
        "chosen_by": f"validation {task.label} of the retrained configuration ({task.direction})",
        "metric": {"test": task.test_key, "val": task.val_key, "label": task.label, "maximize": task.maximize},
        "epochs": config.champion.epochs,
        "train_size": len(splits["train"]),
        "test_size": len(splits["test"]),
        "stage_run_id": stage_run,
    }
    write_json(results_dir / "champion_details.json", details)
    write_json(results_dir / "champion.json", champion_metrics(champion, entries, task))
    return details


def champion_metrics(champion: dict[str, Any], entries: list[dict[str, Any]], task: Task) -> dict[str, Any]:
    """Numbers only (``dvc metrics``): the champion's, and each method's mean test score."""
    test, val = task.test_key, task.val_key
    metrics: dict[str, Any] = {test: champion[test], val: champion[val]}
    for method in dict.fromkeys(e["method"] for e in entries):
        scores = [e[test] for e in entries if e["method"] == method and test in e]
        if scores:
            metrics[f"{method}_{test}_mean"] = sum(scores) / len(scores)
    return metrics


def progress_line(done: int, total: int, method: str, seed: int, result: dict[str, Any], task: Task,
                  reused: bool) -> str:  # fmt: skip
    """One line per retraining, as the searches print one per evaluation."""
    how = "reused" if reused else f"retrained in {result.get('train_seconds', 0.0):.1f}s"
    if task.test_key not in result:
        return f"[champion] {done}/{total} {method} seed {seed}: FAILED ({result.get('failure', 'unknown')}), {how}"
    return (
        f"[champion] {done}/{total} {method} seed {seed}: validation {task.label} {result[task.val_key]:.4f}, "
        f"test {task.label} {result[task.test_key]:.4f}, {how}"
    )


def _retrain_logged(
    method: str,
    summary: dict[str, Any],
    genome: dict,
    seed: int,
    key: str,
    config: StudyConfig,
    context: TrainingContext,
    splits: dict[str, TensorSplit],
    tracker: Tracker,
    stage_run: str,
    cache: RetrainCache,
    task: Task,
) -> dict[str, Any]:
    """One retraining in its own MLflow run under the stage's; a failure is recorded, not raised."""
    schedule = summary.get("best_schedule")
    epochs = schedule[-1]["epochs"] if schedule else config.champion.epochs
    how = (f"its schedule replayed from scratch ({len(schedule)} step(s) to {epochs} epoch(s))" if schedule
           else f"retrained for {epochs} epoch(s)")  # fmt: skip
    run_id = tracker.start_run(
        f"champion-{method}-seed{summary['seed']}", parent_id=stage_run,
        params={**mlflow_params(genome), "epochs": epochs, "seed": seed, **({"schedule_steps": len(schedule)} if schedule else {})},
        tags={"method": method, "repeat": summary["repeat"], "genome_hash": genome_hash(genome),
              "search_run_id": summary["best_run_id"]},
        description=f"{method}'s best of seed {summary['seed']}, {how} on the full training split and tested on "
                    "the held-out test set.",
    )  # fmt: skip
    with tracker.ends_on_error(run_id):  # Ctrl-C or SIGTERM: KILLED
        # PBT's result is a schedule, not a configuration: replayed from scratch with its repeat's seed, at
        # its own epochs, trained as its search trained it (``own_training``: no early stopping cuts an
        # interval short).
        own = dataclasses.replace(context, study_seed=summary["seed"], train_config=own_training(method, config).train)
        try:
            retrained = retrain_and_test(genome, seed, own, splits, config.champion.epochs, schedule)
        except (RuntimeError, ValueError) as exc:  # a DivergedError is a RuntimeError
            failure = f"{type(exc).__name__}: {exc}"
            tracker.set_tags(run_id, {"failure_reason": failure})
            tracker.end_run(run_id, "FAILED")
            return {"failure": failure, "run_id": run_id}
    for epoch, metrics in enumerate(retrained.epoch_metrics):
        tracker.log_metrics(run_id, metrics, step=epoch)
    result = dict(retrained.scores)
    # Validation was logged per epoch above; logging it again here would add a second point.
    tracker.log_metrics(run_id, {k: result[k] for k in (task.test_key, "test_loss", "train_seconds")})
    tracker.end_run(run_id)
    result["run_id"] = run_id
    cache.put(key, result, retrained.network)
    return result


def _log_champion_model(network: torch.nn.Module, test: TensorSplit, config: StudyConfig, tracker: Tracker,
                        run_id: str) -> dict[str, Any]:  # fmt: skip
    try:
        return log_registered_model(tracker, run_id, network, test.images[:4].numpy(), config.champion.registered_model)
    except TrackingError as exc:
        raise TrackingError(
            f"{exc}; the retrainings are kept (checkpoints/champion/) and reused when the stage runs again"
        ) from None
