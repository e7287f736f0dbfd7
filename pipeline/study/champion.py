"""The champion: each method's best configuration retrained at full fidelity, scored on the
held-out test set; the overall best is logged to MLflow as a model and registered."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import mlflow
import mlflow.pytorch
import torch

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData, TensorBatches, TensorSplit
from pipeline.errors import SearchFailed
from pipeline.jsonio import write_json
from pipeline.search.registry import method_names
from pipeline.space import genome_hash, genome_seed
from pipeline.study.lock import StageLock
from pipeline.tracking.observer import mlflow_params
from pipeline.tracking.store import Tracker
from pipeline.training.fit import fit_genome, training_device
from pipeline.training.lit_module import DivergedError
from pipeline.training.models import NetworkBuilder, network_builder


def load_search_summaries(results_dir: Path) -> dict[str, dict[str, Any]]:
    summaries = {}
    for method in method_names():
        path = results_dir / f"{method}_search.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the {method}_search stage first")
        summaries[method] = json.loads(path.read_text())
    return summaries


def rank_methods(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Methods with a finished best, by best validation accuracy (ties keep the registry's order)."""
    usable = [m for m in summaries if summaries[m].get("best_val_acc") is not None]
    return sorted(usable, key=lambda m: -summaries[m]["best_val_acc"])


def _retrain(
    genome: dict, config: StudyConfig, build: NetworkBuilder, splits: dict[str, TensorSplit], tracker: Tracker, run_id: str
) -> dict[str, Any]:
    seed = genome_seed(config.seed, genome)
    outcome = fit_genome(
        genome, seed=seed, build_network=build, train_split=splits["train"], val_split=splits["val"],
        train_config=config.train, epochs=config.champion.epochs,
    )  # fmt: skip
    test_batches = TensorBatches(splits["test"], config.train.eval_batch_size, shuffle=False)
    (test_metrics,) = outcome.trainer.test(outcome.module, dataloaders=test_batches, verbose=False)
    for epoch, metrics in enumerate(outcome.module.epoch_metrics):
        tracker.log_metrics(run_id, metrics, step=epoch)
    last = outcome.module.epoch_metrics[-1]
    result = {
        "val_acc": last["val_acc"],
        "val_loss": last["val_loss"],
        "test_acc": float(test_metrics["test_acc"]),
        "test_loss": float(test_metrics["test_loss"]),
        "train_seconds": outcome.seconds,
    }
    tracker.log_metrics(run_id, result)
    return result | {"module": outcome.module}


def run_champion_stage(
    config: StudyConfig, prepared_dir: Path, results_dir: Path, model_path: Path, lock_dir: Path = Path("checkpoints")
) -> dict[str, Any]:
    """Retrain each method's best, test it, log and register the overall best; holds
    ``lock_dir/champion.lock`` throughout, so a second run of the stage stops at once."""
    with StageLock(lock_dir / "champion.lock", "champion"):
        return _run_champion_stage(config, prepared_dir, results_dir, model_path)


def _run_champion_stage(config: StudyConfig, prepared_dir: Path, results_dir: Path, model_path: Path) -> dict[str, Any]:
    summaries = load_search_summaries(results_dir)
    ranking = rank_methods(summaries)
    if not ranking:
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
    build = network_builder(config.space.kind, config.model, data.image_shape, data.num_classes)
    stage_run = tracker.start_run(
        "champion",
        params={"epochs": config.champion.epochs, "train_size": len(splits["train"]), "test_size": len(splits["test"])},
        tags={"stage": "champion"},
    )
    retrained: dict[str, dict[str, Any]] = {}  # genome hash -> result, so a shared best trains once
    per_method: dict[str, dict[str, Any]] = {}
    try:
        for method in ranking:
            genome = summaries[method]["best_genome"]
            hash_ = genome_hash(genome)
            if hash_ not in retrained:
                run_id = tracker.start_run(
                    f"champion-{method}", parent_id=stage_run, params={**mlflow_params(genome), "epochs": config.champion.epochs},
                    tags={"method": method, "genome_hash": hash_, "search_run_id": summaries[method]["best_run_id"]},
                )  # fmt: skip
                try:
                    retrained[hash_] = _retrain(genome, config, build, splits, tracker, run_id) | {"run_id": run_id}
                    tracker.end_run(run_id)
                except (DivergedError, RuntimeError, ValueError) as exc:
                    retrained[hash_] = {"failure": f"{type(exc).__name__}: {exc}", "run_id": run_id}
                    tracker.set_tags(run_id, {"failure_reason": retrained[hash_]["failure"]})
                    tracker.end_run(run_id, "FAILED")
                except BaseException:
                    tracker.end_run(run_id, "KILLED")  # Ctrl-C or SIGTERM: stopped, not failed
                    raise
            result = {k: v for k, v in retrained[hash_].items() if k != "module"}
            per_method[method] = {"genome": genome, "genome_hash": hash_,
                                  "search_val_acc": summaries[method]["best_val_acc"], **result}  # fmt: skip
        finished = [m for m in ranking if "test_acc" in per_method[m]]
        if not finished:
            raise SearchFailed("every best configuration failed when retrained at full fidelity; see MLflow")
        best_method = finished[0]
        champion = {"method": best_method, **per_method[best_method]}
        module = retrained[champion["genome_hash"]]["module"]
        champion |= _log_model(module, splits["test"], config, tracker, champion["run_id"])
    except BaseException as exc:
        tracker.end_run(stage_run, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    model_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.network.state_dict(), "genome": champion["genome"],
                "model": config.model.model_dump(), "dataset": data.summary}, model_path)  # fmt: skip
    tracker.log_metrics(stage_run, {"test_acc": champion["test_acc"], "test_loss": champion["test_loss"]})
    tracker.set_tags(stage_run, {"champion_method": best_method, "champion_run_id": champion["run_id"]})
    tracker.end_run(stage_run)
    payload = {
        "champion": champion,
        "methods": per_method,
        "epochs": config.champion.epochs,
        "train_size": len(splits["train"]),
        "test_size": len(splits["test"]),
    }
    write_json(results_dir / "champion.json", payload)
    return payload


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for a while. ``mlflow.set_tracking_uri`` also sets
    ``MLFLOW_TRACKING_URI`` for the whole process: put back what was there."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable again


def _log_model(module: torch.nn.Module, test: TensorSplit, config: StudyConfig, tracker: Tracker, run_id: str) -> dict:
    network = module.network.cpu().eval()
    with _fluent_tracking_uri(tracker.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            network,
            name="model",
            # MLflow 3 saves a traced (pt2) graph: tracing needs an example batch, and the
            # signature is inferred from it.
            input_example=test.images[:4].numpy(),
            registered_model_name=config.champion.registered_model,
            # Explicit requirements: inferring them imports the model in a subprocess, slowly.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return {
        "model_uri": info.model_uri,
        "registered_model": config.champion.registered_model,
        "registered_version": getattr(info, "registered_model_version", None),
    }
