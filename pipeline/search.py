"""Search stages: run one method (GA, grid, random) on the shared evaluator and budget, log every
evaluation to MLflow and to the stage's results files."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from pipeline.architecture import ArchitectureSpace
from pipeline.baselines import architecture_grid_genomes, architecture_random_genomes, grid_genomes, random_genomes
from pipeline.config import SpaceConfig, StudyConfig
from pipeline.data import PreparedData
from pipeline.evaluate import EvaluationRequest, EvaluationResult, Evaluator
from pipeline.ga import Candidate, Generation, GeneticSearch
from pipeline.space import SearchSpace
from pipeline.checkpoint import Checkpoint, fingerprint
from pipeline.jsonio import write_json
from pipeline.tracking import Tracker
from pipeline.weights import WeightStore

METHODS = ("ga", "grid", "random")


class SearchFailed(RuntimeError):
    """A search in which no individual could be trained: there is nothing to report a champion of."""


@dataclass
class SearchLog:
    """Every trained evaluation of one stage, in order, with when it finished."""

    method: str
    budget: int
    started: float = field(default_factory=time.perf_counter)
    records: list[dict[str, Any]] = field(default_factory=list)
    progress: tqdm | None = None
    checkpoint: Checkpoint | None = None
    resumed: list[dict[str, Any]] = field(default_factory=list)  # records replayed from the checkpoint

    def __post_init__(self) -> None:
        if self.resumed:
            # Continue the stage's timeline where the killed run left it.
            self.started = time.perf_counter() - self.resumed[-1]["elapsed_seconds"]

    def add(self, result: EvaluationResult, generation: int | None = None) -> dict[str, Any]:
        index = len(self.records)
        if index < len(self.resumed):
            record = self.resumed[index]
            if record["genome_hash"] != result.genome_hash:
                raise RuntimeError(
                    f"resume diverged at evaluation {index}: checkpoint has {record['genome_hash']}, "
                    f"the search asked for {result.genome_hash}; delete {self.checkpoint.path if self.checkpoint else 'the checkpoint'}"
                )
            self.records.append(record)
            if self.progress is not None:
                self.progress.update(1)
            return record
        record = {
            "index": index,
            "generation": generation,
            **result.to_dict(),
            "elapsed_seconds": time.perf_counter() - self.started,
        }
        self.records.append(record)
        if self.checkpoint is not None:
            self.checkpoint.records.append(record)
            self.checkpoint.save()
        self._report(record)
        return record

    def _report(self, record: dict[str, Any]) -> None:
        if self.progress is None:
            return
        genes = " ".join(f"{k}={_short(v)}" for k, v in record["genome"].items())
        outcome = f"val_acc={record['val_acc']:.4f}" if record["status"] == "finished" else f"FAILED ({record['failure']})"
        where = f" gen {record['generation']}" if record["generation"] is not None else ""
        self.progress.write(
            f"[{self.method}] eval {record['index'] + 1}/{self.budget}{where}: {outcome} "
            f"in {record['train_seconds']:.1f}s | {genes}"
        )
        self.progress.update(1)
        best = self.best()
        if best is not None:
            self.progress.set_postfix(best=f"{best['val_acc']:.4f}")

    def elapsed(self) -> float:
        """Seconds into the search at its latest evaluation: read from the records, so a replayed
        (resumed) search sees the same clock as the run that was killed."""
        return self.records[-1]["elapsed_seconds"] if self.records else 0.0

    def best(self) -> dict[str, Any] | None:
        finished = [r for r in self.records if r["status"] == "finished"]
        # max() keeps the first of equal scores: the earliest evaluation to reach the best.
        return max(finished, key=lambda r: r["val_acc"]) if finished else None

    def summary(self) -> dict[str, Any]:
        best = self.best()
        total_train = sum(r["train_seconds"] for r in self.records)
        summary: dict[str, Any] = {
            "method": self.method,
            "budget": self.budget,
            "evaluations": len(self.records),
            "failed": sum(r["status"] == "failed" for r in self.records),
            "total_train_seconds": total_train,
            "wall_seconds": time.perf_counter() - self.started,
        }
        if best is not None:
            summary.update(
                best_val_acc=best["val_acc"],
                best_val_loss=best["val_loss"],
                best_genome=best["genome"],
                best_genome_hash=best["genome_hash"],
                best_run_id=best["run_id"],
                evaluations_to_best=best["index"] + 1,
                time_to_best_seconds=best["elapsed_seconds"],
                train_seconds_to_best=sum(r["train_seconds"] for r in self.records[: best["index"] + 1]),
            )
        return summary


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} layers]"  # the whole genome is in MLflow and the history file
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _evaluate_list(
    genomes: Sequence[dict],
    method: str,
    evaluator: Evaluator,
    stage_run: str | None,
    log: SearchLog,
) -> None:
    requests = [
        EvaluationRequest(genome, f"{method}-{i:03d}", stage_run, {"method": method, "index": i})
        for i, genome in enumerate(genomes)
    ]
    evaluator.evaluate(requests, on_result=log.add)


def make_space(config: SpaceConfig, image_shape: tuple[int, int, int]) -> SearchSpace | ArchitectureSpace:
    """The search space of ``space.kind``: hyperparameters, or whole architectures for these images."""
    if config.kind == "architecture":
        return ArchitectureSpace.from_config(config, image_shape)
    return SearchSpace.from_config(config)


def search_grid(config: StudyConfig, space, evaluator: Evaluator, tracker, stage_run, log) -> dict:
    if isinstance(space, ArchitectureSpace):
        genomes = architecture_grid_genomes(space, config.budget.evaluations)
    else:
        genomes = grid_genomes(space, config.budget.evaluations)
    if tracker is not None:
        tracker.log_params(stage_run, {"grid_points": len(genomes)})
    _evaluate_list(genomes, "grid", evaluator, stage_run, log)
    return {"grid_points": len(genomes)}


def search_random(config: StudyConfig, space, evaluator: Evaluator, tracker, stage_run, log) -> dict:
    if isinstance(space, ArchitectureSpace):
        genomes = architecture_random_genomes(space, config.budget.evaluations, config.seed)
    else:
        genomes = random_genomes(space, config.budget.evaluations, config.seed)
    _evaluate_list(genomes, "random", evaluator, stage_run, log)
    return {}


def search_ga(config: StudyConfig, space, evaluator: Evaluator, tracker, stage_run, log) -> dict:
    ga = GeneticSearch(
        space, config.ga, budget=config.budget.evaluations, seed=config.seed,
        phases=config.space.layers.phases, clock=log.elapsed,
    )  # fmt: skip
    generation_runs: dict[int, str | None] = {}

    def generation_run(number: int) -> str | None:
        if number not in generation_runs:
            generation_runs[number] = None
            reused = log.checkpoint.generation_runs.get(str(number)) if log.checkpoint else None
            if tracker is not None and reused is not None:
                tracker.resume_run(reused)
                generation_runs[number] = reused
            elif tracker is not None:
                generation_runs[number] = tracker.start_run(
                    f"generation-{number:02d}",
                    parent_id=stage_run,
                    params=_operator_params(config),
                    tags={"method": "ga", "generation": number},
                )
                if log.checkpoint is not None:
                    log.checkpoint.generation_runs[str(number)] = generation_runs[number]
                    log.checkpoint.save()
        return generation_runs[number]

    def evaluate(number: int, candidates: Sequence[Candidate]) -> list[tuple[float, str | None]]:
        parent_run = generation_run(number)
        requests = [
            EvaluationRequest(
                c.genome,
                f"ga-g{number:02d}-{c.index:02d}",
                parent_run,
                {
                    "method": "ga",
                    "generation": number,
                    "index": c.index,
                    "origin": c.origin,
                    "parent_hashes": ",".join(p.genome_hash for p in c.parents) if c.parents else "",
                    "parent_run_ids": ",".join(str(p.run_id) for p in c.parents) if c.parents else "",
                    **({"repaired": "; ".join(c.notes)} if c.notes else {}),
                },
                weight_parents=tuple(p.genome_hash for p in c.parents) if c.parents else (),
                freeze_conv=c.freeze_conv,
            )
            for c in candidates
        ]
        results = evaluator.evaluate(requests, on_result=lambda r: log.add(r, generation=number))
        return [(r.fitness, r.run_id) for r in results]

    def finish_generation(generation: Generation) -> None:
        run = generation_run(generation.number)
        if tracker is None or run is None:
            return
        summary = generation.summary()
        metrics = {k: summary[k] for k in ("best", "mean", "median", "worst") if summary[k] is not None}
        metrics |= {k: summary[k] for k in ("failed", "trained", "cache_hits", "diversity", "phase")}
        metrics |= {"rejected": len(generation.rejected)}
        if generation.mutation_rate is not None:
            metrics["mutation_rate"] = generation.mutation_rate
        tracker.log_metrics(run, metrics)
        tracker.log_metrics(stage_run, {"generation_best": metrics.get("best", 0.0),
                                        "generation_diversity": generation.diversity}, step=generation.number)  # fmt: skip
        tags = {"elite_hashes": ",".join(m.genome_hash for m in generation.members if m.origin == "elite")}
        if generation.rejected:
            tags["rejected"] = " | ".join(r.reason for r in generation.rejected)[:5000]
        tracker.set_tags(run, tags)
        tracker.end_run(run)

    outcome = ga.run(evaluate, on_generation=finish_generation)
    return {
        "generations": len(outcome.generations),
        "stop_reason": outcome.stop_reason,
        "phase_reasons": outcome.phase_reasons,
        "operators": _operator_params(config),
        "rejected": sum(len(g.rejected) for g in outcome.generations),
        "generation_history": [g.summary() for g in outcome.generations],
    }


def _operator_params(config: StudyConfig) -> dict[str, Any]:
    """The GA's operator choices and settings, flat (MLflow params of every generation run)."""
    ga = config.ga
    params: dict[str, Any] = {
        "population_size": ga.population_size, "elites": ga.elites, "survival.fraction": ga.survival.fraction,
        "survival.immigrants": ga.survival.immigrants, "weights": ga.weights, "space.kind": config.space.kind,
    }  # fmt: skip
    for role in ("selection", "crossover", "mutation"):
        spec = getattr(ga, role)
        params[role] = spec.name
        params |= {f"{role}.{k}": v for k, v in spec.settings.items()}
    params |= {f"termination.{k}": v for k, v in ga.termination.model_dump().items() if v is not None}
    return params


