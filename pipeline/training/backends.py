"""The evaluator ``execution`` asks for: sequential here, worker processes here, or Ray tasks."""

from __future__ import annotations

from pipeline.config.sections import StudyConfig
from pipeline.data import PreparedData
from pipeline.evaluation import Evaluator
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext, WorkerPoolEvaluator
from pipeline.training.ray_backend import RayEvaluator
from pipeline.training.weights import WeightStore


def make_evaluator(
    config: StudyConfig, data: PreparedData, weight_rule: str = "none", weight_store: WeightStore | None = None
) -> Evaluator:
    execution = config.execution
    context = TrainingContext.for_study(config, data, weight_rule)
    if execution.backend == "ray":
        return RayEvaluator(data, context, weight_store, ray_config=execution.ray)
    if execution.workers > 1:
        return WorkerPoolEvaluator(data, context, weight_store, workers=execution.workers)
    return SequentialEvaluator(data, context, weight_store)
