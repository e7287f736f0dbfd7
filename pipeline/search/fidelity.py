"""Multi-fidelity by successive halving (as Hyperband and ASHA do for random search, DEHB for
differential evolution): every candidate of a batch trains to the first rung, the top 1/eta of
each rung continue to the next from their saved training state, up to their full epochs; the
others stop with the score of the rung they reached.

torch-free: training to a rung is a callback (``pipeline.training.fidelity`` trains and resumes).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from pipeline.evaluation import EvaluationRecord

# train_to(position, rung, epochs) -> the record of that candidate trained to ``epochs`` epochs
TrainTo = Callable[[int, int, int], EvaluationRecord]


def rung_epochs(rungs: Sequence[float], epochs: int) -> tuple[int, ...]:
    """The epoch counts at which a genome of ``epochs`` epochs is scored, strictly increasing and
    ending at ``epochs``. Whole-number rungs are epochs; fractions (up to 1) are shares of the
    genome's epochs, rounded up. Rungs at or past its epochs collapse into its last.

    >>> rung_epochs([1, 3, 9], 5), rung_epochs([1, 3, 9], 1), rung_epochs([0.25, 0.5], 8)
    ((1, 3, 5), (1,), (2, 4, 8))
    """
    whole = all(float(r).is_integer() for r in rungs)
    points = [int(r) if whole else max(1, math.ceil(r * epochs)) for r in rungs]
    plan = sorted({p for p in points if p < epochs} | {epochs})
    return tuple(plan)


def promoted_count(candidates: int, eta: int) -> int:
    """How many of a rung's ``candidates`` go on: the top 1/eta, at least one."""
    return max(1, candidates // eta)


def expected_epochs(rungs: Sequence[float], epochs: int, eta: int) -> float:
    """Epochs one candidate costs on average under successive halving: all train to the first rung,
    1/eta of them on to the second, 1/eta^2 to the third... (what an epoch budget admits it for)."""
    plan = rung_epochs(rungs, epochs)
    steps = np.diff((0, *plan))
    return float(sum(step / eta**level for level, step in enumerate(steps)))


def successive_halving(plans: Sequence[tuple[int, ...]], eta: int, train_to: TrainTo) -> list[EvaluationRecord]:
    """Train candidates rung by rung; ``plans[i]`` is candidate i's ``rung_epochs``.

    At each rung every candidate still in trains to its rung's epochs (``train_to``), in position
    order; of those that have further rungs and finished, the top ``promoted_count`` of the rung's
    candidates by fitness go on (ties: the earlier position). Returns one record per candidate: the
    last rung it trained, with ``rung`` set and ``stopped_early`` when it had epochs left. A candidate
    that early stopping ended before its rung's epochs is complete.
    """
    records: dict[int, EvaluationRecord] = {}
    reached: dict[int, int] = {}
    alive = list(range(len(plans)))
    rung = 0
    while alive:
        for position in alive:
            records[position] = train_to(position, rung, plans[position][rung])
            reached[position] = rung
        going_on = [
            p for p in alive
            if rung + 1 < len(plans[p]) and records[p].finished and len(records[p].epochs) >= plans[p][rung]
        ]  # fmt: skip
        ranked = sorted(going_on, key=lambda p: -records[p].fitness)  # stable: ties keep position order
        promoted = set(ranked[: promoted_count(len(alive), eta)])
        alive = [p for p in alive if p in promoted]
        rung += 1
    finished = []
    for position, plan in enumerate(plans):
        record = records[position]
        stopped = record.finished and len(record.epochs) < plan[-1] and len(record.epochs) >= plan[reached[position]]
        finished.append(replace(record, rung=reached[position], stopped_early=stopped))
    return finished


def rung_ranked_fitness(fitness: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fitness shifted so that a member stopped at a lower rung ranks below every member that went
    further (``levels``: ``EvaluationRecord.fidelity_level``, ``inf`` for a full training), while
    the order within a level, and differences of fitness within it, stay. Failed (``-inf``) stay.

    >>> rung_ranked_fitness(np.array([0.9, 0.5, 0.6]), np.array([0, np.inf, np.inf])).round(2).tolist()
    [-0.5, 0.5, 0.6]
    """
    fitness = np.asarray(fitness, dtype=float)
    finite = np.isfinite(fitness)
    distinct = np.unique(levels[finite])
    if distinct.size <= 1:
        return fitness.copy()
    span = float(fitness[finite].max() - fitness[finite].min()) + 1.0
    below = np.searchsorted(distinct, levels, side="left")  # how many levels lie under each member's
    shifted = fitness - span * (distinct.size - 1 - below)
    return np.where(finite, shifted, fitness)
