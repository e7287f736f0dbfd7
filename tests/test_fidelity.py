"""Multi-fidelity: training resumed from a saved state ends bit-equal to one fit; successive halving
promotes the top 1/eta of each rung; stopped members rank below those that went further."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import EarlyStoppingConfig, ModelConfig, TrainConfig
from pipeline.training.fit import fit_genome, saved_epochs
from pipeline.training.models import network_builder

GENOME = {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 64, "epochs": 3}
SMALL_MODEL = ModelConfig(conv_channels=[4, 8], hidden_units=16)


def _fit(data, genome, *, epochs, train_config=None, resume_from=None, save_to=None, kind="hyperparameters"):
    build = network_builder(kind, SMALL_MODEL, data.image_shape, data.num_classes)
    return fit_genome(
        genome, seed=11, build_network=build, train_split=data.load("train"), val_split=data.load("val"),
        train_config=train_config or TrainConfig(), epochs=epochs, resume_from=resume_from, save_to=save_to,
    )  # fmt: skip


def _assert_same_training(one_go, resumed):
    assert resumed.module.epoch_metrics == one_go.module.epoch_metrics  # every epoch's losses, score and lr
    ours, theirs = one_go.module.network.state_dict(), resumed.module.network.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "genome, train_config",
    [
        (GENOME, TrainConfig()),
        # the random stream continues: input noise drawn every batch
        (GENOME, TrainConfig(noise_level=0.2)),
        # early stopping's patience counter and best score continue
        (GENOME, TrainConfig(early_stopping=EarlyStoppingConfig(patience=5, min_delta=0.0))),
        # in the channels_last layout (the studies' network has dropout: its masks continue in every case)
        (GENOME, TrainConfig(channels_last=True)),
    ],
    ids=["plain", "input-noise", "early-stopping", "channels-last"],
)
def test_training_resumed_at_each_rung_ends_bit_equal_to_one_fit(prepared_digits, tmp_path, genome, train_config):
    one_go = _fit(prepared_digits, genome, epochs=3, train_config=train_config)
    _fit(prepared_digits, genome, epochs=1, train_config=train_config, save_to=tmp_path / "rung-0.ckpt")
    assert saved_epochs(tmp_path / "rung-0.ckpt") == 1
    _fit(prepared_digits, genome, epochs=2, train_config=train_config, resume_from=tmp_path / "rung-0.ckpt",
         save_to=tmp_path / "rung-1.ckpt")  # fmt: skip
    resumed = _fit(prepared_digits, genome, epochs=3, train_config=train_config, resume_from=tmp_path / "rung-1.ckpt")
    _assert_same_training(one_go, resumed)


@pytest.mark.slow
def test_resume_with_dropout_layers_continues_the_dropout_stream(prepared_digits, tmp_path):
    from tests.test_evaluate import conv_gene  # noqa: PLC0415 - the architecture genes' shape

    genome = {**GENOME, "conv": [conv_gene(4, pool_size=2)],
              "fc": [{"units": 16, "activation": "relu", "dropout": 0.25}]}  # fmt: skip
    one_go = _fit(prepared_digits, genome, epochs=3, kind="architecture")
    _fit(prepared_digits, genome, epochs=1, save_to=tmp_path / "rung-0.ckpt", kind="architecture")
    resumed = _fit(prepared_digits, genome, epochs=3, resume_from=tmp_path / "rung-0.ckpt", kind="architecture")
    _assert_same_training(one_go, resumed)


# ----------------------------------------------------------------------------------------------------------------------
# the plan of rungs, successive halving and ranking (no training)

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.evaluation import EvaluationRecord  # noqa: E402
from pipeline.search.fidelity import (  # noqa: E402
    expected_epochs,
    promoted_count,
    rung_epochs,
    rung_ranked_fitness,
    successive_halving,
)
from tests.conftest import tiny_params  # noqa: E402


@pytest.mark.parametrize(
    "rungs, epochs, plan",
    [
        ([1, 3, 9], 9, (1, 3, 9)),
        ([1, 3, 9], 5, (1, 3, 5)),  # the last rung is always the genome's full epochs
        ([1, 3, 9], 3, (1, 3)),
        ([1, 3, 9], 1, (1,)),
        ([1, 3, 9], 12, (1, 3, 9, 12)),
        ([0.25, 0.5], 8, (2, 4, 8)),  # fractions of its epochs, rounded up
        ([0.25, 0.5, 1.0], 3, (1, 2, 3)),
        ([0.1], 2, (1, 2)),  # at least one epoch
    ],
)
def test_rung_epochs(rungs, epochs, plan):
    assert rung_epochs(rungs, epochs) == plan


def test_promoted_count_is_the_top_fraction_and_at_least_one():
    assert [promoted_count(n, 3) for n in (1, 2, 3, 4, 8, 9, 16)] == [1, 1, 1, 1, 2, 3, 5]


def test_expected_epochs_weights_each_rung_by_the_share_that_reaches_it():
    assert expected_epochs([1, 3, 9], 9, 3) == pytest.approx(1 + 2 / 3 + 6 / 9)
    assert expected_epochs([1, 3, 9], 1, 3) == 1.0


def scored(position: int, epochs: int, score: float, status: str = "finished") -> EvaluationRecord:
    history = [{"val_acc": score}] * epochs
    if status == "failed":
        return EvaluationRecord.failed({"p": position}, 0, "boom", 0.0)
    return EvaluationRecord({"p": position}, str(position), 0, status, score, 0.0, 0.0, 0.0, history)


def one_by_one(train_to):
    """A rung's jobs trained one after another, in order, by ``train_to(position, rung, epochs)``."""
    return lambda jobs: {position: train_to(position, rung, epochs) for position, rung, epochs in jobs}


