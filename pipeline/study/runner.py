"""The one loop that drives any search strategy: ask, plan, train, record, tell.

It owns what every method shares: the duplicate-genome cache (a genome is trained once per
search), the budget (trainings counted here only), the checkpoint (each record appended before its
MLflow run is finished), replay of a killed search's records instead of training, tracking and
progress. The evaluator only trains; the strategy only proposes. torch-free: the evaluator is
handed in.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

from pipeline.errors import CheckpointError
from pipeline.evaluation import EvaluationRecord, Evaluator, Proposal, Scored
from pipeline.search.protocol import Batch, Strategy
from pipeline.study.checkpoint import Checkpoint
from pipeline.tracking.observer import SearchTracking

TRAIN, CACHED, DROPPED = "train", "cached", "dropped"


class ResumeDiverged(CheckpointError):
    """A resumed search asked for other genomes than the checkpoint recorded: the code or the
    platform is not deterministic, and the checkpoint cannot be continued."""


def plan_batch(
    batch: Batch,
    known: Collection[str],
    budget_left: int,
    epochs_left: float = math.inf,
    epoch_cost: Callable[[Proposal], float] | None = None,
) -> list[str]:
    """What to do with each proposal: ``train`` a genome not seen yet while the budget (and the
    batch's own ``max_trainings``) lasts; ``cached`` for one evaluated before, or earlier in this
    batch; ``dropped`` past the budget. With an epoch budget, a proposal is trained only while its
    ``epoch_cost`` fits in ``epochs_left`` (and every later new one is dropped)."""
    limit = budget_left if batch.max_trainings is None else min(budget_left, batch.max_trainings)
    planned, plan, trainings, spent = set(known), [], 0, 0.0
    for proposal in batch.proposals:
        hash_ = proposal.cache_key
        cost = epoch_cost(proposal) if epoch_cost is not None else 0.0
        if hash_ in planned:
            plan.append(CACHED)
        elif trainings < limit and spent + cost <= epochs_left and DROPPED not in plan:
            plan.append(TRAIN)
            planned.add(hash_)
            trainings += 1
            spent += cost
        else:
            plan.append(DROPPED)
    return plan


def genome_epochs(proposal: Proposal) -> float:
    """A proposal's epochs when trained in full: what it costs an epoch budget without fidelity."""
    return float(proposal.genome["epochs"])


@dataclass
class SearchRunner:
    """Runs ``strategy`` to its end with ``evaluator``, at most ``budget`` trainings.

    ``checkpoint``: where each finished evaluation is appended, and the records of a killed run
    to replay. ``tracking``: MLflow runs under ``stage_run``. ``on_record(record, replayed)``:
    progress, after each record is committed. ``epoch_budget``: at most this many training epochs
    (``budget.epochs``), a proposal admitted while its ``epoch_cost`` fits in what is left (with
    multi-fidelity its expected cost: a batch's promotions may end a few epochs past the budget).
    """

    strategy: Strategy
    evaluator: Evaluator
    budget: int
    checkpoint: Checkpoint | None = None
    tracking: SearchTracking | None = None
    stage_run: str | None = None
    on_record: Callable[[EvaluationRecord, bool], None] | None = None
    records: list[EvaluationRecord] = field(default_factory=list)  # every training of this search, in order
    epoch_budget: int | None = None
    epoch_cost: Callable[[Proposal], float] = genome_epochs
    stop_reason: str = ""  # why the runner ended the search itself (the epoch budget), else empty

    def __post_init__(self) -> None:
        self._replay = list(self.checkpoint.records) if self.checkpoint is not None else []
        self._unfinished: EvaluationRecord | None = None
        self._known: dict[str, EvaluationRecord] = {}
        # The search's own clock: a resumed search continues the killed one's timeline.
        last = self._replay[-1].elapsed_seconds if self._replay else None
        self._started = time.perf_counter() - (last or 0.0)

    def elapsed(self) -> float:
        """Seconds on the search's own clock (a resumed search continues the killed one's)."""
        return time.perf_counter() - self._started

    def epochs_trained(self) -> int:
        return sum(len(r.epochs) for r in self.records)

    def run(self) -> list[EvaluationRecord]:
        while (batch := self.strategy.ask()) is not None:
            if self.epoch_budget is None:
                epochs_left, cost = math.inf, None
            else:
                epochs_left, cost = self.epoch_budget - self.epochs_trained(), self.epoch_cost
            plan = plan_batch(batch, self._known.keys(), self.budget - len(self.records), epochs_left, cost)
            group_run = self._group_run(batch)
            to_train = [p for p, action in zip(batch.proposals, plan) if action == TRAIN]
            try:
                self._train(to_train, batch, group_run)
            except BaseException:
                if self.tracking is not None and batch.group is not None and group_run is not None:
                    self.tracking.kill_runs([group_run])  # the generation stopped with the stage
                raise
            scored = [
                None if action == DROPPED else Scored(self._known[p.cache_key], new=action == TRAIN)
                for p, action in zip(batch.proposals, plan)
            ]
            report = self.strategy.tell(scored)
            if self.tracking is not None and batch.group is not None and group_run is not None:
                self.tracking.finish_group(group_run, batch.group, report, self.stage_run)
            if self.epoch_budget is not None and self._epochs_spent(batch, plan, epochs_left):
                trained = self.epochs_trained()
                self.stop_reason = f"budget of {self.epoch_budget} training epochs spent ({trained} trained)"
                break
        return self.records

    def _epochs_spent(self, batch: Batch, plan: Sequence[str], epochs_left: float) -> bool:
        """Whether the epoch budget ended the search: none left, or a new genome did not fit in it."""
        if self.epochs_trained() >= (self.epoch_budget or 0):
            return True
        admitted = sum(self.epoch_cost(p) for p, a in zip(batch.proposals, plan) if a == TRAIN)
        first_dropped = next((p for p, a in zip(batch.proposals, plan) if a == DROPPED), None)
        return first_dropped is not None and admitted + self.epoch_cost(first_dropped) > epochs_left

    def _group_run(self, batch: Batch) -> str | None:
        if self.tracking is None or batch.group is None:
            return self.stage_run
        number = batch.group.number
        reused = self.checkpoint.group_runs.get(number) if self.checkpoint is not None else None
        if reused is not None:
            self.tracking.resume_group(reused)
            return reused
        run_id = self.tracking.start_group(batch.group, self.stage_run)
        if self.checkpoint is not None:
            self.checkpoint.set_group_run(number, run_id)
        return run_id

    def _train(self, proposals: Sequence[Proposal], batch: Batch, group_run: str | None) -> None:
        """Replay what the checkpoint holds, train the rest; commit records in proposal order."""
        replayed = self._replay[len(self.records) : len(self.records) + len(proposals)]
        for proposal, record in zip(proposals, replayed):
            if record.genome_hash != proposal.genome_hash:
                where = self.checkpoint.path if self.checkpoint is not None else "the checkpoint"
                raise ResumeDiverged(
                    f"resume diverged at evaluation {len(self.records)}: {where} has {record.genome_hash}, "
                    f"the search asked for {proposal.genome_hash}; delete {where} to start afresh"
                )
            self._commit(record, proposal.cache_key, replayed=True)
        fresh = list(proposals[len(replayed) :])
        if not fresh:
            return
        run_ids: dict[int, str | None] = {}

        def started(position: int) -> None:
            run_ids[position] = None
            if self.tracking is not None and group_run is not None:
                run_ids[position] = self.tracking.start_individual(fresh[position], group_run)

        finished: dict[int, EvaluationRecord] = {}
        committed = 0
        generation = batch.group.number if batch.group is not None else None
        try:
            for position, record in self.evaluator.evaluate(fresh, on_start=started):
                finished[position] = record
                while committed in finished:  # results may arrive in any order; commit in proposal order
                    record = dataclasses.replace(
                        finished.pop(committed), index=len(self.records), generation=generation,
                        run_id=run_ids.get(committed), elapsed_seconds=self.elapsed(),
                    )  # fmt: skip
                    self._commit(record, fresh[committed].cache_key, replayed=False)
                    committed += 1
        except BaseException:
            # Killed (Ctrl-C, SIGTERM) or broken: a run whose record is written is closed from it;
            # started runs without a record did not finish, and a resume retrains them.
            if self.tracking is not None:
                written = self._unfinished.run_id if self._unfinished is not None else None
                if self._unfinished is not None:
                    self.tracking.finish_individual(self._unfinished)
                self.tracking.kill_runs(
                    [r for p, r in run_ids.items() if p >= committed and r is not None and r != written]
                )
            raise
        finally:
            self._unfinished = None

    def _commit(self, record: EvaluationRecord, key: str, *, replayed: bool) -> None:
        if not replayed:
            if self.checkpoint is not None:
                self.checkpoint.append(record)  # the record first: a kill after it loses nothing
            if self.tracking is not None:
                self._unfinished = record  # written, its run not yet closed
                self.tracking.finish_individual(record)
                self._unfinished = None
        self.records.append(record)
        self._known[key] = record
        if self.on_record is not None:
            self.on_record(record, replayed)


def run_strategy(strategy: Strategy, evaluator: Evaluator, budget: int) -> list[EvaluationRecord]:
    """Drive ``strategy`` with ``evaluator`` in memory: no checkpoint, tracking or progress."""
    return SearchRunner(strategy, evaluator, budget).run()
