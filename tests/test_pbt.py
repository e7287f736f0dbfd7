"""Population Based Training: exploit and explore, its seeded schedule, the budget it counts, bad
settings refused by key, exact continuation from a copied state, the champion's replay, and a kill
between intervals."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import parse_config
from pipeline.config.sections import PBTConfig
from pipeline.errors import ConfigError
from pipeline.evaluation import FunctionEvaluator, Proposal, Resume, Scored
from pipeline.search.pbt import (
    PopulationBasedTraining, best_member, explore, interval_ends, perturbable, quantiles, schedule_of,
)  # fmt: skip
from pipeline.space import SearchSpace, genome_seed
from pipeline.study.runner import SearchRunner
from pipeline.study.search_stage import epoch_cost, run_search_stage
from tests.conftest import MIXED_SPACE, tiny_params


def space_of(epochs_high: int = 3) -> SearchSpace:
    genes = {**MIXED_SPACE["genes"], "epochs": {"type": "int", "low": 1, "high": epochs_high}}
    return SearchSpace.from_config(parse_config({**tiny_params(), "space": {"genes": genes}}).space)


class IntervalEvaluator(FunctionEvaluator):
    """Scores without training: one history entry per epoch of the interval, as the trainers keep them."""

    def score(self, proposal):
        record = super().score(proposal)
        resume = proposal.resume
        return dataclasses.replace(record, epochs=[{"val_acc": record.val_score}] * (resume.epochs - resume.start_epoch),
                                   first_epoch=resume.start_epoch)  # fmt: skip


def pbt_run(seed: int, budget: int = 12, population: int = 4, fitness=lambda g: g["learning_rate"], **settings):
    strategy = PopulationBasedTraining(space_of(), PBTConfig(population_size=population, **settings), seed,
                                       budget=budget)  # fmt: skip
    runner = SearchRunner(strategy, IntervalEvaluator(fitness), budget)
    return strategy, runner.run()


# -- the strategy, without training -------------------------------------------------------------------------------------


def test_intervals_end_every_interval_and_at_the_horizon():
    assert interval_ends(3, 1) == (1, 2, 3)
    assert interval_ends(5, 2) == (2, 4, 5)
    assert interval_ends(4, 4) == (4,)


def test_quantiles_are_formed_as_ray_tune_forms_them():
    fitness = [0.1, 0.5, 0.3, 0.9]
    assert quantiles(fitness, 0.25) == ([0], [3])  # ceil(4 x 0.25) = 1 each
    assert quantiles(fitness, 0.5) == ([2, 0], [3, 1])
    assert quantiles([0.2, 0.2, 0.1], 0.5) == ([2], [0])  # at most half; ties: the lower index ranks higher
    assert quantiles([0.3, -math.inf], 0.25) == ([1], [0])  # a failed member is at the bottom


def test_explore_perturbs_only_the_genes_pbt_may_change_within_their_ranges_from_its_own_generator():
    space = space_of()
    settings = PBTConfig(resample_probability=0.25)
    dimensions = perturbable(space)
    assert [d.name for d in dimensions] == ["learning_rate", "momentum", "weight_decay"]
    genome = space.sample(np.random.default_rng(0))
    outcomes = [explore(genome, dimensions, settings, np.random.default_rng(seed)) for seed in range(40)]
    assert outcomes[0] == explore(genome, dimensions, settings, np.random.default_rng(0))  # same seed, same genes
    assert len({json.dumps(o[0], sort_keys=True) for o in outcomes}) > 30
    for explored, changed in outcomes:
        assert {k: explored[k] for k in ("batch_size", "epochs")} == {k: genome[k] for k in ("batch_size", "epochs")}
        assert space.contains(explored)
        assert changed == {k: [genome[k], explored[k]] for k in genome if explored[k] != genome[k]}
    ratios = {round(o[0]["learning_rate"] / genome["learning_rate"], 9) for o in outcomes}
    assert {1.2, 0.8} <= ratios  # perturbed by Ray's factors; the other ratios are redraws


def test_same_seed_same_schedule_and_the_bottom_member_copies_a_top_one():
    first, records = pbt_run(seed=5)
    again, records_again = pbt_run(seed=5)
    other, _ = pbt_run(seed=6)
    assert first.history() == again.history() and [r.genome for r in records] == [r.genome for r in records_again]
    assert first.history() != other.history()
    assert len(records) == 12 and first.stop_reason == "every member trained to 3 epochs (3 intervals)"
    for before, after in zip(first.history(), first.history()[1:]):
        scores = [m["val_score"] for m in before["members"]]
        bottom, top = quantiles(scores, 0.25)
        for member in after["members"]:
            source = member["copied_from"]
            if member["member"] in bottom:
                assert source in top  # exploit: a top member's state and genes
                copied = before["members"][source]["genome"]
                assert {k: member["genome"][k] for k in ("batch_size", "epochs")} == {
                    k: copied[k] for k in ("batch_size", "epochs")
                }
                assert member["explored"]  # explore changed at least one gene
            else:
                assert source is None and member["genome"] == before["members"][member["member"]]["genome"]


def test_each_interval_resumes_from_the_state_its_member_starts_from(tmp_path):
    strategy = PopulationBasedTraining(space_of(), PBTConfig(population_size=4), seed=1, state_dir=tmp_path)
    batch = strategy.ask()
    assert [p.resume for p in batch.proposals] == [
        Resume(epochs=1, resume_from=None, save_to=tmp_path / "interval-0" / f"member-{m}.ckpt", start_epoch=0)
        for m in range(4)]  # fmt: skip
    strategy.tell([Scored(IntervalEvaluator(lambda g: g["momentum"]).score(p), True) for p in batch.proposals])
    history = strategy.history()[0]["members"]
    (bottom,), (top,) = quantiles([m["val_score"] for m in history], 0.25)
    second = strategy.ask()
    for member, proposal in enumerate(second.proposals):
        source = top if member == bottom else member
        assert proposal.resume == Resume(
            epochs=2,
            resume_from=tmp_path / "interval-0" / f"member-{source}.ckpt",
            save_to=tmp_path / "interval-1" / f"member-{member}.ckpt",
            start_epoch=1,
        )
        assert proposal.tags["copied_from"] == (top if member == bottom else "")
    # A genome trained the interval before is trained again: the runner keys it by member and interval.
    assert len({p.cache_key for p in (*batch.proposals, *second.proposals)}) == 8


def test_the_budget_counts_intervals_and_an_epoch_budget_their_epochs():
    strategy, records = pbt_run(seed=2, budget=6)
    assert len(records) == 6 and strategy.stop_reason == "budget spent in interval 1 (at 2 epochs)"
    assert [r.first_epoch for r in records] == [0, 0, 0, 0, 1, 1]
    params = tiny_params()
    params["pbt"] = {"perturbation_interval": 2}
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": 3}
    cost = epoch_cost(parse_config(params), "pbt")
    proposal = Proposal({"epochs": 3}, "p", resume=Resume(epochs=3, start_epoch=2))
    assert cost(proposal) == 1.0  # the interval's epochs, not the genome's
    strategy = PopulationBasedTraining(space_of(), PBTConfig(population_size=4), seed=2)
    runner = SearchRunner(strategy, IntervalEvaluator(lambda g: g["learning_rate"]), 100, epoch_budget=7,
                          epoch_cost=epoch_cost(parse_config(tiny_params()), "pbt"))  # fmt: skip
    assert sum(len(r.epochs) for r in runner.run()) == 7


def test_the_schedule_follows_whose_state_each_interval_copied():
    strategy, records = pbt_run(seed=3)
    intervals = strategy.history()
    best = best_member(intervals)
    for member in range(4):
        schedule = schedule_of(intervals, 2, member)
        assert [s["epochs"] for s in schedule] == [1, 2, 3]
        assert schedule[-1]["genome"] == intervals[2]["members"][member]["genome"]
        for k in (1, 2):  # each step's member is the one whose state the next step started from
            entry = intervals[k]["members"][schedule[k]["member"]]
            assert schedule[k - 1]["member"] == (entry["copied_from"] if entry["copied_from"] is not None
                                                 else schedule[k]["member"])  # fmt: skip
    interval, member = best
    assert max(r.fitness for r in records) == intervals[interval]["members"][member]["val_score"]
    assert strategy.summary()["best_schedule"] == schedule_of(intervals, interval, member)


@pytest.mark.parametrize(
    ("pbt", "key"),
    [
        ({"perturbation_interval": 3}, "pbt.perturbation_interval"),  # the largest epochs gene is 2
        ({"quantile_fraction": 0.6}, "pbt.quantile_fraction"),
        ({"quantile_fraction": 0.0}, "pbt.quantile_fraction"),
        ({"perturbation_factors": [1.2, 0.0]}, "pbt.perturbation_factors"),
        ({"population_size": 1}, "pbt.population_size"),
    ],
)
def test_bad_pbt_settings_are_refused_naming_the_key(pbt, key):
    params = tiny_params()
    params["pbt"] = pbt
    with pytest.raises(ConfigError) as caught:
        parse_config(params)
    assert key in str(caught.value)


# -- with training (digits) ---------------------------------------------------------------------------------------------

from pipeline.training.evaluator import SequentialEvaluator, TrainingContext  # noqa: E402
from pipeline.training.fit import fit_genome  # noqa: E402
from pipeline.training.population import PopulationEvaluator  # noqa: E402
from pipeline.training.schedule import replay_schedule  # noqa: E402


def tiny_pbt_config(epochs_high: int = 2, budget: int = 6, population: int = 3):
    params = tiny_params()
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": epochs_high}
    params["budget"]["evaluations"] = budget
    params["pbt"] = {"population_size": population, "quantile_fraction": 0.5}
    return parse_config(params)


def trained_pbt(prepared, state_dir, config, evaluator=None):
    context = TrainingContext.for_study(config, prepared)
    strategy = PopulationBasedTraining(
        SearchSpace.from_config(config.space), config.pbt, config.seed, state_dir=state_dir
    )
    evaluator = evaluator or SequentialEvaluator(prepared, context)
    return strategy, SearchRunner(strategy, evaluator, config.budget.evaluations).run(), context


@pytest.mark.slow
def test_a_copied_member_trains_on_from_the_copied_state_with_its_own_explored_genes(prepared_digits, tmp_path):
    config = tiny_pbt_config()
    strategy, records, context = trained_pbt(prepared_digits, tmp_path / "states", config)
    second = strategy.history()[1]["members"]
    (copied,) = [m for m in second if m["copied_from"] is not None]
    record = records[3 + copied["member"]]
    # The same interval, as a fit resumed from the copied member's saved state (weights, momentum, schedule).
    source_state = tmp_path / "states" / "interval-0" / f"member-{copied['copied_from']}.ckpt"
    genome = copied["genome"]
    alone = fit_genome(genome, seed=genome_seed(config.seed, genome), build_network=context.network_builder(),
                       train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
                       train_config=config.train, epochs=2, resume_from=source_state)  # fmt: skip
    assert record.epochs == alone.module.epoch_metrics[1:] and record.first_epoch == 1
    # It trained with its own explored rate on the copied schedule (StepLR, gamma 0.7), not the source's.
    assert record.epochs[0]["lr"] == pytest.approx(genome["learning_rate"] * config.train.lr_gamma, rel=1e-12)
    assert alone.trainer.optimizers[0].param_groups[0]["momentum"] == genome["momentum"]
    # The copied state is the source's (its first epoch is the source's record), and it matters: the
    # explored genes trained from scratch end elsewhere.
    assert alone.module.epoch_metrics[0] == records[copied["copied_from"]].epochs[0]
    assert torch.load(source_state, weights_only=True)["evohpo_epoch_metrics"] == records[copied["copied_from"]].epochs
    fresh = fit_genome(genome, seed=genome_seed(config.seed, genome), build_network=context.network_builder(),
                       train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
                       train_config=config.train, epochs=2)  # fmt: skip
    assert fresh.module.epoch_metrics[1] != record.epochs[0]


@pytest.mark.slow
def test_the_population_evaluator_trains_pbt_intervals_with_each_members_explored_rate(prepared_digits, tmp_path):
    config = tiny_pbt_config()
    context = TrainingContext.for_study(config, prepared_digits)
    strategy, records, _ = trained_pbt(prepared_digits, tmp_path / "states", config,
                                       PopulationEvaluator(prepared_digits, context))  # fmt: skip
    for member in strategy.history()[1]["members"]:
        record = records[3 + member["member"]]
        assert record.first_epoch == 1 and len(record.epochs) == 1
        assert record.epochs[0]["lr"] == pytest.approx(member["genome"]["learning_rate"] * 0.7, rel=1e-9)


@pytest.mark.slow
def test_the_replayed_schedule_equals_the_recorded_metrics(prepared_digits, tmp_path):
    config = tiny_pbt_config(epochs_high=3, budget=9)
    strategy, records, context = trained_pbt(prepared_digits, tmp_path / "states", config)
    intervals = strategy.history()
    assert any(m["copied_from"] is not None for k in intervals for m in k["members"])
    for member in range(3):
        schedule = schedule_of(intervals, 2, member)
        replayed = replay_schedule(schedule, study_seed=config.seed, build_network=context.network_builder(),
                                   train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
                                   train_config=config.train, task=context.task)  # fmt: skip
        lineage = [records[3 * k + step["member"]] for k, step in enumerate(schedule)]
        assert replayed.module.epoch_metrics == [epoch for record in lineage for epoch in record.epochs]


class Counting:
    """Notes each proposal it is handed (by member and interval), and dies after ``kill_after`` results."""

    def __init__(self, inner, kill_after=None):
        self.inner, self.kill_after, self.requested, self.results = inner, kill_after, [], 0

    def evaluate(self, proposals, on_start=None):
        self.requested += [p.identity for p in proposals]
        for item in self.inner.evaluate(proposals, on_start):
            yield item
            self.results += 1
            if self.results == self.kill_after:
                raise KeyboardInterrupt

    def close(self):
        self.inner.close()


@pytest.mark.slow
def test_a_kill_between_intervals_resumes_from_the_saved_states_and_its_best_schedule_replays(
    prepared_digits, tmp_path, monkeypatch
):
    import pipeline.study.search_stage as search_stage

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    config = tiny_pbt_config(epochs_high=3, budget=9)
    made = []
    real = search_stage.make_evaluator

    def counted(*args, kill_after=None, **kwargs):
        made.append(Counting(real(*args, **kwargs), kill_after))
        return made[-1]

    monkeypatch.setattr(search_stage, "make_evaluator", lambda *a, **k: counted(*a, kill_after=4, **k))
    with pytest.raises(KeyboardInterrupt):  # killed after interval 0 and one member of interval 1
        run_search_stage("pbt", config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert sorted((tmp_path / "ckpt" / "pbt_search" / "seed-42-states" / "interval-0").glob("*.ckpt"))
    monkeypatch.setattr(search_stage, "make_evaluator", counted)
    (summary,) = run_search_stage("pbt", config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    assert made[1].requested == [
        "member-1/interval-1",
        "member-2/interval-1",
        "member-0/interval-2",
        "member-1/interval-2",
        "member-2/interval-2",
    ]  # nothing finished trains again
    assert not (tmp_path / "ckpt" / "pbt_search" / "seed-42-states").exists()  # dropped once the search ended
    # Equal to an uninterrupted run, and no member's interval FINISHED twice in MLflow.
    monkeypatch.setattr(search_stage, "make_evaluator", real)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "clean"))
    (clean,) = run_search_stage("pbt", config, prepared_digits.folder, tmp_path / "clean" / "results",
                                tmp_path / "clean" / "ckpt")  # fmt: skip
    history = json.loads((tmp_path / "results" / "pbt_search" / "seed-42_history.json").read_text())
    clean_history = json.loads((tmp_path / "clean" / "results" / "pbt_search" / "seed-42_history.json").read_text())
    assert history["generations"] == clean_history["generations"]
    assert summary["best_schedule"] == clean["best_schedule"] and summary["epochs_trained"] == 9
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=500)
    finished = Counter(
        r.info.run_name for r in runs if r.info.status == "FINISHED" and r.info.run_name.startswith("pbt-i")
    )
    assert len(finished) == 9 and set(finished.values()) == {1}
    for record in history["evaluations"]:
        run = client.get_run(record["run_id"])
        assert run.data.tags["member"] == str(record_member(record, history))
        steps = [m.step for m in client.get_metric_history(record["run_id"], "val_acc")]
        assert steps == list(range(record["first_epoch"], record["first_epoch"] + len(record["epochs"])))
    # The best member's schedule (what the champion replays on its own data) equals the record on the search's.
    context = TrainingContext.for_study(config, prepared_digits)
    replayed = replay_schedule(summary["best_schedule"], study_seed=42, build_network=context.network_builder(),
                               train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
                               train_config=config.train, task=context.task)  # fmt: skip
    assert replayed.module.epoch_metrics[-1]["val_acc"] == summary["best_val_acc"]


def record_member(record, history):
    """The member a record trained, from the lineage (its interval's members, in order)."""
    index = history["evaluations"].index(record)
    return index % len(history["generations"][0]["members"])


def test_a_failed_member_copies_a_finished_top_member_and_a_population_that_all_failed_stops():
    def fitness(genome):
        if genome["learning_rate"] > 0.05:
            raise FloatingPointError("diverged")
        return genome["momentum"]

    strategy, records = pbt_run(seed=4, population=6, fitness=fitness, quantile_fraction=0.25)
    first, second = strategy.history()[:2]
    failed = [m["member"] for m in first["members"] if m["status"] != "finished"]
    assert failed  # this seed draws some members past 0.05
    scores = [m["val_score"] if m["status"] == "finished" else -math.inf for m in first["members"]]
    _, top = quantiles(scores, 0.25)  # ceil(6 x 0.25) = 2
    assert all(math.isfinite(scores[m]) for m in top)
    for member in failed:
        assert second["members"][member]["copied_from"] in top
    strategy, records = pbt_run(seed=4, fitness=lambda genome: math.nan)
    assert len(records) == 4 and strategy.stop_reason == "every member failed in interval 0"


def test_a_budget_that_ends_with_an_interval_leaves_no_empty_interval():
    strategy, records = pbt_run(seed=2, budget=8)  # 4 members: two whole intervals
    assert len(records) == 8 and len(strategy.history()) == 2
    assert strategy.stop_reason == "budget spent after interval 1 (at 2 epochs)"
    assert strategy.summary()["intervals_trained"] == 2
    # Not told the budget (the runner's alone ends it), it asks a third interval that trains nothing:
    # no lineage entry for it.
    unaware = PopulationBasedTraining(space_of(), PBTConfig(population_size=4), 2)
    records = SearchRunner(unaware, IntervalEvaluator(lambda g: g["learning_rate"]), 8).run()
    assert len(records) == 8 and len(unaware.history()) == 2 and unaware.stop_reason == strategy.stop_reason


def test_pbt_searches_without_rungs_or_early_stopping():
    from pipeline.search.registry import own_training

    params = tiny_params()
    params["fidelity"] = {"rungs": [1], "eta": 3, "mode": "asynchronous"}
    params["train"]["early_stopping"] = {"patience": 1, "min_delta": 0.0}
    config = parse_config(params)
    pbt = own_training("pbt", config)
    assert pbt.fidelity.rungs is None and pbt.train.early_stopping is None  # an interval ends at its epoch
    assert own_training("ga", config) is config
