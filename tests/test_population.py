"""The population evaluator: members trained in one group end as they end alone (without dropout,
within float tolerance); a diverging member fails alone; groups by architecture and batch size."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from pipeline.config import ConfigError, ModelConfig, TrainConfig, parse_config
from pipeline.search.registry import get_method, method_names
from pipeline.study.search_stage import run_search_stage
from pipeline.evaluation import Proposal
from pipeline.space import genome_seed
from pipeline.training.backends import uses_population
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext
from pipeline.training.fit import fit_genome
from pipeline.training.models import network_builder
from pipeline.training.population import PopulationEvaluator, plan_groups, train_group

# An architecture genome without dropout or BatchNorm: the equality holds to float tolerance.
LAYERS = {
    "conv": [{"filters": 4, "kernel_size": 3, "stride": 1, "padding": 1, "pool_size": 2, "pool_type": "max",
              "activation": "relu", "batch_norm": False, "skip": False}],
    "fc": [{"units": 16, "activation": "relu", "dropout": 0.0}],
}  # fmt: skip


def genome(lr: float, momentum: float, weight_decay: float, epochs: int, batch_size: int = 32, **layers) -> dict:
    return {"learning_rate": lr, "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size,
            "epochs": epochs, **(layers or LAYERS)}  # fmt: skip


def context_for(data, kind: str = "architecture") -> TrainingContext:
    return TrainingContext(kind, ModelConfig(conv_channels=[4, 8], hidden_units=16), TrainConfig(), 7,
                           data.image_shape, data.num_classes)  # fmt: skip


def proposals_of(genomes: list[dict]) -> list[Proposal]:
    return [Proposal(g, f"p{i}") for i, g in enumerate(genomes)]


def alone(g: dict, context: TrainingContext, train, val):
    build = network_builder(context.space_kind, context.model_config, context.image_shape, context.num_classes)
    outcome = fit_genome(g, seed=genome_seed(context.study_seed, g), build_network=build, train_split=train,
                         val_split=val, train_config=context.train_config)  # fmt: skip
    return outcome.module.epoch_metrics, outcome.module.network.state_dict()


@pytest.mark.slow
def test_members_end_with_the_weights_they_end_with_alone(prepared_digits):
    context = context_for(prepared_digits)
    train, val = prepared_digits.load("train"), prepared_digits.load("val")
    genomes = [genome(0.05, 0.9, 0.0, 3), genome(0.01, 0.0, 0.01, 1), genome(0.1, 0.5, 0.001, 2)]
    members, _ = train_group(proposals_of(genomes), [0, 1, 2], context, train, val)
    for member, g in zip(members, genomes):
        history, state = alone(g, context, train, val)
        assert member.failure is None and len(member.history) == g["epochs"]  # left after its own epochs
        for key, value in state.items():
            torch.testing.assert_close(member.state[key], value, rtol=1e-4, atol=1e-5)
        for grouped, single in zip(member.history, history):
            assert grouped.keys() == single.keys()
            for key in single:
                assert grouped[key] == pytest.approx(single[key], rel=1e-3, abs=1e-4), key


@pytest.mark.slow
def test_a_diverging_member_fails_and_the_others_go_on(prepared_digits):
    context = context_for(prepared_digits)
    train, val = prepared_digits.load("train"), prepared_digits.load("val")
    genomes = [genome(0.05, 0.9, 0.0, 2), genome(1.0e6, 0.9, 0.0, 2), genome(0.01, 0.0, 0.01, 2)]
    members, _ = train_group(proposals_of(genomes), [0, 1, 2], context, train, val)
    assert "DivergedError" in members[1].failure
    for member in (members[0], members[2]):
        history, state = alone(member.genome, context, train, val)
        assert member.failure is None
        for key, value in state.items():
            torch.testing.assert_close(member.state[key], value, rtol=1e-4, atol=1e-5)


def test_groups_share_an_architecture_and_a_batch_size():
    other = dict(LAYERS, fc=[{"units": 8, "activation": "relu", "dropout": 0.0}])
    genomes = [genome(0.1, 0, 0, 1), genome(0.2, 0, 0, 1, batch_size=64), genome(0.3, 0, 0, 1, **other),
               genome(0.4, 0, 0, 2), genome(0.5, 0, 0, 1)]  # fmt: skip
    assert plan_groups(proposals_of(genomes), max_size=16) == [[0, 3, 4], [1], [2]]
    assert plan_groups(proposals_of(genomes), max_size=2) == [[0, 3], [4], [1], [2]]


@pytest.mark.slow
def test_the_evaluator_records_every_member_and_fails_only_the_diverged(prepared_digits):
    context = context_for(prepared_digits)
    genomes = [genome(0.05, 0.9, 0.0, 2), genome(1.0e6, 0.9, 0.0, 1), genome(0.02, 0.5, 0.0, 1, batch_size=64)]
    started = []
    evaluator = PopulationEvaluator(prepared_digits, context)
    records = dict(evaluator.evaluate(proposals_of(genomes), started.append))
    assert sorted(started) == sorted(records) == [0, 1, 2]
    assert records[1].status == "failed" and "DivergedError" in records[1].failure
    assert records[1].fitness == -math.inf
    sequential = dict(SequentialEvaluator(prepared_digits, context).evaluate(proposals_of(genomes)))
    for position in (0, 2):  # 2 trained alone (its batch size is its own group), 0 in a group
        assert records[position].val_score == pytest.approx(sequential[position].val_score, abs=1e-3)
        assert len(records[position].epochs) == genomes[position]["epochs"]


@pytest.mark.slow
def test_the_studies_network_with_dropout_trains_in_a_group(prepared_digits):
    """With dropout the masks are the group's draws, not the member's: it learns as alone does,
    but not bit for bit."""
    context = context_for(prepared_digits, "hyperparameters")
    train, val = prepared_digits.load("train"), prepared_digits.load("val")
    genomes = [{"learning_rate": lr, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 32, "epochs": 3}
               for lr in (0.05, 0.1)]  # fmt: skip
    members, _ = train_group(proposals_of(genomes), [0, 1], context, train, val)
    for member in members:
        assert member.failure is None and len(member.history) == 3
        losses = [epoch["val_loss"] for epoch in member.history]
        assert losses[-1] < 0.95 * losses[0] and losses[-1] < math.log(10)  # below chance's cross-entropy


# --- chosen in params.yaml ---------------------------------------------------------------------


@pytest.mark.parametrize("execution, ga, key", [
    ({"evaluator": "population", "workers": 2}, {}, "execution.evaluator: population trains in this process"),
    ({"evaluator": "population", "backend": "ray"}, {}, "execution.evaluator: population trains in this process"),
    ({"evaluator": "population"}, {"weights": "inherit"}, "execution.evaluator: population trains from scratch"),
    ({"evaluator": "vectorised"}, {}, "execution.evaluator"),
])  # fmt: skip
def test_a_population_that_cannot_run_is_refused_by_key(tiny_params_dict, execution, ga, key):
    tiny_params_dict["execution"] = {**tiny_params_dict["execution"], **execution}
    tiny_params_dict["ga"] = {**tiny_params_dict["ga"], **ga}
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config(tiny_params_dict)


def test_auto_trains_populations_on_a_gpu_only(tiny_params_dict, monkeypatch):
    def chosen(cuda: bool, weights: str = "none", **execution) -> bool:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        params = {**tiny_params_dict, "execution": {**tiny_params_dict["execution"], **execution}}
        return uses_population(parse_config(params), weights)

    assert not chosen(False) and chosen(True)  # auto
    assert chosen(False, evaluator="population") and not chosen(True, evaluator="sequential")
    assert not chosen(True, weights="inherit")  # the GA with weight reuse trains one at a time
    assert not chosen(True, workers=2)


@pytest.mark.slow
@pytest.mark.parametrize("fidelity", [None, {"rungs": [1], "eta": 2}], ids=["full", "rungs"])
def test_every_method_searches_with_the_population_evaluator(tiny_params_dict, prepared_digits, mlflow_store, tmp_path,
                                                             fidelity):  # fmt: skip
    tiny_params_dict["execution"] = {**tiny_params_dict["execution"], "evaluator": "population"}
    if fidelity:
        tiny_params_dict["fidelity"] = {**tiny_params_dict["fidelity"], **fidelity}
    config = parse_config(tiny_params_dict)
    stopped = 0
    for method in method_names():
        (summary,) = run_search_stage(method, config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
        history = json.loads((tmp_path / "results" / f"{method}_search" / "seed-42_history.json").read_text())
        assert summary["evaluations"] == len(history["evaluations"]) == config.budget.evaluations
        finished = [r for r in history["evaluations"] if r["status"] == "finished"]
        if get_method(method).trains_in_intervals:  # PBT: each record is one member's 1-epoch interval
            assert all(r["run_id"] and len(r["epochs"]) == 1 for r in finished)
        else:
            assert all(r["run_id"] and len(r["epochs"]) == (1 if r["stopped_early"] else r["genome"]["epochs"])
                       for r in finished)  # fmt: skip
        stopped += sum(r["stopped_early"] for r in finished)
    if fidelity:
        assert stopped and not any((tmp_path / "ckpt").rglob("*.ckpt"))  # rungs ran; no training state outlives them


# -- rungs of multi-fidelity, fused -----------------------------------------------------------------------------------

from pipeline.config import FidelityConfig  # noqa: E402
from pipeline.training import population as population_module  # noqa: E402
from pipeline.training.fidelity import RungScheduledEvaluator  # noqa: E402
from pipeline.training.population import Member, _state_template, read_training_state, write_training_state  # noqa: E402


def leaves(tree, path=""):
    """Every leaf of a nested checkpoint, by its path."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{path}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in leaves(value, f"{path}/{i}").items()}
    return {path: tree}


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_a_state_written_for_a_member_is_the_one_a_fit_alone_saves(prepared_digits, tmp_path, momentum):
    context = dataclasses.replace(context_for(prepared_digits), train_config=TrainConfig(eval_batch_size=64))
    train, val = prepared_digits.load("train"), prepared_digits.load("val")
    g = genome(0.05, momentum, 0.01, 3)
    build = network_builder("architecture", context.model_config, context.image_shape, context.num_classes)
    fit_genome(g, seed=5, build_network=build, train_split=train, val_split=val, train_config=context.train_config,
               epochs=2, save_to=tmp_path / "alone.ckpt")  # fmt: skip
    start = read_training_state(tmp_path / "alone.ckpt")
    member = Member(0, g, 5, 2, 0.05, momentum, 0.01, history=start.history, state=start.weights,
                    momentum_state=start.momentum, lr_now=start.lr)  # fmt: skip
    template = _state_template(Proposal(g, "p"), context, train, val)
    write_training_state(
        tmp_path / "written.ckpt", template, member, math.ceil(len(train) / 32), math.ceil(len(val) / 64)
    )
    alone_state, written = (leaves(torch.load(tmp_path / f, weights_only=True)) for f in ("alone.ckpt", "written.ckpt"))
    assert alone_state.keys() == written.keys()
    for key, value in alone_state.items():
        if key.startswith("/evohpo_torch_rng"):
            continue  # the random state: a group draws from its own (no dropout here: nothing draws)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, written[key]), key
        else:
            assert value == written[key], key


