"""Multi-fidelity: rungs scheduled over any evaluator (as Hyperband and ASHA do for random search,
DEHB for differential evolution). Every candidate of a batch trains to the first rung; the top 1/eta
of a rung go on to the next from their saved training state, up to their full epochs; the others
stop with the score of the rung they reached. Two schedules:

- ``synchronous`` (successive halving): a rung's candidates all train, then the rung is ranked;
  the records are the same whatever trains them (one process, workers, Ray, a population).
- ``asynchronous`` (ASHA, Li et al. 2018): whenever a worker is free, the best candidate of the
  highest rung that is in the top 1/eta of those that reached it goes on; else a new candidate
  starts. No worker waits for a rung's stragglers; with more than one worker the promotions depend
  on which training finishes first, so they are not reproducible run to run (with one they are).

torch-free: training is the evaluator's (a ``Proposal`` with a ``Resume``: to a rung's epochs, from
the previous rung's saved state, saving its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.evaluation import EvaluationRecord


@dataclass(frozen=True)
class RungSchedule:
    """The ``fidelity`` section, read once (``RungSchedule.of``): the rungs, eta and whether promotion
    is asynchronous. Everything that plans, costs or schedules rungs asks this object."""

    rungs: tuple[float, ...]
    eta: int
    asynchronous: bool

    @classmethod
    def of(cls, fidelity: Any) -> RungSchedule | None:
        """The schedule of a ``FidelityConfig``; None when multi-fidelity is off (``rungs: null``)."""
        if fidelity.rungs is None:
            return None
        return cls(tuple(fidelity.rungs), fidelity.eta, fidelity.mode == "asynchronous")

    def plan(self, epochs: int) -> tuple[int, ...]:
        """A genome of ``epochs`` epochs: the epochs of each of its rungs (``rung_epochs``)."""
        return rung_epochs(self.rungs, epochs)

    def expected_epochs(self, epochs: int) -> float:
        """What such a genome costs on average (``expected_epochs``): what an epoch budget admits it for."""
        return expected_epochs(self.rungs, epochs, self.eta)


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


# One rung of one candidate to train: (its position in the batch, the rung, that rung's epochs).
RungJob = tuple[int, int, int]
# train_rung(jobs) -> each job's record, by position: one rung of several candidates, trained at once.
TrainRung = Callable[[list[RungJob]], Mapping[int, EvaluationRecord]]


def can_go_on(record: EvaluationRecord, plan: tuple[int, ...], rung: int) -> bool:
    """Whether a candidate that reached ``rung`` may be promoted: it has a further rung, finished, and
    early stopping did not end it before the rung's epochs."""
    return rung + 1 < len(plan) and record.finished and len(record.epochs) >= plan[rung]


def successive_halving(plans: Sequence[tuple[int, ...]], eta: int, train_rung: TrainRung) -> list[EvaluationRecord]:
    """Train candidates rung by rung, synchronously; ``plans[i]`` is candidate i's ``rung_epochs``.

    At each rung every candidate still in trains to its rung's epochs, all in one ``train_rung``
    call; of those that can go on (``can_go_on``), the top ``promoted_count`` of the rung's candidates
    by fitness go on (ties: the earlier position). Returns one record per candidate: the last rung it
    trained, with ``rung`` set and ``stopped_early`` when it had epochs left.
    """
    records: dict[int, EvaluationRecord] = {}
    reached: dict[int, int] = {}
    alive = list(range(len(plans)))
    rung = 0
    while alive:
        trained = train_rung([(position, rung, plans[position][rung]) for position in alive])
        for position in alive:
            records[position] = trained[position]
            reached[position] = rung
        going_on = [p for p in alive if can_go_on(records[p], plans[p], rung)]
        ranked = sorted(going_on, key=lambda p: -records[p].fitness)  # stable: ties keep position order
        promoted = set(ranked[: promoted_count(len(alive), eta)])
        alive = [p for p in alive if p in promoted]
        rung += 1
    return final_records(plans, records, reached)


