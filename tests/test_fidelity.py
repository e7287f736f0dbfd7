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


def test_successive_halving_promotes_the_top_third_of_each_rung_and_stops_the_rest():
    final_scores = [0.5, 0.9, 0.2, 0.7, 0.8, 0.1, 0.6, 0.3, 0.4]
    calls = []

    def train_to(position, rung, epochs):
        calls.append((position, rung, epochs))
        return scored(position, epochs, final_scores[position] * epochs / 9)

    plans = [(1, 3, 9)] * 9
    records = successive_halving(plans, 3, train_to)
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
        plans, 3, lambda p, rung, epochs: scored(p, epochs, scores[p]) if p != 3 else scored(p, epochs, 0, "failed")
    )
    assert [(r.rung, r.stopped_early, r.status) for r in records] == [
        (0, False, "finished"), (0, True, "finished"), (1, False, "finished"), (0, False, "failed"),
    ]  # fmt: skip


def test_early_stopping_before_a_rung_ends_a_member_as_complete():
    records = successive_halving([(2, 4)], 3, lambda p, rung, epochs: scored(p, 1, 0.5))  # stopped after 1 of 2
    assert records[0].rung == 0 and not records[0].stopped_early


@given(
    # scores on a grid: a shift by a whole span keeps differences far above rounding
    st.lists(st.tuples(st.integers(0, 1000).map(lambda k: k / 1000), st.sampled_from([0.0, 1.0, 2.0, math.inf])), min_size=1, max_size=12)
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
        ({"rungs": [1]}, {"workers": 2}, "fidelity.rungs: multi-fidelity resumes each promoted individual"),
        ({"rungs": [1]}, {"evaluator": "population"}, "fidelity.rungs: multi-fidelity resumes"),
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
from pipeline.training import fidelity as fidelity_module  # noqa: E402
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext  # noqa: E402
from pipeline.training.fidelity import FidelityEvaluator  # noqa: E402
from pipeline.training.weights import WeightStore  # noqa: E402

BATCH = [
    {"learning_rate": lr, "momentum": 0.5, "weight_decay": 0.0, "batch_size": 64, "epochs": epochs}
    for lr, epochs in ((0.002, 3), (0.08, 3), (0.01, 3), (0.2, 1))
]


def context_of(data, weights="none"):
    return TrainingContext("hyperparameters", SMALL_MODEL, TrainConfig(), 0, data.image_shape, data.num_classes, weights)


def halving(data, folder, fingerprint="f1", weights="none", store=None):
    return FidelityEvaluator(data, context_of(data, weights), FidelityConfig(rungs=[1, 2], eta=3), folder, fingerprint,
                             store)  # fmt: skip


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
    real = fidelity_module.train_proposal

    def counted(proposal, context, train, val, parents, resume):
        fits.append((proposal.name, resume.epochs))
        if kill_at is not None and len(fits) == kill_at:
            raise KeyboardInterrupt  # killed in the first fit of the second rung
        return real(proposal, context, train, val, parents, resume)

    monkeypatch.setattr(fidelity_module, "train_proposal", counted)
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

import dataclasses  # noqa: E402

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