def test_successive_halving_promotes_the_top_third_of_each_rung_and_stops_the_rest():
    final_scores = [0.5, 0.9, 0.2, 0.7, 0.8, 0.1, 0.6, 0.3, 0.4]
    calls = []

    def train_to(position, rung, epochs):
        calls.append((position, rung, epochs))
        return scored(position, epochs, final_scores[position] * epochs / 9)

    plans = [(1, 3, 9)] * 9
    records = successive_halving(plans, 3, one_by_one(train_to))
    assert [c for c in calls if c[1] == 0] == [(p, 0, 1) for p in range(9)]
    assert [c for c in calls if c[1] == 1] == [(1, 1, 3), (3, 1, 3), (4, 1, 3)]  # the top 3 of 9
    assert [c for c in calls if c[1] == 2] == [(1, 2, 9)]  # the top 1 of 3
    assert [r.rung for r in records] == [0, 2, 0, 1, 1, 0, 0, 0, 0]
    assert [r.stopped_early for r in records] == [True, False, True, True, True, True, True, True, True]
    assert records[1].fidelity_level == math.inf and records[3].fidelity_level == 1.0


def test_a_member_that_is_done_at_a_rung_is_complete_and_never_takes_a_promotion():
    # Position 0 has 1 epoch in all: done at the first rung, whatever its score; the promotion goes
    # to the best of those with epochs left. A failed member is never promoted.
    plans = [(1,), (1, 3), (1, 3), (1, 3)]
    scores = {0: 0.99, 1: 0.5, 2: 0.6}
    records = successive_halving(
        plans,
        3,
        one_by_one(lambda p, rung, epochs: scored(p, epochs, scores[p]) if p != 3 else scored(p, epochs, 0, "failed")),
    )
    assert [(r.rung, r.stopped_early, r.status) for r in records] == [
        (0, False, "finished"), (0, True, "finished"), (1, False, "finished"), (0, False, "failed"),
    ]  # fmt: skip


def test_early_stopping_before_a_rung_ends_a_member_as_complete():
    records = successive_halving(
        [(2, 4)], 3, one_by_one(lambda p, rung, epochs: scored(p, 1, 0.5))
    )  # stopped after 1 of 2
    assert records[0].rung == 0 and not records[0].stopped_early


