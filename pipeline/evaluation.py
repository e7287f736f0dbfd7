"""What crosses the seam between a search strategy, the runner and an evaluator.

A strategy *proposes* genomes (``Proposal``); an evaluator trains each and returns an
``EvaluationRecord``; the runner completes the record (its place in the search, its MLflow run,
when it finished), appends it to the checkpoint and tells the strategy (``Scored``). The record is
the one type of an evaluated individual: in memory, in the checkpoint, in the history file.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from pipeline.space.dimensions import Genome, genome_hash, genome_seed


@dataclass(frozen=True)
class Resume:
    """How far to train and from where (a rung of multi-fidelity): to ``epochs`` (None: the genome's
    epochs gene), continuing the training state saved at ``resume_from`` (None: from scratch, or from
    the parents' weights), saving the state reached to ``save_to``. Paths on a file system every
    worker shares (this machine's, or a Ray cluster's shared storage)."""

    epochs: int | None = None
    resume_from: Path | None = None
    save_to: Path | None = None
    # Set when the proposal is one interval of a longer training (PBT): the epochs ``resume_from``
    # had trained. Its record then keeps only the epochs it trains itself, and an epoch budget is
    # charged those; None: the record holds the whole history (a rung stands for its candidate).
    start_epoch: int | None = None


@dataclass(frozen=True)
class Proposal:
    """A genome a strategy wants evaluated, with how its MLflow run is named and tagged: the one
    request every evaluator serves.

    ``parents`` are genome hashes, fitter first: with ``ga.weights`` the child starts from their
    trained weights. ``freeze_conv`` leading conv layers stay frozen (phased growth). ``resume``:
    train only to a rung, or on from a rung's saved state (None: the genome's epochs, from scratch).
    ``identity``: what besides the genome makes it a training of its own (PBT: a member's interval,
    whose genome may be the one it trained the interval before); the runner trains a genome once
    per identity.
    """

    genome: Genome
    name: str
    tags: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    freeze_conv: int = 0
    resume: Resume | None = None
    identity: str = ""

    @functools.cached_property
    def genome_hash(self) -> str:
        # Cached: the runner, the cache and the evaluator all ask (a lookup costs microseconds).
        return genome_hash(self.genome)

    @property
    def cache_key(self) -> str:
        """Equal for proposals that are one training: the genome's hash, and the identity if any."""
        return f"{self.genome_hash}@{self.identity}" if self.identity else self.genome_hash


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluated individual. An evaluator fills the training fields; the runner adds ``index``
    (its place among the search's trainings), ``group`` (the GA's generation), ``run_id`` and
    ``elapsed_seconds`` (on the search's own clock, which a resumed search continues)."""

    genome: Genome
    genome_hash: str
    seed: int
    status: str  # "finished" or "failed"
    val_score: float | None  # the task's validation metric: accuracy, or MAE (``maximize`` False)
    val_loss: float | None
    train_loss: float | None
    train_seconds: float
    epochs: list[dict[str, float]]
    failure: str | None = None
    init: str = "scratch"  # "scratch", "inherit" or "merge": where the initial weights came from
    transferred_fraction: float = 0.0  # share of the initial weights taken from parents
    index: int | None = None
    generation: int | None = None
    run_id: str | None = None
    elapsed_seconds: float | None = None
    maximize: bool = True  # the metric's direction: the fitness is ``val_score`` or its negation
    # Multi-fidelity: the rung its score comes from (0: the first; None: no fidelity), and whether
    # successive halving stopped it there before its full epochs.
    rung: int | None = None
    stopped_early: bool = False
    # The epoch ``epochs[0]`` is (0 but for one interval of a longer training: PBT's).
    first_epoch: int = 0

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.val_score is not None

    @property
    def fidelity_level(self) -> float:
        """How far its training went, for ranking: ``inf`` when it trained all its epochs (or early
        stopping ended it), else the rung successive halving stopped it at."""
        return float(self.rung) if self.stopped_early and self.rung is not None else math.inf

    def ranking_key(self) -> tuple[float, float]:
        """Sort key, higher is better: a member stopped at a lower rung ranks below every member that
        went further, then by fitness."""
        return (self.fidelity_level, self.fitness)

    @property
    def fitness(self) -> float:
        """The validation score, higher is better (an error is negated); a failed individual ranks
        below every finished one."""
        if not self.finished:
            return -math.inf
        return self.val_score if self.maximize else -self.val_score

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> EvaluationRecord:
        """The record of a checkpoint or history line; raises ``KeyError``/``TypeError`` when malformed."""
        known = {f.name for f in fields(cls)}
        if "val_acc" in stored and "val_score" not in stored:
            # Written before the regression task: the score was the accuracy.
            stored = {**stored, "val_score": stored["val_acc"]}
        return cls(**{k: v for k, v in stored.items() if k in known})

    @classmethod
    def failed(cls, genome: Genome, seed: int, reason: str, seconds: float, **initial: Any) -> EvaluationRecord:
        return cls(genome, genome_hash(genome), seed, "failed", None, None, None, seconds, [], reason, **initial)


@dataclass(frozen=True)
class Scored:
    """What a strategy is told of one proposal: its record, and whether it was trained for this
    proposal (``new``) or reused from an earlier evaluation of the same genome."""

    record: EvaluationRecord
    new: bool


StartCallback = Callable[[int], None]


class Evaluator(Protocol):
    """Trains proposals. Yields ``(position in proposals, record)`` as each finishes, in any order;
    the runner commits them in proposal order. Calls ``on_start(position)`` as each one starts (the
    runner opens its MLflow run then). Never touches MLflow or the checkpoint itself."""

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]: ...

    def close(self) -> None:
        """Release workers; the evaluator is not used again."""


def concurrency_of(evaluator: Any) -> int:
    """How many evaluations an evaluator trains at once (its ``concurrency``; 1 when it does not say)."""
    return max(1, int(getattr(evaluator, "concurrency", 1)))


def evaluate_in_order(
    proposals: Sequence[Proposal], on_start: StartCallback | None, evaluate_one: Callable[[Proposal], EvaluationRecord]
) -> Iterator[tuple[int, EvaluationRecord]]:
    """One proposal after another, in this process: the sequential evaluators' loop."""
    for position, proposal in enumerate(proposals):
        if on_start is not None:
            on_start(position)
        yield position, evaluate_one(proposal)


class FunctionEvaluator:
    """An evaluator without training: ``fitness(genome)`` is the validation score (``-inf`` or an
    exception: a failed individual; ``maximize=False``: an error, lower is better). For
    search-dynamics benchmarks and tests of the loop."""

    def __init__(self, fitness: Callable[[Genome], float], study_seed: int = 0, maximize: bool = True) -> None:
        self.fitness = fitness
        self.study_seed = study_seed
        self.maximize = maximize

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        return evaluate_in_order(proposals, on_start, self.score)

    def score(self, proposal: Proposal) -> EvaluationRecord:
        genome = proposal.genome
        seed = genome_seed(self.study_seed, genome)
        try:
            value = float(self.fitness(genome))
        except Exception as exc:  # noqa: BLE001 - the individual's failure, not the search's
            return EvaluationRecord.failed(genome, seed, f"{type(exc).__name__}: {exc}", 0.0)
        if not math.isfinite(value):
            return EvaluationRecord.failed(genome, seed, f"fitness {value}", 0.0)
        return EvaluationRecord(
            genome, genome_hash(genome), seed, "finished", value, None, None, 0.0, [], maximize=self.maximize
        )

    def close(self) -> None:
        pass
