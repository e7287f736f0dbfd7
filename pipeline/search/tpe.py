"""Bayesian optimisation: Optuna's ``TPESampler`` driven through Optuna's own ask/tell interface.

Each ``ask`` asks the Optuna study for ``batch_size`` trials and proposes their genomes; each
``tell`` tells the study what they scored (a duplicate scored from the runner's cache too: TPE
learns every result). An architecture is suggested define-by-run: the optimiser genes, the two
layer counts, then one ``conv_<i>_<key>`` / ``fc_<j>_<key>`` slot per layer (as random search
names them), so TPE models a conditional space (``group=True``).

Deterministic given the seed and what it is told: the sampler is seeded, and Optuna's in-memory
study sees the same trials in the same order, so a resumed search replays to the same state.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

import optuna
from optuna.trial import Trial, TrialState

from pipeline.evaluation import EvaluationRecord, Proposal, Scored
from pipeline.search.protocol import Batch, GroupReport, Method
from pipeline.space import (
    ArchitectureSpace, ChoiceDimension, Dimension, FloatDimension, Genome, InfeasibleGenome, IntDimension, SearchSpace,
)  # fmt: skip
from pipeline.space.architecture import CONV_COUNT, FC_COUNT, assemble_genome, layer_count_view

if TYPE_CHECKING:
    from pipeline.config.sections import StudyConfig

# Trials in a row whose genome repair rejects (each told FAIL) before the search gives up.
MAX_REJECTIONS_PER_PROPOSAL = 100
# Duplicates are scored from the cache without using the budget: in a space with fewer genomes
# than the budget TPE would propose them forever, so stop after this many proposals per evaluation.
MAX_PROPOSALS_PER_EVALUATION = 20


# ----------------------------------------------------------------------------------------------------------------------
# Suggesting a genome from a trial


def suggest_dimension(trial: Trial, dim: Dimension, name: str | None = None) -> Any:
    """The trial's value for ``dim`` (under ``name``, by default the dimension's own)."""
    name = name or dim.name
    if isinstance(dim, FloatDimension):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, IntDimension):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, ChoiceDimension):
        # Suggest the choice's index: Optuna stores a choice by ``choices.index(value)``, so of
        # choices that compare equal (True and 1, 1 and 1.0) it records and models only the first.
        return dim.values[trial.suggest_categorical(name, list(range(len(dim.values))))]
    raise TypeError(f"no Optuna distribution for {type(dim).__name__} {dim.name!r}")


def suggest_hyperparameters(trial: Trial, space: SearchSpace) -> Genome:
    """A genome of a fixed-length space: one suggestion per dimension, in the space's order."""
    return space.canonical({dim.name: suggest_dimension(trial, dim) for dim in space.dimensions})


def suggest_layers(trial: Trial, kind: str, layer_space: SearchSpace, count: int) -> list[dict[str, Any]]:
    """``count`` layer genes, slot ``i``'s genes suggested as ``<kind>_<i>_<key>``: a slot's
    parameters exist only in trials that have that layer (the conditional part of the space)."""
    return [
        {dim.name: suggest_dimension(trial, dim, f"{kind}_{i}_{dim.name}") for dim in layer_space.dimensions}
        for i in range(count)
    ]


def suggest_architecture(trial: Trial, space: ArchitectureSpace) -> Genome:
    """A repaired genome of an architecture space; raises ``InfeasibleGenome`` when repair rejects it."""
    point = {dim.name: suggest_dimension(trial, dim) for dim in layer_count_view(space).dimensions}
    conv = suggest_layers(trial, "conv", space.conv, int(point[CONV_COUNT]))
    fc = suggest_layers(trial, "fc", space.fc, int(point[FC_COUNT]))
    return space.repair(assemble_genome(space, point, conv, fc))[0]


SUGGESTERS_BY_KIND: dict[str, Callable[[Trial, Any], Genome]] = {
    "hyperparameters": suggest_hyperparameters,
    "architecture": suggest_architecture,
}


# ----------------------------------------------------------------------------------------------------------------------
# The Optuna study


def make_sampler(seed: int, startup_trials: int, batch_size: int, conditional: bool) -> optuna.samplers.TPESampler:
    """A seeded multivariate TPE sampler; ``group`` decomposes a conditional space; the constant
    liar (a running trial counts as a bad result) only when trials are asked in batches, so the
    batch's proposals differ. Optuna 5 defaults ``constant_liar`` to True: it is set explicitly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # ``group`` is experimental
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup_trials,
            multivariate=True,
            group=conditional,
            constant_liar=batch_size > 1,
        )


def make_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """An in-memory study that maximises (fitness is higher-is-better)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Trial n finished" line per tell
    return optuna.create_study(direction="maximize", sampler=sampler)


def tell_record(study: optuna.Study, trial: Trial, record: EvaluationRecord) -> None:
    """A finished record's fitness; PRUNED at its rung's score when multi-fidelity stopped it early
    (TPE models pruned trials by their last intermediate value); FAIL for a failed one, or a
    non-finite fitness (which Optuna would fail with a logged warning)."""
    if record.finished and math.isfinite(record.fitness) and record.stopped_early:
        trial.report(record.fitness, step=len(record.epochs))
        study.tell(trial, state=TrialState.PRUNED)
    elif record.finished and math.isfinite(record.fitness):
        study.tell(trial, record.fitness)
    else:
        study.tell(trial, state=TrialState.FAIL)


# ----------------------------------------------------------------------------------------------------------------------
# The strategy: any Optuna sampler through ask/tell (TPE here; CMA-ES in ``cmaes``)