def final_records(
    plans: Sequence[tuple[int, ...]], records: Mapping[int, EvaluationRecord], reached: Mapping[int, int]
) -> list[EvaluationRecord]:
    """Each candidate's record of the last rung it reached, with ``rung`` and ``stopped_early`` set (a
    candidate that early stopping ended before its rung's epochs is complete, not stopped)."""
    finished = []
    for position, plan in enumerate(plans):
        record, rung = records[position], reached[position]
        stopped = record.finished and len(record.epochs) < plan[-1] and len(record.epochs) >= plan[rung]
        finished.append(replace(record, rung=rung, stopped_early=stopped))
    return finished


class AsynchronousHalving:
    """ASHA's bookkeeping for one batch of candidates (torch-free, no clock: the caller says when a
    job ends). ``next_job`` is asked whenever a worker is free:

    - from the highest rung down, a candidate that reached that rung, can go on (``can_go_on``), has
      not been promoted from it, and is among the top ``floor(n / eta)`` of the ``n`` candidates that
      have reported there (by fitness; ties: the earlier position) is promoted to the next rung;
    - else the next candidate not yet started trains its first rung;
    - else, once nothing is running (the batch has nowhere else to go), a rung's top
      ``promoted_count(n, eta)`` (at least one, as successive halving) may go on: a finite batch ends
      as successive halving's does, with at least one candidate at its full epochs.

    ``promotions`` lists ``(position, from rung, candidates reported at that rung)`` in order.
    """

    def __init__(self, plans: Sequence[tuple[int, ...]], eta: int) -> None:
        self.plans, self.eta = list(plans), eta
        depth = max((len(plan) for plan in plans), default=0)
        self.reported: list[dict[int, EvaluationRecord]] = [{} for _ in range(depth)]
        self.promoted: list[set[int]] = [set() for _ in range(depth)]
        self.promotions: list[tuple[int, int, int]] = []
        self.running: set[int] = set()
        self.started = 0

    def next_job(self) -> RungJob | None:
        """The job a free worker takes now, or None: wait for a report, or, with nothing running, the
        batch is done."""
        promotion = self._promotion(draining=False)
        if promotion is not None:
            return promotion
        if self.started < len(self.plans):
            self.started += 1
            return self._start(self.started - 1, 0)
        return self._promotion(draining=True) if not self.running else None

    def report(self, position: int, rung: int, record: EvaluationRecord) -> None:
        self.running.discard(position)
        self.reported[rung][position] = record

    def records(self) -> list[EvaluationRecord]:
        """Each candidate's record of the last rung it reached (``final_records``)."""
        reached = {
            p: max(r for r in range(len(self.reported)) if p in self.reported[r]) for p in range(len(self.plans))
        }
        return final_records(self.plans, {p: self.reported[r][p] for p, r in reached.items()}, reached)

    def _promotion(self, draining: bool) -> RungJob | None:
        """The highest rung's promotable candidate, started on its next rung; None when there is none."""
        for rung in reversed(range(len(self.reported) - 1)):
            position = self._promotable(rung, draining)
            if position is not None:
                return self._start(position, rung + 1)
        return None

    def _promotable(self, rung: int, draining: bool) -> int | None:
        reported = self.reported[rung]
        top = promoted_count(len(reported), self.eta) if draining else len(reported) // self.eta
        ranked = sorted(reported, key=lambda p: (-reported[p].fitness, p))[:top]
        for position in ranked:
            if position not in self.promoted[rung] and can_go_on(reported[position], self.plans[position], rung):
                return position
        return None

    def _start(self, position: int, rung: int) -> RungJob:
        if rung > 0:
            self.promoted[rung - 1].add(position)
            self.promotions.append((position, rung - 1, len(self.reported[rung - 1])))
        self.running.add(position)
        return position, rung, self.plans[position][rung]


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
