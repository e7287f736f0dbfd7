"""CMA-ES (Optuna's CmaEsSampler, ``pipeline/search/cmaes.py``), the method added in one file: built
through the registry from a study's params, seeded, within the space, and adapting toward better
genes. Fitness functions stand in for training: nothing trains."""

from __future__ import annotations

import math

import optuna

from pipeline.config import parse_config
from pipeline.evaluation import FunctionEvaluator
from pipeline.search.registry import get_method
from pipeline.space import make_space
from pipeline.study.runner import run_strategy

from tests.conftest import MIXED_SPACE, tiny_params

# Off the middle of every range, where CMA-ES starts.
OPTIMUM = {"learning_rate": 5.0e-4, "momentum": 0.85, "weight_decay": 0.08}


def distance(genome: dict) -> float:
    """How far a genome's continuous genes are from ``OPTIMUM`` (learning rate on its log scale)."""
    return math.sqrt(
        (math.log10(genome["learning_rate"]) - math.log10(OPTIMUM["learning_rate"])) ** 2
        + (genome["momentum"] - OPTIMUM["momentum"]) ** 2
        + (10 * (genome["weight_decay"] - OPTIMUM["weight_decay"])) ** 2
    )


def search(method: str, seed: int, budget: int) -> list:
    params = tiny_params() | {"seed": seed, "space": {"kind": "hyperparameters", **MIXED_SPACE}}
    params["budget"] = {**params["budget"], "evaluations": budget}
    config = parse_config(params)
    strategy = get_method(method).build(config, make_space(config.space, (1, 8, 8)))
    return strategy, run_strategy(strategy, FunctionEvaluator(lambda g: -distance(g)), budget)


def test_cmaes_is_built_from_the_registry_seeded_and_within_the_space():
    strategy, records = search("cmaes", seed=3, budget=24)
    assert isinstance(strategy.study.sampler, optuna.samplers.CmaEsSampler)
    assert len(records) == 24 and all(r.finished for r in records)
    genomes = [r.genome for r in records]
    assert genomes == [r.genome for r in search("cmaes", seed=3, budget=24)[1]]  # same seed, same genomes
    assert genomes != [r.genome for r in search("cmaes", seed=4, budget=24)[1]]
    for genome in genomes:
        assert 1.0e-4 <= genome["learning_rate"] <= 1.0 and 0.0 <= genome["momentum"] <= 0.9
        assert 1 <= genome["epochs"] <= 20 and genome["batch_size"] in (32, 64, 128, 256)
    # The choice gene CMA-ES does not model is drawn by its seeded random sampler: it varies.
    assert len({g["batch_size"] for g in genomes}) > 1
    assert strategy.summary()["sampler"] == "CmaEsSampler" and strategy.summary()["trials"] == 24


def test_cmaes_adapts_toward_the_optimum_where_random_search_does_not():
    """Over 5 seeds, CMA-ES's last 20 of 60 proposals lie nearer the optimum than its first 20, and
    nearer than random search's last 20: its Gaussian adapted."""
    cma_first, cma_last, random_last = [], [], []
    for seed in range(5):
        cma = [distance(r.genome) for r in search("cmaes", seed, 60)[1]]
        rand = [distance(r.genome) for r in search("random", seed, 60)[1]]
        cma_first.append(sum(cma[:20]) / 20)
        cma_last.append(sum(cma[-20:]) / 20)
        random_last.append(sum(rand[-20:]) / 20)
    assert sum(cma_last) < 0.7 * sum(cma_first)
    assert sum(cma_last) < 0.7 * sum(random_last)