class OptunaSearch:
    """An Optuna sampler as a strategy: ``batch_size`` trials per batch, each proposed as the genome
    its suggestions make, until ``budget`` trainings are used. A sampler that models only some
    distributions (CMA-ES: floats and integers) samples the rest with its independent sampler."""

    method = ""

    def __init__(
        self,
        space: SearchSpace | ArchitectureSpace,
        budget: int,
        seed: int,
        sampler: optuna.samplers.BaseSampler,
        batch_size: int = 1,
    ) -> None:
        if budget < 1 or batch_size < 1:
            raise ValueError(f"an Optuna search needs budget >= 1 and batch_size >= 1; got {budget}, {batch_size}")
        self.space, self.budget, self.seed, self.batch_size = space, budget, seed, batch_size
        self._suggest = SUGGESTERS_BY_KIND[space.kind]
        self.study = make_study(sampler)
        self.stop_reason = ""
        self._pending: tuple[Batch, list[Trial]] | None = None
        self._proposed = 0  # proposals made: the next proposal's index
        self._trainings = 0  # proposals trained for this search (not scored from the cache)

    def ask(self) -> Batch | None:
        if self._pending is not None:
            return self._pending[0]  # asked again before tell: the same batch
        if self.stop_reason:
            return None
        size = min(self.batch_size, self.budget - self._trainings)  # no trials past the budget
        if size <= 0:
            self.stop_reason = self._budget_used()
            return None
        if self._proposed >= MAX_PROPOSALS_PER_EVALUATION * self.budget:
            self.stop_reason = (
                f"{self._proposed} proposals ({MAX_PROPOSALS_PER_EVALUATION} x the budget) but only "
                f"{self._trainings} new genomes: the space may hold fewer genomes than the budget"
            )
            return None
        trials, proposals = [], []
        for _ in range(size):
            asked = self._ask_trainable()
            if asked is None:
                self.stop_reason = f"no trainable genome in {MAX_REJECTIONS_PER_PROPOSAL} trials in a row"
                return None
            trial, genome = asked
            trials.append(trial)
            proposals.append(self._proposal(genome, trial))
        self._pending = (Batch(tuple(proposals)), trials)
        return self._pending[0]

    def _ask_trainable(self) -> tuple[Trial, Genome] | None:
        """A new trial and its genome; a trial whose genome repair rejects is told FAIL (TPE models
        only completed trials: it is set aside) and another is asked, at most
        ``MAX_REJECTIONS_PER_PROPOSAL`` times."""
        for _ in range(MAX_REJECTIONS_PER_PROPOSAL):
            trial = self.study.ask()
            try:
                return trial, self._suggest(trial, self.space)
            except InfeasibleGenome:
                self.study.tell(trial, state=TrialState.FAIL)
        return None

    def _proposal(self, genome: Genome, trial: Trial) -> Proposal:
        index = self._proposed
        self._proposed += 1
        tags = {"method": self.method, "index": index, "trial": trial.number}
        return Proposal(genome, f"{self.method}-{index:03d}", tags)

    def tell(self, scored: Sequence[Scored | None]) -> GroupReport | None:
        if self._pending is None:
            raise RuntimeError("tell without a batch asked: each trial is told once")
        batch, trials = self._pending
        if len(scored) != len(trials):
            raise ValueError(f"told {len(scored)} scores for a batch of {len(trials)} proposals")
        self._pending = None
        budget_ended = False
        for trial, score in zip(trials, scored):
            if score is None:
                # Past the budget: never trained. The search is over, so the trial stays unfinished.
                budget_ended = True
                continue
            self._trainings += int(score.new)
            tell_record(self.study, trial, score.record)
        if budget_ended or self._trainings >= self.budget:
            self.stop_reason = self._budget_used()
        return None

    def _budget_used(self) -> str:
        return f"budget of {self.budget} evaluations used"

    def stage_params(self) -> dict[str, Any]:
        return {"sampler": type(self.study.sampler).__name__, "batch_size": self.batch_size}

    def summary(self) -> dict[str, Any]:
        """``trials``: told a value; ``failed_trials``: told FAIL (failed trainings and genomes
        repair rejected)."""
        return {
            "stop_reason": self.stop_reason,
            "trials": self._count(TrialState.COMPLETE),
            "failed_trials": self._count(TrialState.FAIL),
            "sampler": type(self.study.sampler).__name__,
        }

    def _count(self, state: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(state,)))

    def history(self) -> list[dict[str, Any]]:
        return []


class TPESearch(OptunaSearch):
    """Tree-structured Parzen Estimator search: the first ``startup_trials`` completed trials drawn
    at random, then TPE models the results."""

    method = "tpe"

    def __init__(
        self,
        space: SearchSpace | ArchitectureSpace,
        budget: int,
        seed: int,
        startup_trials: int = 5,
        batch_size: int = 1,
    ) -> None:
        if budget < 1 or batch_size < 1 or startup_trials < 0:
            raise ValueError(f"TPE needs budget >= 1, batch_size >= 1, startup_trials >= 0; got "
                             f"{budget}, {batch_size}, {startup_trials}")  # fmt: skip
        self.startup_trials = startup_trials
        sampler = make_sampler(seed, startup_trials, batch_size, space.kind == "architecture")
        super().__init__(space, budget, seed, sampler, batch_size)

    def stage_params(self) -> dict[str, Any]:
        return {"sampler": "TPE", "startup_trials": self.startup_trials, "batch_size": self.batch_size}

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"startup_trials": self.startup_trials}


def build(config: StudyConfig, space: SearchSpace | ArchitectureSpace) -> TPESearch:
    return TPESearch(space, config.budget.evaluations, config.seed, config.tpe.startup_trials, config.tpe.batch_size)


METHOD = Method("tpe", "TPE (Bayesian optimisation)", build, ("tpe",))
