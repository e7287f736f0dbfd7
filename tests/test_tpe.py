"""TPE search (Optuna's TPESampler through ask/tell): determinism, proposals within the space, what
Optuna learns, failures, the budget's end and batches. Fitness functions stand in for training: no
network is trained, every test runs in well under a second or two."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.config import SpaceConfig
from pipeline.evaluation import EvaluationRecord, FunctionEvaluator, Scored
from pipeline.search.protocol import Batch
from pipeline.search.random import RandomSearch
from pipeline.search.tpe import SUGGESTERS_BY_KIND, TPESearch
from pipeline.space import (
    ArchitectureSpace, ChoiceDimension, FloatDimension, Genome, InfeasibleGenome, IntDimension, SearchSpace,
    genome_hash,
)  # fmt: skip
from pipeline.study.runner import run_strategy

from tests.conftest import MIXED_SPACE

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every kind of gene; the last choice list holds values Python deems equal (True == 1 == 1.0).
HYPER = SearchSpace((
    FloatDimension("learning_rate", 1.0e-4, 1.0, log=True),
    FloatDimension("momentum", 0.0, 0.9),
    IntDimension("epochs", 1, 20, log=True),
    ChoiceDimension("batch_size", (32, 64, 128, 256)),
    ChoiceDimension("flag", (1, True, 1.0, "1", None)),
))  # fmt: skip


def architecture_space(image_shape: tuple[int, int, int], **architecture: Any) -> ArchitectureSpace:
    """An architecture space over the shared optimiser genes (as tests/test_architecture.py builds them)."""
    raw: dict[str, Any] = {"kind": "architecture", **MIXED_SPACE}
    if architecture:
        raw["architecture"] = architecture
    return ArchitectureSpace.from_config(SpaceConfig.model_validate(raw), image_shape)


ARCH = architecture_space((1, 8, 8))
# A 7x7 kernel first leaves a 2x2 image that no second layer fits, and two conv layers are required:
# repair rejects about half the draws.
ARCH_REJECTING = architecture_space(
    (1, 8, 8),
    conv_layers={"min": 2, "max": 3},
    conv={"kernel_size": [3, 7], "padding": [0], "stride": [1], "pool_size": [None, 2]},
)
SPACES = {"hyperparameters": HYPER, "architecture": ARCH, "architecture-rejecting": ARCH_REJECTING}


def smooth_fitness(genome: Genome) -> float:
    """Peaks at a learning rate of 10^-1.5; for architectures, deeper conv stacks score higher."""
    depth = len(genome["conv"]) if "conv" in genome else 0
    return -((math.log10(genome["learning_rate"]) + 1.5) ** 2) + 0.1 * depth


def search(
    space: SearchSpace | ArchitectureSpace,
    budget: int,
    seed: int,
    fitness: Callable[[Genome], float] = smooth_fitness,
    **settings: Any,
) -> tuple[TPESearch, list[EvaluationRecord]]:
    """A whole TPE search through the runner (duplicate cache, budget), fitness for training."""
    strategy = TPESearch(space, budget, seed, **settings)
    return strategy, run_strategy(strategy, FunctionEvaluator(fitness), budget)


class RecordedBatches:
    """A strategy that passes everything to ``strategy`` and keeps every batch it asked."""

    def __init__(self, strategy: TPESearch) -> None:
        self.strategy, self.batches = strategy, []

    def ask(self) -> Batch | None:
        batch = self.strategy.ask()
        if batch is not None and (not self.batches or batch is not self.batches[-1]):
            self.batches.append(batch)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.strategy, name)


def record(genome: Genome, value: float) -> EvaluationRecord:
    return EvaluationRecord(genome, genome_hash(genome), 0, "finished", value, None, None, 0.0, [])


# ----------------------------------------------------------------------------------------------------------------------
# Determinism: a resumed search replays the checkpoint through a fresh strategy


@pytest.mark.slow  # seconds: whole tables or searches
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("kind", ["hyperparameters", "architecture"])
def test_same_seed_and_scores_propose_the_same_genomes_over_a_whole_search(kind, batch_size):
    first, records = search(SPACES[kind], 25, seed=7, batch_size=batch_size)
    second, replayed = search(SPACES[kind], 25, seed=7, batch_size=batch_size)
    assert len(records) == 25
    assert [r.genome for r in replayed] == [r.genome for r in records]
    assert second.summary() == first.summary()


# Drives a TPE search over an architecture space (its config as JSON in argv[1]) without the runner,
# and prints the genome hashes proposed; imports little, so that a process starts in about a second.
REPLAY_SCRIPT = """
import json, math, sys
from pipeline.config import SpaceConfig
from pipeline.evaluation import FunctionEvaluator, Scored
from pipeline.search.tpe import TPESearch
from pipeline.space import ArchitectureSpace