@given(
    # scores on a grid: a shift by a whole span keeps differences far above rounding
    st.lists(
        st.tuples(st.integers(0, 1000).map(lambda k: k / 1000), st.sampled_from([0.0, 1.0, 2.0, math.inf])),
        min_size=1,
        max_size=12,
    )
)
def test_rung_ranking_orders_by_level_then_fitness(members):
    fitness = np.array([f for f, _ in members])
    levels = np.array([level for _, level in members])
    ranked = rung_ranked_fitness(fitness, levels)
    for i in range(len(members)):
        for j in range(len(members)):
            if (levels[i], fitness[i]) > (levels[j], fitness[j]):
                assert ranked[i] > ranked[j]
    same_level = levels == levels.max()
    assert np.allclose(np.diff(ranked[same_level]), np.diff(fitness[same_level]))  # differences kept within a level


def test_failed_members_stay_last():
    ranked = rung_ranked_fitness(np.array([-np.inf, 0.3, 0.9]), np.array([np.inf, np.inf, 0.0]))
    assert ranked[0] == -np.inf and ranked[1] > ranked[2]


@pytest.mark.parametrize(
    "fidelity, execution, message",
    [
        ({"rungs": [1, 2.5]}, {}, "fidelity.rungs: rungs are whole epochs"),
        ({"rungs": [3, 1]}, {}, "fidelity.rungs: rungs must increase strictly"),
        ({"rungs": []}, {}, "fidelity.rungs: give at least one rung"),
        ({"rungs": [1], "eta": 1}, {}, "fidelity.eta"),
        ({"rungs": [1], "ranking": "age"}, {}, "fidelity.ranking"),
        ({"rungs": [1], "mode": "eager"}, {}, "fidelity.mode"),
        (
            {"rungs": [1], "mode": "asynchronous"},
            {"evaluator": "population"},
            "fidelity.mode: asynchronous hands one candidate at a time to each free worker",
        ),
    ],
)
def test_bad_fidelity_settings_are_refused_by_key(fidelity, execution, message):
    params = tiny_params()
    params["fidelity"] = fidelity
    params["execution"] = execution
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_config(params)


def test_an_epoch_budget_must_be_positive():
    params = tiny_params()
    params["budget"]["epochs"] = 0
    with pytest.raises(ConfigError, match=r"budget\.epochs"):
        parse_config(params)


# ----------------------------------------------------------------------------------------------------------------------
# the evaluator: successive halving with real fits, kept rungs, resume after a kill

from pipeline.evaluation import Proposal  # noqa: E402
from pipeline.config import FidelityConfig  # noqa: E402
from pipeline.training import evaluator as evaluator_module  # noqa: E402
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext, WorkerPoolEvaluator  # noqa: E402
from pipeline.training.fidelity import RungScheduledEvaluator  # noqa: E402
from pipeline.training.weights import WeightStore  # noqa: E402

BATCH = [
    {"learning_rate": lr, "momentum": 0.5, "weight_decay": 0.0, "batch_size": 64, "epochs": epochs}
    for lr, epochs in ((0.002, 3), (0.08, 3), (0.01, 3), (0.2, 1))
]


def context_of(data, weights="none"):
    return TrainingContext(
        "hyperparameters", SMALL_MODEL, TrainConfig(), 0, data.image_shape, data.num_classes, weights
    )


def halving(data, folder, fingerprint="f1", weights="none", store=None, mode="synchronous", threads=None):
    inner = SequentialEvaluator(data, dataclasses.replace(context_of(data, weights), threads=threads), store)
    return RungScheduledEvaluator(inner, FidelityConfig(rungs=[1, 2], eta=3, mode=mode), folder, fingerprint)


def records_of(evaluator, genomes, parents=()):
    finished = dict(evaluator.evaluate([Proposal(g, f"m{i}", {}, tuple(parents)) for i, g in enumerate(genomes)]))
    return [finished[i] for i in range(len(genomes))]


@pytest.fixture(scope="module")
def one_go(prepared_digits):
    """Each genome of the batch trained to its full epochs in one fit."""
    return records_of(SequentialEvaluator(prepared_digits, context_of(prepared_digits)), BATCH)


