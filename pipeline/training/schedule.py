"""Replaying a training schedule (a PBT member's lineage, ``pipeline.search.pbt.schedule_of``) from
scratch, as Ray Tune's ``PopulationBasedTrainingReplay`` does: train with the first step's genes to its
epoch, then on from that state with the next step's genes to its epoch, and so on. With the search's
data it retrains the member bit-equal on one CPU when the search trained one member at a time (each
step is the fit the search ran); the population evaluator's fused fits draw dropout and input noise
for the group, so a replay of its members agrees to float tolerance only."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.data import TensorSplit
from pipeline.space import genome_seed
from pipeline.task import CLASSIFICATION, Task
from pipeline.training.models import NetworkBuilder

if TYPE_CHECKING:
    from pipeline.config.sections import TrainConfig
    from pipeline.training.fit import FitOutcome


def replay_schedule(
    schedule: Sequence[dict[str, Any]],
    *,
    study_seed: int,
    build_network: NetworkBuilder,
    train_split: TensorSplit,
    val_split: TensorSplit,
    train_config: TrainConfig,
    task: Task = CLASSIFICATION,
) -> FitOutcome:
    """The last step's fit, after every step before it (``{"epochs": E, "genome": {...}}``, epochs
    increasing); its module's ``epoch_metrics`` hold the whole schedule's epochs. Seconds: all steps'."""
    if not schedule:
        raise ValueError("an empty schedule has nothing to replay")
    ends = [int(step["epochs"]) for step in schedule]
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(f"a schedule's steps must end at increasing epochs, got {ends}")
    from pipeline.training.fit import fit_genome  # Lightning, at the first replay

    seconds, previous = 0.0, None
    with tempfile.TemporaryDirectory(prefix="evohpo-replay-") as folder:
        for index, step in enumerate(schedule):
            genome = step["genome"]
            last = index == len(schedule) - 1
            state = None if last else Path(folder) / f"step-{index}.ckpt"
            outcome = fit_genome(
                genome, seed=genome_seed(study_seed, genome), build_network=build_network, train_split=train_split,
                val_split=val_split, train_config=train_config, epochs=int(step["epochs"]), task=task,
                resume_from=previous, save_to=state,
            )  # fmt: skip
            seconds += outcome.seconds
            previous = state
    outcome.seconds = seconds
    return outcome