space = ArchitectureSpace.from_config(SpaceConfig.model_validate(json.loads(sys.argv[1])), (1, 8, 8))
evaluator = FunctionEvaluator(lambda g: len(g["conv"]) - abs(math.log10(g["learning_rate"]) + 1.5))
strategy, hashes = TPESearch(space, 20, seed=3, batch_size=2), []
while (batch := strategy.ask()) is not None:
    strategy.tell([Scored(evaluator.score(p), new=True) for p in batch.proposals])
    hashes += [p.genome_hash for p in batch.proposals]
print(json.dumps(hashes))
"""


@pytest.mark.slow
def test_a_fresh_process_with_other_string_hashing_proposes_the_same_genomes():
    # A resume runs in a new process; Optuna's conditional (group) search space is built from sets
    # of parameter names, whose iteration order follows PYTHONHASHSEED.
    config = json.dumps({"kind": "architecture", **MIXED_SPACE})
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", REPLAY_SCRIPT, config], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(REPO_ROOT)},
        )
        for hash_seed in (1, 2)
    ]  # fmt: skip
    first, second = (json.loads(run.communicate(timeout=120)[0]) for run in runs)
    assert len(set(first)) == 20 and first == second


def test_different_seeds_propose_different_genomes():
    for space in (HYPER, ARCH):
        a = [r.genome_hash for r in search(space, 15, seed=1)[1]]
        b = [r.genome_hash for r in search(space, 15, seed=2)[1]]
        assert not set(a) & set(b)


# ----------------------------------------------------------------------------------------------------------------------
# Proposals and what Optuna records of them


@pytest.mark.parametrize("kind", SPACES)
def test_every_proposal_lies_in_the_space_and_rejected_architectures_use_no_budget(kind):
    space = SPACES[kind]
    strategy, records = search(space, 30, seed=0)
    assert len(records) == 30 and all(space.contains(r.genome) for r in records)  # types included
    assert strategy.stop_reason == "budget of 30 evaluations used"
    summary = strategy.summary()
    assert summary["trials"] == 30
    # Only repair rejections fail here: each is told FAIL and replaced by another trial.
    assert (summary["failed_trials"] > 0) == (kind == "architecture-rejecting")


@pytest.mark.parametrize("kind", ["hyperparameters", "architecture"])
def test_optuna_records_of_each_trial_give_back_the_genome_proposed(kind):
    # Optuna records a categorical choice by list index of its value, so a choice list holding True,
    # 1 and 1.0 would be recorded (and modelled) as its first: TPE would learn a genome it never saw.
    space = SPACES[kind]
    recorded = RecordedBatches(TPESearch(space, 30, seed=4))
    run_strategy(recorded, FunctionEvaluator(smooth_fitness), 30)
    trials = {t.number: t for t in recorded.study.get_trials(states=(TrialState.COMPLETE,))}
    proposals = [p for batch in recorded.batches for p in batch.proposals]
    assert len(proposals) == len(trials) == 30
    for proposal in proposals:
        again = SUGGESTERS_BY_KIND[space.kind](optuna.trial.FixedTrial(trials[proposal.tags["trial"]].params), space)
        assert genome_hash(again) == proposal.genome_hash  # JSON of the genes: True, 1 and 1.0 differ
    if kind == "hyperparameters":
        assert {repr(p.genome["flag"]) for p in proposals} >= {"1", "True", "1.0"}  # the aliased choices occur


def test_proposals_are_named_and_tagged_with_their_trial():
    strategy = TPESearch(HYPER, 10, seed=0, batch_size=2)
    first = strategy.ask()
    assert strategy.ask() is first  # asked again before tell: the same batch
    strategy.tell([Scored(record(p.genome, 0.5), new=True) for p in first.proposals])
    second = strategy.ask()
    assert [p.name for p in first.proposals + second.proposals] == ["tpe-000", "tpe-001", "tpe-002", "tpe-003"]
    assert [dict(p.tags) for p in second.proposals] == [
        {"method": "tpe", "index": 2, "trial": 2}, {"method": "tpe", "index": 3, "trial": 3},
    ]  # fmt: skip
    assert strategy.method == "tpe" and strategy.history() == []
    assert strategy.stage_params() == {"sampler": "TPE", "startup_trials": 5, "batch_size": 2}


# ----------------------------------------------------------------------------------------------------------------------
# Learning


def test_tpe_beats_the_median_random_search_on_a_smooth_fitness():
    space = SearchSpace((FloatDimension("learning_rate", 1.0e-4, 1.0, log=True), FloatDimension("momentum", 0.0, 0.9)))

    def fitness(genome: Genome) -> float:  # peaks at a learning rate of 10^-1.5 and a momentum of 0.6
        return -((math.log10(genome["learning_rate"]) + 1.5) ** 2) - (4 * (genome["momentum"] - 0.6)) ** 2

    seeds = range(5)
    random_best = statistics.median(
        max(r.fitness for r in run_strategy(RandomSearch(space, 30, seed), FunctionEvaluator(fitness), 30))
        for seed in seeds
    )
    tpe_best = [max(r.fitness for r in search(space, 30, seed, fitness)[1]) for seed in seeds]
    assert all(best > random_best for best in tpe_best), (tpe_best, random_best)


# ----------------------------------------------------------------------------------------------------------------------
# Failures, the budget's end, batches


def test_failed_evaluations_are_told_as_fail_and_the_search_goes_on():
    def fitness(genome: Genome) -> float:
        if genome["momentum"] > 0.45:
            raise RuntimeError("diverged")
        return smooth_fitness(genome)

    strategy, records = search(HYPER, 20, seed=0, fitness=fitness)
    failed = sum(not r.finished for r in records)
    assert len(records) == 20 and 0 < failed < 20
    assert strategy.summary() == {
        "stop_reason": "budget of 20 evaluations used", "trials": 20 - failed, "failed_trials": failed,
        "sampler": "TPESampler", "startup_trials": 5,
    }  # fmt: skip


def test_repair_rejecting_every_trial_stops_the_search_with_a_reason(monkeypatch):
    def reject(self, genome):
        raise InfeasibleGenome("never fits")

    monkeypatch.setattr(ArchitectureSpace, "repair", reject)
    strategy = TPESearch(ARCH, 10, seed=0)
    assert strategy.ask() is None
    assert strategy.stop_reason == "no trainable genome in 100 trials in a row"
    assert strategy.summary()["failed_trials"] == 100 and strategy.summary()["trials"] == 0


def test_a_proposal_past_the_budget_ends_the_search_and_is_never_told():
    strategy = TPESearch(HYPER, 5, seed=0, batch_size=3)
    batch = strategy.ask()
    strategy.tell([Scored(record(batch.proposals[0].genome, 0.3), new=True),
                   Scored(record(batch.proposals[1].genome, 0.4), new=True), None])  # fmt: skip
    assert strategy.ask() is None and strategy.stop_reason == "budget of 5 evaluations used"
    states = [t.state for t in strategy.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    with pytest.raises(RuntimeError):
        strategy.tell([None, None, None])  # a batch is told once


def test_the_last_batch_asks_only_for_the_budget_left():
    recorded = RecordedBatches(TPESearch(HYPER, 7, seed=0, batch_size=3))
    records = run_strategy(recorded, FunctionEvaluator(smooth_fitness), 7)
    assert len(records) == 7 and [len(b.proposals) for b in recorded.batches] == [3, 3, 1]
    assert len(recorded.study.trials) == 7 and recorded.stop_reason == "budget of 7 evaluations used"


def test_a_batch_of_three_proposes_three_distinct_genomes():
    # A small discrete space, where TPE without the constant liar proposes one favourite several
    # times in a batch once it models the results.
    space = SearchSpace((
        ChoiceDimension("a", tuple(range(8))),
        ChoiceDimension("b", ("x", "y", None, 0.5, True, 7)),
        IntDimension("c", 1, 8),
    ))  # fmt: skip

    def fitness(genome: Genome) -> float:
        return -abs(genome["a"] - 4) - (genome["b"] != "y") - abs(genome["c"] - 6)

    for seed in range(5):
        recorded = RecordedBatches(TPESearch(space, 18, seed, startup_trials=3, batch_size=3))
        run_strategy(recorded, FunctionEvaluator(fitness), 18)
        sizes = [len(batch.proposals) for batch in recorded.batches]
        assert len(sizes) >= 6 and set(sizes[:-1]) == {3}  # the last: what is left of the budget
        for batch in recorded.batches:
            assert len({p.genome_hash for p in batch.proposals}) == len(batch.proposals)


def test_duplicates_are_told_and_a_space_smaller_than_the_budget_stops_the_search():
    space = SearchSpace((ChoiceDimension("batch_size", (32, 64)),))
    strategy, records = search(space, 5, seed=0, fitness=lambda g: g["batch_size"] / 64)
    assert len(records) == 2  # both genomes trained once; every other proposal scored from the cache
    assert strategy.stop_reason.startswith("100 proposals (20 x the budget) but only 2 new genomes")
    assert strategy.summary()["trials"] == 100  # each duplicate told its cached value
