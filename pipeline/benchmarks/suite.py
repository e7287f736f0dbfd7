"""A benchmark study's search stage: one method over every (task, seed) cell, each cell a whole
search through the trained studies' own runner and strategies, scored by ``TableEvaluator``.

A cell costs milliseconds to seconds, so a cell is the unit of resume: each finished cell is kept in
``checkpoints/<method>_suite/<task>/seed-<s>.json`` (its fingerprint, MLflow run id and results); a
killed stage redoes only the cells without one. MLflow gets one run per cell (the best-so-far and
the regret as metric histories, step = evaluation; the cell's file as an artifact) under one stage
run per method; with ``mlflow.individual_runs: true`` every lookup is also a run of its own, nested
under its cell's run as in a trained study.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.benchmarks.config import SuiteConfig, cell_config, ga_variant
from pipeline.benchmarks.evaluator import TableEvaluator
from pipeline.benchmarks.regret import incumbents, regret_curve
from pipeline.benchmarks.tables import BenchmarkTable, load_table, restricted_space
from pipeline.config.sections import GAConfig
from pipeline.errors import ConfigError
from pipeline.jsonio import write_json
from pipeline.search.registry import get_method, table_method_names
from pipeline.space.dimensions import SearchSpace
from pipeline.study.checkpoint import fingerprint
from pipeline.study.lock import StageLock
from pipeline.study.runner import SearchRunner
from pipeline.tracking.observer import SearchTracking
from pipeline.tracking.store import Tracker, tracking_uri

TUNED_GA = "ga_tuned"  # the GA at the settings the suite's own sensitivity run found best
CELL_TAG = "cell"


def suite_methods(config: SuiteConfig) -> list[str]:
    """The methods a suite compares, in report order: the registered ones (or ``suite.methods``),
    and the tuned GA after them when the sensitivity run is on."""
    names = list(config.suite.methods or table_method_names())
    if config.suite.sensitivity.enabled and "ga" in names:
        names.append(TUNED_GA)
    return names


def registered_method(variant: str) -> str:
    return "ga" if variant == TUNED_GA else variant


def task_slug(task: str) -> str:
    return task.replace("/", "__")


def tuned_ga(results_dir: Path) -> GAConfig:
    """The GA settings the sensitivity stage chose (``suite_sensitivity/best.json``)."""
    path = results_dir / "suite_sensitivity" / "best.json"
    try:
        chosen = json.loads(path.read_text())["ga"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: the tuned GA's settings are missing ({exc}); run the suite_sensitivity "
                          "stage first (dvc repro runs it)") from None  # fmt: skip
    return GAConfig.model_validate(chosen)


def run_cell(
    table: BenchmarkTable,
    space: SearchSpace,
    config: SuiteConfig,
    method: str,
    seed: int,
    ga: GAConfig | None = None,
    tracking: SearchTracking | None = None,
    cell_run: str | None = None,
) -> dict[str, Any]:
    """One search of ``method`` on one table with one seed; its evaluations and regret curve."""
    started = time.perf_counter()
    study = cell_config(config, table.name, seed, ga)
    strategy = get_method(method).build(study, space)
    evaluator = TableEvaluator(table, seed, config.suite.noise)
    records = SearchRunner(strategy, evaluator, config.budget.evaluations, tracking=tracking, stage_run=cell_run).run()
    rows = np.array([table.config_index(r.genome) for r in records], dtype=np.int64)
    scores = np.array([r.val_score for r in records], dtype=float)
    curve = regret_curve(table, rows, scores)
    best = records[int(incumbents(scores, table.maximize)[-1])]
    return {
        "task": table.name, "seed": seed, "evaluations": len(records),
        "rows": rows.tolist(), "scores": scores.tolist(), "seconds": [r.train_seconds for r in records],
        "regret": curve.tolist(), "final_regret": float(curve[-1]),
        "best_genome": best.genome, "best_score": best.val_score,
        "best_mean": float(table.means[table.config_index(best.genome)]),
        "stop_reason": strategy.stop_reason, "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip


def method_fingerprint(variant: str, config: SuiteConfig, ga: GAConfig | None, uri: str) -> str:
    """What every cell of a method depends on (not which tasks or seeds: adding some keeps the rest)."""
    settings = {"ga": (ga or config.ga).model_dump(), "tpe": config.tpe.model_dump()}
    own = get_method(registered_method(variant)).settings_sections
    return fingerprint({
        "method": variant, "budget": config.budget.model_dump(), "noise": config.suite.noise,
        "space": config.space.model_dump(), **{name: settings[name] for name in own if name in settings},
        "tracking": {"uri": uri, "experiment": config.mlflow.experiment,
                     "individual_runs": config.mlflow.individual_runs},
    })  # fmt: skip


class _Store:
    """The MLflow side of a suite stage: a stage run, and one run per cell found again by its tag."""

    def __init__(self, variant: str, config: SuiteConfig, folder: Path, key: str) -> None:
        self.tracker = Tracker(config.mlflow.experiment)
        self.config, self.variant = config, variant
        state_file = folder / "stage.json"
        state = _read(state_file)
        stage_run = state.get("stage_run_id") if state.get("fingerprint") == key else None
        if stage_run is not None and self.tracker.run_exists(stage_run):
            self.tracker.resume_run(stage_run)
        else:
            stage_run = self.tracker.start_run(
                f"{variant}_suite", params={"budget": config.budget.evaluations, "noise": config.suite.noise,
                                            "method": variant, "tasks": len(config.tasks)},
                tags={"method": variant, "stage": f"{variant}_suite", "kind": "benchmark"},
                description=f"{variant} on every benchmark task and seed: one run per task and seed below, "
                            "with the regret and the best so far per evaluation; metrics: the mean final regret.",
            )  # fmt: skip
            write_json(state_file, {"fingerprint": key, "stage_run_id": stage_run})
        self.stage_run = stage_run
        # Cell runs a killed stage left: a finished one is reused, any other deleted and redone.
        self.cell_runs = {r.data.tags.get(CELL_TAG): r for r in self.tracker.children([stage_run])}

    def settle(self, cell: str) -> str | None:
        """The id of this cell's finished run from a killed stage, else None (a partial one deleted)."""
        run = self.cell_runs.pop(cell, None)
        if run is None:
            return None
        if run.info.status == "FINISHED":
            return run.info.run_id
        self._delete(run.info.run_id)
        return None

    def _delete(self, run_id: str) -> None:
        level = [run_id]
        while level:  # the cell's lookups (and the GA's generations) first
            below = [r.info.run_id for r in self.tracker.children(level)]
            for child in below:
                self.tracker.client.delete_run(child)
            level = below
        self.tracker.client.delete_run(run_id)

    def start_cell(self, task: str, seed: int, cell: str) -> str:
        return self.tracker.start_run(f"{task} seed {seed}", parent_id=self.stage_run,
                                      params={"task": task, "seed": seed, "method": self.variant},
                                      tags={CELL_TAG: cell, "task": task, "seed": seed, "method": self.variant})  # fmt: skip

    def finish_cell(self, run_id: str, result: dict[str, Any], cell_file: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        sign = 1.0 if result["maximize"] else -1.0
        best = sign * np.maximum.accumulate(sign * np.array(result["scores"]))
        metrics = [Metric("regret", float(v), now, i + 1) for i, v in enumerate(result["regret"])]
        metrics += [Metric("best_so_far", float(v), now, i + 1) for i, v in enumerate(best)]
        metrics += [Metric("final_regret", result["final_regret"], now, 0),
                    Metric("best_mean", result["best_mean"], now, 0)]  # fmt: skip
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker._call(self.tracker.client.log_batch, run_id, metrics=metrics[start : start + 1000])
        self.tracker.log_artifact(run_id, cell_file)
        self.tracker.end_run(run_id)

    def finish(self, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.stage_run, metrics)
        self.tracker.end_run(self.stage_run)


def _read(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def run_suite_stage(
    variant: str,
    config: SuiteConfig,
    results_dir: Path,
    checkpoint_dir: Path = Path("checkpoints"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``variant`` (a registered method, or ``ga_tuned``) on every task and seed; write
    ``<variant>_suite/<task>.json`` (every cell) and ``<variant>_suite.json`` (metrics) under
    ``results_dir``; returns the metrics. Cells finished by an earlier run with the same settings
    and code are reused."""
    stage = f"{variant}_suite"
    folder = checkpoint_dir / stage
    with StageLock(checkpoint_dir / f"{stage}.lock", stage):
        ga = tuned_ga(results_dir) if variant == TUNED_GA else None
        method = registered_method(variant)
        key = method_fingerprint(variant, config, ga, tracking_uri())
        store = _Store(variant, config, folder, key)
        seeds = config.repeat_seeds()
        out = results_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        finals, lookups, reused, wall = [], 0, 0, 0.0
        with store.tracker.ends_on_error(store.stage_run):
            for task in config.tasks:
                table = load_table(task)
                space = restricted_space(table, config.space.genes)
                cells = []
                for seed in seeds:
                    cell_file = folder / task_slug(task) / f"seed-{seed}.json"
                    done = _read(cell_file)
                    if done.get("fingerprint") == key and "result" in done:
                        cells.append(done["result"])
                        reused += 1
                        continue
                    cell = f"{task}/{seed}"
                    run_id = store.settle(cell)
                    tracking = None
                    if run_id is None and config.mlflow.individual_runs:
                        run_id = store.start_cell(task, seed, cell)
                        tracking = SearchTracking(store.tracker, seed, f"val_{table.metric.removeprefix('val_')}")
                    result = run_cell(table, space, config, method, seed, ga, tracking, run_id) | {
                        "method": variant,
                        "maximize": table.maximize,
                    }
                    if run_id is None or tracking is not None:  # a run to complete
                        run_id = run_id or store.start_cell(task, seed, cell)
                        write_json(cell_file, {"result": result})  # the run's artifact; not yet done
                        store.finish_cell(run_id, result, cell_file)
                    # Done only once its run is FINISHED: a kill before this line finds that run by
                    # its tag and reuses it; a kill while it was logged leaves it unfinished: deleted.
                    write_json(cell_file, {"fingerprint": key, "run_id": run_id, "result": result})
                    cells.append(result)
                    wall += result["wall_seconds"]
                lookups += sum(c["evaluations"] for c in cells)
                finals.append(float(np.mean([c["final_regret"] for c in cells])))
                write_json(out / f"{task_slug(task)}.json", {"task": task, "method": variant,
                                                             "table": table.summary(), "cells": cells})  # fmt: skip
                log(f"[{variant}] {task}: {len(cells)} seeds, mean final regret {finals[-1]:.4f}")
            metrics = {"tasks": len(finals), "seeds": len(seeds), "cells": len(finals) * len(seeds),
                       "cells_reused": reused, "evaluations": lookups,
                       "mean_final_regret": float(np.mean(finals)), "search_seconds": round(wall, 2)}  # fmt: skip
            store.finish({k: float(v) for k, v in metrics.items()})
        write_json(results_dir / f"{stage}.json", metrics)
        return metrics


# ----------------------------------------------------------------------------------------------------------------------
# The GA's sensitivity on the suite's tasks: the settings of the tuned GA


SENSITIVITY_SETTINGS = ("population_size", "mutation_rate", "selection")


def sensitivity_variants(config: SuiteConfig) -> list[tuple[str, Any, GAConfig]]:
    """(setting, value, GA config) for every value tried, the defaults (``ga``) among them once
    per setting: one setting changed at a time."""
    variants = []
    for setting in SENSITIVITY_SETTINGS:
        for value in getattr(config.suite.sensitivity, setting):
            variants.append((setting, value, ga_variant(config.ga, setting, value)))
    return variants


def mean_ranks(finals: np.ndarray) -> np.ndarray:
    """[values] the mean rank (1: lowest regret; ties share their mean rank) of each value over the
    blocks of ``finals[value, block]``."""
    from scipy.stats import rankdata

    return rankdata(finals, axis=0).mean(axis=1)


def run_suite_sensitivity(
    config: SuiteConfig,
    results_dir: Path,
    checkpoint_dir: Path = Path("checkpoints"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every GA variant on every task over the sensitivity's own seeds (no MLflow run per cell:
    one results file); for each setting the value with the best mean rank of final regret over the
    (task, seed) blocks; those values together are the tuned GA (``suite_sensitivity/best.json``)."""
    sensitivity = config.suite.sensitivity
    seeds = list(range(sensitivity.first_seed, sensitivity.first_seed + sensitivity.seeds))
    out = results_dir / "suite_sensitivity"
    stage = "suite_sensitivity"
    with StageLock(checkpoint_dir / f"{stage}.lock", stage):
        tables = {task: load_table(task) for task in config.tasks}
        spaces = {task: restricted_space(table, config.space.genes) for task, table in tables.items()}
        rows, chosen = [], config.ga.model_dump()
        for setting in SENSITIVITY_SETTINGS:
            tried = [(value, ga) for name, value, ga in sensitivity_variants(config) if name == setting]
            if not tried:
                continue
            finals = np.empty((len(tried), len(tables) * len(seeds)))
            for i, (value, ga) in enumerate(tried):
                key = fingerprint({"ga": ga.model_dump(), "budget": config.budget.model_dump(),
                                   "noise": config.suite.noise, "space": config.space.model_dump()})  # fmt: skip
                cell_file = checkpoint_dir / stage / f"{setting}-{value}.json"
                done = _read(cell_file)
                expected = [f"{t}/{s}" for t in tables for s in seeds]
                if done.get("fingerprint") == key and done.get("cells") == expected:
                    finals[i] = done["final_regret"]
                else:
                    finals[i] = [run_cell(tables[t], spaces[t], config, "ga", s, ga)["final_regret"]
                                 for t in tables for s in seeds]  # fmt: skip
                    write_json(cell_file, {"fingerprint": key, "cells": expected, "final_regret": finals[i].tolist()})
            ranks = mean_ranks(finals)
            default = _setting_value(config.ga, setting)
            # Ties go to the default: a change must earn its place.
            best = min(range(len(tried)), key=lambda i: (ranks[i], tried[i][0] != default))
            for (value, _), rank, regrets in zip(tried, ranks, finals):
                rows.append({"setting": setting, "value": value, "mean_rank": float(rank),
                             "mean_final_regret": float(regrets.mean()), "chosen": value == tried[best][0]})  # fmt: skip
                log(f"[ga sensitivity] {setting}={value}: mean rank {rank:.2f}, mean final regret {regrets.mean():.4f}")
            chosen = _apply(chosen, setting, tried[best][0])
        tuned = GAConfig.model_validate(chosen)
        write_json(out / "table.json", {"seeds": seeds, "tasks": list(tables), "variants": rows})
        write_json(out / "best.json", {"ga": tuned.model_dump()})
        return {"ga": tuned.model_dump(), "variants": rows}


def _setting_value(ga: GAConfig, setting: str) -> Any:
    if setting == "population_size":
        return ga.population_size
    if setting == "mutation_rate":
        return ga.mutation.settings.get("rate")
    return ga.selection.name


def _apply(ga: dict[str, Any], setting: str, value: Any) -> dict[str, Any]:
    return ga_variant(GAConfig.model_validate(ga), setting, value).model_dump()