@pytest.mark.slow
def test_a_promoted_member_ends_bit_equal_to_one_fit_and_the_others_keep_their_rung(prepared_digits, tmp_path, one_go):
    records = records_of(halving(prepared_digits, tmp_path / "rungs"), BATCH)
    # 4 candidates at the first rung (1 epoch); the top 1 (4 // 3) of the three with epochs left goes on.
    going_on = max((0, 1, 2), key=lambda i: one_go[i].epochs[0]["val_acc"])
    for i, (record, full) in enumerate(zip(records, one_go)):
        if i == going_on:
            assert (record.rung, record.stopped_early) == (2, False)
            assert record.epochs == full.epochs and record.val_score == full.val_score  # to the last bit
        elif i == 3:  # one epoch in all: complete at the first rung
            assert (record.rung, record.stopped_early, record.epochs) == (0, False, full.epochs)
        else:
            assert (record.rung, record.stopped_early) == (0, True)
            assert record.epochs == full.epochs[:1] and record.val_score == full.epochs[0]["val_acc"]
    assert not any((tmp_path / "rungs").glob("*/*.ckpt"))  # training states dropped once committed


@pytest.mark.slow
def test_a_batch_killed_between_rungs_resumes_without_training_a_finished_rung(
    prepared_digits, tmp_path, one_go, monkeypatch
):
    fits = []
    real = evaluator_module.train_proposal

    def counted(proposal, context, train, val, parents, resume=None):
        fits.append((proposal.name, proposal.resume.epochs))
        if kill_at is not None and len(fits) == kill_at:
            raise KeyboardInterrupt  # killed in the first fit of the second rung
        return real(proposal, context, train, val, parents, resume)

    monkeypatch.setattr(evaluator_module, "train_proposal", counted)
    kill_at = 5
    with pytest.raises(KeyboardInterrupt):
        records_of(halving(prepared_digits, tmp_path / "rungs"), BATCH)
    assert any((tmp_path / "rungs").glob("*/rung-0.ckpt"))
    fits.clear()
    kill_at = None
    resumed = records_of(halving(prepared_digits, tmp_path / "rungs"), BATCH)
    assert [epochs for _, epochs in fits] == [2, 3]  # the first rung's four fits are not trained again
    clean = records_of(halving(prepared_digits, tmp_path / "clean"), BATCH)
    strip = ("train_seconds",)
    assert [{k: v for k, v in r.to_dict().items() if k not in strip} for r in resumed] == [
        {k: v for k, v in r.to_dict().items() if k not in strip} for r in clean
    ]
    # Kept rungs of other params or code (another fingerprint) are never reused.
    fits.clear()
    records_of(halving(prepared_digits, tmp_path / "clean", fingerprint="f2"), BATCH)
    assert len(fits) == 6  # 4 + 1 + 1: every rung trained afresh


class KilledAfter:
    """An evaluator that dies (``KeyboardInterrupt``, as a kill) once ``results`` records have come back;
    it notes every request it is handed as (genome hash, epochs)."""

    def __init__(self, inner, results=None):
        self.inner, self.results, self.requests = inner, results, []
        self.concurrency = inner.concurrency

    def evaluate(self, proposals, on_start=None):
        self.requests += [(p.genome_hash, p.resume.epochs) for p in proposals]
        for count, item in enumerate(self.inner.evaluate(proposals, on_start), start=1):
            yield item
            if count == self.results:
                raise KeyboardInterrupt

    def close(self):
        self.inner.close()


@pytest.mark.slow
def test_a_kill_mid_rung_on_two_workers_resumes_without_training_a_finished_rung(prepared_digits, tmp_path, one_go):
    config = FidelityConfig(rungs=[1, 2], eta=3)

    def on_two_workers(results=None):
        inner = WorkerPoolEvaluator(prepared_digits, dataclasses.replace(context_of(prepared_digits), threads=1),
                                    workers=2)  # fmt: skip
        return KilledAfter(inner, results)

    killed = on_two_workers(results=1)  # the first rung's first result is in; the other worker is mid-rung
    with pytest.raises(KeyboardInterrupt):
        records_of(RungScheduledEvaluator(killed, config, tmp_path / "rungs", "f"), BATCH)
    killed.close()
    (kept,) = [h for h, rungs in kept_rungs(tmp_path / "rungs").items() if rungs == [0]]
    resumed = on_two_workers()
    try:
        records = records_of(RungScheduledEvaluator(resumed, config, tmp_path / "rungs", "f"), BATCH)
    finally:
        resumed.close()
    first_rung = [h for h, epochs in resumed.requests if epochs == 1]
    assert kept not in first_rung and len(first_rung) == len(BATCH) - 1  # the finished rung is not trained again
    # As many torch threads as each worker had: a float sum's order, hence its last bits, follows the threads.
    clean = records_of(halving(prepared_digits, tmp_path / "clean", threads=1), BATCH)
    strip = ("train_seconds",)
    assert [{k: v for k, v in r.to_dict().items() if k not in strip} for r in records] == [
        {k: v for k, v in r.to_dict().items() if k not in strip} for r in clean
    ]