@pytest.mark.slow
def test_rungs_trained_fused_end_as_rungs_trained_alone(prepared_digits, tmp_path, monkeypatch):
    context = context_for(prepared_digits)
    genomes = [genome(lr, m, 0.001, 3) for lr, m in ((0.05, 0.9), (0.02, 0.5), (0.1, 0.0), (0.01, 0.9))]
    fidelity = FidelityConfig(rungs=[1, 2], eta=2)
    groups = []
    real = population_module.train_group

    def spied(proposals, positions, *args, **kwargs):
        groups.append([proposals[p].resume.epochs for p in positions])
        return real(proposals, positions, *args, **kwargs)

    monkeypatch.setattr(population_module, "train_group", spied)
    results = {}
    for name, inner in (("alone", SequentialEvaluator(prepared_digits, context)),
                        ("fused", PopulationEvaluator(prepared_digits, context))):  # fmt: skip
        evaluator = RungScheduledEvaluator(inner, fidelity, tmp_path / name, "f")
        results[name] = dict(evaluator.evaluate(proposals_of(genomes)))
    assert groups == [[1, 1, 1, 1], [2, 2]]  # the first rung, then the two promoted, each as one fit
    for position in range(len(genomes)):
        alone_record, fused = results["alone"][position], results["fused"][position]
        assert (fused.rung, fused.stopped_early, len(fused.epochs)) == \
            (alone_record.rung, alone_record.stopped_early, len(alone_record.epochs))  # fmt: skip
        for grouped, single in zip(fused.epochs, alone_record.epochs):
            for key in single:
                assert grouped[key] == pytest.approx(single[key], rel=1e-3, abs=1e-4), (position, key)
    assert [r.rung for r in results["fused"].values()].count(2) == 1  # the last rung: resumed alone from a fused state
