"""The evaluator ``execution`` asks for: sequential here, a population at once here, worker processes
here, or Ray tasks."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData
from pipeline.evaluation import Evaluator
from pipeline.search.fidelity import RungSchedule
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext, WorkerPoolEvaluator
from pipeline.training.fidelity import RungScheduledEvaluator
from pipeline.training.ray_backend import RayEvaluator
from pipeline.training.weights import WeightStore


def uses_population(config: StudyConfig, weight_rule: str) -> bool:
    """Whether the study's searches train populations at once: asked for, or ``auto`` where it pays
    (a GPU: on a CPU a population ran 0.4-1.0x the same members one after another; see
    benchmarks/RESULTS.md). Never with weight reuse, worker processes, Ray or asynchronous rungs (ASHA
    hands out one candidate at a time)."""
    execution = config.execution
    if execution.evaluator == "sequential" or weight_rule != "none":
        return False
    schedule = RungSchedule.of(config.fidelity)
    if schedule is not None and schedule.asynchronous:
        return False
    if execution.backend != "local" or execution.workers > 1:
        return False
    return execution.evaluator == "population" or torch.cuda.is_available()


def make_evaluator(
    config: StudyConfig,
    data: PreparedData,
    weight_rule: str = "none",
    weight_store: WeightStore | None = None,
    fidelity_state: tuple[Path, str] | None = None,
) -> Evaluator:
    """``fidelity_state``: where multi-fidelity keeps each rung's training state, and the
    fingerprint of what they depend on (``fidelity.rungs`` set): the rungs are then scheduled over
    the evaluator ``execution`` asks for."""
    if not config.fidelity.enabled:
        return _training_evaluator(config, data, weight_rule, weight_store)
    if fidelity_state is None:
        raise ValueError("fidelity.rungs is set: make_evaluator needs fidelity_state (folder, fingerprint)")
    folder, fingerprint = fidelity_state
    inner = _training_evaluator(config, data, weight_rule, weight_store)
    return RungScheduledEvaluator(inner, config.fidelity, folder, fingerprint)


def _training_evaluator(
    config: StudyConfig, data: PreparedData, weight_rule: str, weight_store: WeightStore | None
) -> Evaluator:
    execution = config.execution
    context = TrainingContext.for_study(config, data, weight_rule)
    if execution.backend == "ray":
        return RayEvaluator(data, context, weight_store, ray_config=execution.ray)
    if execution.workers > 1:
        return WorkerPoolEvaluator(data, context, weight_store, workers=execution.workers)
    if uses_population(config, weight_rule):
        from pipeline.training.population import PopulationEvaluator  # Lightning: only when it will train

        return PopulationEvaluator(data, context, max_group_size=execution.max_group_size)
    return SequentialEvaluator(data, context, weight_store)