def kept_rungs(state_dir):
    """Genome hash -> the rungs whose records are kept under ``state_dir``."""
    return {folder.name: sorted(int(f.stem.split("-")[1]) for f in folder.glob("rung-*.json"))
            for folder in state_dir.iterdir() if folder.is_dir()}  # fmt: skip


@pytest.mark.slow
def test_inherited_weights_are_kept_at_the_rung_a_member_reached(prepared_digits, tmp_path):
    store = WeightStore(tmp_path / "weights")
    evaluator = halving(prepared_digits, tmp_path / "rungs", weights="inherit", store=store)
    (parent,) = records_of(evaluator, BATCH[2:3])
    children = records_of(evaluator, BATCH[:2], parents=(parent.genome_hash,))
    assert all(c.init == "inherit" and c.transferred_fraction == 1.0 for c in children)
    for record in (parent, *children):
        saved = store.load(record.genome_hash)
        assert saved is not None and set(saved) == set(build(prepared_digits, record.genome).state_dict())


def build(data, genome):
    return network_builder("hyperparameters", SMALL_MODEL, data.image_shape, data.num_classes)(genome)


# ----------------------------------------------------------------------------------------------------------------------
# the epoch budget, and a whole search stage with fidelity

from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.evaluation import FunctionEvaluator  # noqa: E402
from pipeline.search.random import RandomSearch  # noqa: E402
from pipeline.space import SearchSpace  # noqa: E402
from pipeline.study.runner import SearchRunner  # noqa: E402
from pipeline.study.search_stage import run_search_stage  # noqa: E402


class EpochsEvaluator(FunctionEvaluator):
    """Scores without training, with one history entry per epoch of the genome."""

    def score(self, proposal):
        record = super().score(proposal)
        return dataclasses.replace(record, epochs=[{"val_acc": record.val_score}] * proposal.genome["epochs"])


def test_an_epoch_budget_admits_proposals_while_their_epochs_fit_then_ends_the_search():
    params = tiny_params()
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": 9}
    space = SearchSpace.from_config(parse_config(params).space)
    runner = SearchRunner(RandomSearch(space, 40, seed=3), EpochsEvaluator(lambda g: g["learning_rate"]), 40,
                          epoch_budget=20)  # fmt: skip
    records = runner.run()
    genomes = RandomSearch(space, 40, seed=3).genomes
    assert [r.genome for r in records] == genomes[: len(records)]  # in order, none skipped
    used = sum(g["epochs"] for g in genomes[: len(records)])
    assert used <= 20 < used + genomes[len(records)]["epochs"]
    assert runner.stop_reason == f"budget of 20 training epochs spent ({used} trained)"