SEARCHES: dict[str, Callable[..., dict]] = {"ga": search_ga, "grid": search_grid, "random": search_random}


def stage_fingerprint(method: str, config: StudyConfig, data_summary: dict) -> str:
    """What a search's results depend on: its params, the prepared data, and the code."""
    sections = {"method": method, "seed": config.seed, "data": data_summary}
    for name in ("model", "space", "budget", "train") + (("ga",) if method == "ga" else ()):
        sections[name] = getattr(config, name).model_dump()
    return fingerprint(sections)


def run_search_stage(
    method: str, config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path = Path("checkpoints")
) -> dict[str, Any]:
    """Run one search method end to end; writes ``<method>_search.json`` (summary metrics) and
    ``<method>_search_history.json`` (every evaluation) under ``results_dir``. Resumes from
    ``checkpoint_dir/<method>_search.json`` when a killed run with the same fingerprint left one."""
    tracker = Tracker(config.mlflow.experiment)
    data = PreparedData.open(prepared_dir)
    space = make_space(config.space, data.image_shape)
    checkpoint, message = Checkpoint.open(
        checkpoint_dir / f"{method}_search.json", stage_fingerprint(method, config, data.summary)
    )
    print(f"[{method}] {message}", flush=True)
    weight_store = None
    if method == "ga" and config.ga.weights != "none":
        weights_dir = checkpoint_dir / f"{method}_weights"
        if not checkpoint.records and weights_dir.exists():
            shutil.rmtree(weights_dir)  # a fresh start: weights of another run's genomes must not be reused
        weight_store = WeightStore(weights_dir)
    evaluator = Evaluator(
        data, model_config=config.model, train_config=config.train, study_seed=config.seed, tracker=tracker,
        weights=config.ga.weights if method == "ga" else "none", weight_store=weight_store,
    )  # fmt: skip
    if checkpoint.stage_run_id is not None:
        stage_run = checkpoint.stage_run_id
        killed = tracker.reopen_run(stage_run, children_of=[stage_run, *checkpoint.generation_runs.values()])
        if killed:
            print(f"[{method}] marked {killed} run(s) left RUNNING by the killed stage as KILLED", flush=True)
    else:
        stage_run = tracker.start_run(
            f"{method}_search",
            params={"budget": config.budget.evaluations, "seed": config.seed, "dataset": data.summary["dataset"],
                    "train_size": data.summary["sizes"]["train"], "val_size": data.summary["sizes"]["val"]},
            tags={"method": method, "stage": f"{method}_search"},
        )  # fmt: skip
        checkpoint.stage_run_id = stage_run
        checkpoint.save()
    evaluator.preload(EvaluationResult.from_record(r) for r in checkpoint.records)
    log = SearchLog(method, config.budget.evaluations, checkpoint=checkpoint, resumed=list(checkpoint.records))
    try:
        with tqdm(total=config.budget.evaluations, desc=f"{method} search", unit="eval", disable=None) as progress:
            log.progress = progress
            extra = SEARCHES[method](config, space, evaluator, tracker, stage_run, log)
            log.progress = None
    except BaseException as exc:
        # Ctrl-C or SIGTERM (KeyboardInterrupt/SystemExit) is a kill, anything else a failure.
        tracker.end_run(stage_run, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    summary = log.summary() | {k: v for k, v in extra.items() if k != "generation_history"}
    history = {"evaluations": log.records, "generations": extra.get("generation_history", [])}
    write_json(results_dir / f"{method}_search_history.json", history)
    write_json(results_dir / f"{method}_search.json", summary)
    if "best_val_acc" not in summary:
        tracker.set_tags(stage_run, {"failure_reason": "every individual failed"})
        tracker.end_run(stage_run, "FAILED")
        raise SearchFailed(
            f"{method} search: all {summary['evaluations']} individuals failed (see failure_reason in MLflow); "
            "no champion can be chosen. Narrow the search space (e.g. space.genes.learning_rate.high)"
        )
    tracker.log_metrics(stage_run, {k: summary[k] for k in ("best_val_acc", "best_val_loss", "evaluations",
                                                             "failed", "total_train_seconds", "time_to_best_seconds")})  # fmt: skip
    tracker.set_tags(stage_run, {"best_run_id": summary["best_run_id"], "best_genome_hash": summary["best_genome_hash"]})
    tracker.end_run(stage_run)
    checkpoint.status = "complete"
    checkpoint.save()
    return summary

