"""The evaluator ``execution`` asks for: sequential here, worker processes here, or Ray tasks."""

from __future__ import annotations

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData
from pipeline.evaluation import Evaluator
from pipeline.training.evaluator import SequentialEvaluator, WorkerPoolEvaluator
from pipeline.training.ray_backend import RayEvaluator
from pipeline.training.weights import WeightStore


def make_evaluator(
    config: StudyConfig, data: PreparedData, weight_rule: str = "none", weight_store: WeightStore | None = None
) -> Evaluator:
    execution = config.execution
    shared = dict(
        space_kind=config.space.kind, model_config=config.model, train_config=config.train, study_seed=config.seed,
        weights=weight_rule, weight_store=weight_store, threads=execution.threads_per_evaluation,
    )  # fmt: skip
    if execution.backend == "ray":
        return RayEvaluator(data, ray_config=execution.ray, **shared)
    if execution.workers > 1:
        return WorkerPoolEvaluator(data, workers=execution.workers, **shared)
    return SequentialEvaluator(data, **shared)