@pytest.mark.slow
def test_a_ga_stage_with_fidelity_marks_each_run_with_its_rung(tmp_path, monkeypatch, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = tiny_params()
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 2, "high": 3}
    params["fidelity"] = {"rungs": [1], "eta": 3}
    params["budget"]["epochs"] = 40
    config = parse_config(params)
    (summary,) = run_search_stage("ga", config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    history = json.loads((tmp_path / "results" / "ga_search" / "seed-42_history.json").read_text())["evaluations"]
    # Each generation of 3 sends its best 1 (3 // 3) on to its full epochs; the others stop at 1 epoch.
    assert [r["stopped_early"] for r in history].count(False) == summary["generations"]
    assert all(len(r["epochs"]) == 1 for r in history if r["stopped_early"])
    assert summary["stopped_early"] == sum(r["stopped_early"] for r in history)
    assert summary["epochs_trained"] == sum(len(r["epochs"]) for r in history)
    assert not history[summary["evaluations_to_best"] - 1]["stopped_early"]  # the best went furthest
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for record in history:
        tags = client.get_run(record["run_id"]).data.tags
        assert (tags["rung"], tags["stopped_early"]) == (str(record["rung"]), str(record["stopped_early"]))
    assert not any((tmp_path / "ckpt" / "ga_search" / "seed-42-fidelity").glob("*/*.ckpt"))


def test_tpe_is_told_a_member_stopped_early_as_pruned_at_its_rung_score():
    import optuna  # noqa: PLC0415

    from pipeline.search.tpe import tell_record  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    stopped = dataclasses.replace(scored(0, 1, 0.4), rung=0, stopped_early=True)
    complete = dataclasses.replace(scored(1, 3, 0.7), rung=1)
    for record in (stopped, complete):
        tell_record(study, study.ask(), record)
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.PRUNED and first.intermediate_values == {1: 0.4}
    assert second.state == optuna.trial.TrialState.COMPLETE and second.value == 0.7


# ----------------------------------------------------------------------------------------------------------------------
# asynchronous halving (ASHA): its promotions against a reference simulation on recorded scores

import heapq  # noqa: E402
import random as stdlib_random  # noqa: E402

from pipeline.search.fidelity import AsynchronousHalving  # noqa: E402


def reference_asha(plans, eta, score, workers):
    """Li et al. (2018), Algorithm 2, simulated on a clock: a job of rung k takes as long as its epochs
    beyond rung k-1. ``get_job`` looks for a promotable candidate from the top rung down (in the top
    floor(|rung|/eta), not yet promoted, with a further rung and its rung's epochs trained), else
    starts a new one; once nothing runs and none is left to start, a rung's top max(1, |rung|//eta)
    may go on (the batch ends as successive halving's does). Returns the promotions in order
    ((position, from rung, |rung| then)) and each candidate's last rung."""
    rungs = [[] for _ in range(max(map(len, plans)))]  # (score, position) reported per rung
    promoted = [set() for _ in rungs]
    promotions, last_rung, started, running, clock = [], {}, 0, [], 0.0

    def get_job(draining):
        for k in range(len(rungs) - 2, -1, -1):
            size = max(1, len(rungs[k]) // eta) if draining else len(rungs[k]) // eta
            best = sorted(rungs[k], key=lambda sp: (-sp[0], sp[1]))[:size]
            for value, position in best:
                if position not in promoted[k] and k + 1 < len(plans[position]) and value > -math.inf:
                    promoted[k].add(position)
                    promotions.append((position, k, len(rungs[k])))
                    return position, k + 1
        return None

    while True:
        while len(running) < workers:
            job = get_job(False)
            if job is None and started < len(plans):
                job, started = (started, 0), started + 1
            if job is None and not running:
                job = get_job(True)
            if job is None:
                break
            position, rung = job
            took = plans[position][rung] - (plans[position][rung - 1] if rung else 0)
            heapq.heappush(running, (clock + took, position, rung))
        if not running:
            break
        clock, position, rung = heapq.heappop(running)
        rungs[rung].append((score(position, plans[position][rung]), position))
        last_rung[position] = rung
    return promotions, [last_rung[p] for p in range(len(plans))]


def simulate(plans, eta, score, workers):
    """``AsynchronousHalving`` driven on the same clock."""
    schedule, running, clock = AsynchronousHalving(plans, eta), [], 0.0
    while True:
        while len(running) < workers and (job := schedule.next_job()) is not None:
            position, rung, epochs = job
            took = epochs - (plans[position][rung - 1] if rung else 0)
            heapq.heappush(running, (clock + took, position, rung))
        if not running:
            break
        clock, position, rung = heapq.heappop(running)
        epochs = plans[position][rung]
        schedule.report(position, rung, scored(position, epochs, score(position, epochs)))
    return schedule.promotions, [r.rung for r in schedule.records()]


def recorded_scores(seed):
    """Scores that cross between rungs (a slow starter may end best), fixed per (candidate, epochs)."""
    rng = stdlib_random.Random(seed)
    table = {}
    return lambda position, epochs: table.setdefault((position, epochs), round(rng.random(), 3))


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_asynchronous_halving_promotes_as_a_reference_asha_on_the_same_scores(workers, seed):
    rng = stdlib_random.Random(100 + seed)
    plans = [rung_epochs([1, 3, 9], rng.choice([1, 3, 5, 9, 12])) for _ in range(rng.randint(4, 14))]
    score_a, score_b = recorded_scores(seed), recorded_scores(seed)
    for plan_position in range(len(plans)):  # both tables hold the same values, whatever order asks first
        for epochs in plans[plan_position]:
            score_a(plan_position, epochs), score_b(plan_position, epochs)
    expected = reference_asha(plans, 3, score_a, workers)
    assert simulate(plans, 3, score_b, workers) == expected
    assert expected[0], "the scores promote no candidate: the test shows nothing"


def test_asynchronous_halving_promotes_before_a_rung_is_complete():
    """With 9 candidates and eta 3 the best of the first three goes on at once, before the other six
    have trained a rung (successive halving would wait for all nine)."""
    plans = [(1, 3)] * 9
    schedule = AsynchronousHalving(plans, 3)
    for position in range(3):
        assert schedule.next_job() == (position, 0, 1)
    for position, value in zip(range(3), (0.2, 0.9, 0.5)):
        schedule.report(position, 0, scored(position, 1, value))
    assert schedule.next_job() == (1, 1, 3)  # promoted at 3 of 9 reports
    assert schedule.promotions == [(1, 0, 3)]


class TableEvaluator(FunctionEvaluator):
    """Scores a rung request from a table of (candidate, epochs): no training, one history entry per
    epoch trained so far (``Resume.epochs``)."""

    def __init__(self, score):
        super().__init__(lambda genome: 0.0)
        self.table_score = score
        self.requests = []

    def score(self, proposal):
        epochs = proposal.resume.epochs
        self.requests.append((proposal.genome["p"], epochs, proposal.resume.resume_from is not None))
        value = self.table_score(proposal.genome["p"], epochs)
        return EvaluationRecord(proposal.genome, proposal.genome_hash, 0, "finished", value, 0.0, 0.0, 0.0,
                                [{"val_acc": value}] * epochs)  # fmt: skip


def test_rungs_scheduled_asynchronously_over_an_evaluator_match_the_reference_on_one_worker(tmp_path):
    rng = stdlib_random.Random(7)
    genomes = [{"p": p, "epochs": rng.choice([1, 3, 9])} for p in range(10)]
    plans = [rung_epochs([1, 3], g["epochs"]) for g in genomes]
    score = recorded_scores(3)
    promotions, last_rungs = reference_asha(plans, 3, score, workers=1)
    inner = TableEvaluator(score)
    evaluator = RungScheduledEvaluator(inner, FidelityConfig(rungs=[1, 3], eta=3, mode="asynchronous"),
                                       tmp_path / "rungs", "f")  # fmt: skip
    records = records_of(evaluator, genomes)
    assert [r.rung for r in records] == last_rungs
    assert promotions, "the scores promote no candidate: the test shows nothing"
    trained_on = [(p, epochs) for p, epochs, resumed in inner.requests if resumed]
    assert trained_on == [(p, plans[p][rung + 1]) for p, rung, _ in promotions]  # each promotion, in order


def test_the_fidelity_section_is_read_once_into_a_rung_schedule():
    from pipeline.search.fidelity import RungSchedule  # noqa: PLC0415

    assert RungSchedule.of(FidelityConfig()) is None  # rungs: null, multi-fidelity off
    schedule = RungSchedule.of(FidelityConfig(rungs=[1, 3, 9], eta=3, mode="asynchronous"))
    assert schedule.asynchronous and schedule.plan(5) == (1, 3, 5)
    assert schedule.expected_epochs(9) == pytest.approx(expected_epochs([1, 3, 9], 9, 3))
