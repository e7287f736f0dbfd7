"""Grid and random search: budget use, grid shape, membership, reproducibility."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.search.grid import grid_genomes, grid_levels
from pipeline.search.random import random_genomes
from pipeline.config import SpaceConfig, load_config
from pipeline.space import SearchSpace, genome_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW_SPACE = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["space"]

# A space whose discrete dimensions run out of levels quickly: 3 choices, 2 epochs.
SMALL_SPACE_DICT = {
    "genes": {
        "learning_rate": {"type": "float", "low": 1.0e-3, "high": 0.5, "log": True},
        "momentum": {"type": "float", "low": 0.0, "high": 0.9},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.01},
        "batch_size": {"type": "choice", "values": [16, 32, 64]},
        "epochs": {"type": "int", "low": 1, "high": 2},
    }
}


def space_from(space_dict: dict) -> SearchSpace:
    return SearchSpace.from_config(SpaceConfig.model_validate(copy.deepcopy(space_dict)))


PARAMS_SPACE = SearchSpace.from_config(load_config(REPO_ROOT / "params.yaml").space)
SMALL_SPACE = space_from(SMALL_SPACE_DICT)
SPACES = {"params": PARAMS_SPACE, "small": SMALL_SPACE}


# ----------------------------------------------------------------------------------------------------------------------
# grid_levels


@pytest.mark.parametrize("space_name", sorted(SPACES))
@settings(max_examples=150, deadline=None)
@given(budget=st.integers(min_value=1, max_value=500))
def test_grid_levels_fit_the_budget_and_are_maximal(space_name, budget):
    space = SPACES[space_name]
    levels = grid_levels(space, budget)
    assert list(levels) == space.names
    assert all(isinstance(n, int) and n >= 1 for n in levels.values())
    assert all(levels[d.name] <= d.max_levels for d in space.dimensions)
    size = math.prod(levels.values())
    assert size <= budget
    for dim in space.dimensions:
        if levels[dim.name] < dim.max_levels:
            grown = size // levels[dim.name] * (levels[dim.name] + 1)
            assert grown > budget, f"{dim.name} could grow to {levels[dim.name] + 1} and still fit {budget}"


def test_grid_levels_budget_one_is_a_single_point():
    assert grid_levels(PARAMS_SPACE, 1) == dict.fromkeys(PARAMS_SPACE.names, 1)
    assert len(grid_genomes(PARAMS_SPACE, 1)) == 1


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (2, {"learning_rate": 2, "momentum": 1, "weight_decay": 1, "batch_size": 1, "epochs": 1}),
        (16, {"learning_rate": 2, "momentum": 2, "weight_decay": 2, "batch_size": 2, "epochs": 1}),
        (32, {"learning_rate": 2, "momentum": 2, "weight_decay": 2, "batch_size": 2, "epochs": 2}),
        (60, {"learning_rate": 3, "momentum": 2, "weight_decay": 2, "batch_size": 2, "epochs": 2}),
    ],
    ids=["2", "16", "32", "60"],
)
def test_grid_levels_params_space_exact(budget, expected):
    assert grid_levels(PARAMS_SPACE, budget) == expected


def test_grid_levels_caps_discrete_dimensions_at_max_levels():
    levels = grid_levels(SMALL_SPACE, 10_000)
    assert levels["batch_size"] == 3
    assert levels["epochs"] == 2
    assert math.prod(levels.values()) <= 10_000


# ----------------------------------------------------------------------------------------------------------------------
# grid_genomes


@pytest.mark.parametrize("space_name", sorted(SPACES))
@settings(max_examples=40, deadline=None)
@given(budget=st.integers(min_value=1, max_value=300))
def test_grid_genomes_distinct_in_space_and_full(space_name, budget):
    space = SPACES[space_name]
    genomes = grid_genomes(space, budget)
    assert len(genomes) == math.prod(grid_levels(space, budget).values())
    assert len(genomes) <= budget
    assert all(space.contains(g) for g in genomes)
    assert len({genome_hash(g) for g in genomes}) == len(genomes)


def test_grid_genomes_params_space_budget_16():
    genomes = grid_genomes(PARAMS_SPACE, 16)
    assert len(genomes) == 16
    assert all(PARAMS_SPACE.contains(g) for g in genomes)
    assert len({genome_hash(g) for g in genomes}) == 16
    # Two cell centres per float dimension, two of the four batch sizes, the middle epoch count.
    assert sorted({g["learning_rate"] for g in genomes}) == pytest.approx([1e-3, 1e-1])
    assert sorted({g["momentum"] for g in genomes}) == pytest.approx([0.225, 0.675])
    assert sorted({g["weight_decay"] for g in genomes}) == pytest.approx([0.025, 0.075])
    assert sorted({g["batch_size"] for g in genomes}) == [32, 256]
    assert {g["epochs"] for g in genomes} == {2}


def test_grid_genomes_is_deterministic():
    assert grid_genomes(PARAMS_SPACE, 50) == grid_genomes(PARAMS_SPACE, 50)


def test_grid_genomes_with_log_int_dimension_uses_its_levels():
    """A log-scaled int gene (here epochs 1..3) must not shrink the grid below the size grid_levels
    planned: budget 243 plans 3 levels on each of 5 genes = 243 trainings."""
    space_dict = copy.deepcopy(RAW_SPACE)
    space_dict["genes"]["epochs"] = {"type": "int", "low": 1, "high": 3, "log": True}
    space = space_from(space_dict)
    levels = grid_levels(space, 243)
    assert levels == dict.fromkeys(space.names, 3)
    genomes = grid_genomes(space, 243)
    assert len(genomes) == 243, f"grid has {len(genomes)} points for a planned {math.prod(levels.values())}"


# ----------------------------------------------------------------------------------------------------------------------
# random_genomes


@pytest.mark.parametrize("space_name", sorted(SPACES))
@settings(max_examples=40, deadline=None)
@given(budget=st.integers(min_value=1, max_value=60), seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_random_genomes_length_membership_reproducibility(space_name, budget, seed):
    space = SPACES[space_name]
    genomes = random_genomes(space, budget, seed)
    assert len(genomes) == budget
    assert all(space.contains(g) for g in genomes)
    assert random_genomes(space, budget, seed) == genomes


@pytest.mark.parametrize("seed", [0, 1, 42, 12345])
def test_random_genomes_other_seed_other_list(seed):
    genomes = random_genomes(PARAMS_SPACE, 16, seed)
    other = random_genomes(PARAMS_SPACE, 16, seed + 1)
    assert genomes != other
    assert {genome_hash(g) for g in genomes}.isdisjoint({genome_hash(g) for g in other})
    assert len({genome_hash(g) for g in genomes}) == 16


def test_random_genomes_cover_the_space():
    genomes = random_genomes(PARAMS_SPACE, 400, 0)
    assert {g["batch_size"] for g in genomes} == {32, 64, 128, 256}
    assert {g["epochs"] for g in genomes} == {1, 2, 3}
    lrs = [g["learning_rate"] for g in genomes]
    # Log-uniform over [1e-4, 1]: about a quarter of draws in each decade, so below 1e-3 is common.
    assert sum(lr < 1e-3 for lr in lrs) > 50
    assert sum(lr > 1e-1 for lr in lrs) > 50
    momenta = [g["momentum"] for g in genomes]
    assert min(momenta) < 0.1 and max(momenta) > 0.8


def test_random_genomes_log_int_dimension():
    space_dict = copy.deepcopy(SMALL_SPACE_DICT)
    space_dict["genes"]["epochs"] = {"type": "int", "low": 1, "high": 100, "log": True}
    space = space_from(space_dict)
    genomes = random_genomes(space, 300, 3)
    assert all(space.contains(g) for g in genomes)
    epochs = [g["epochs"] for g in genomes]
    assert sum(e <= 10 for e in epochs) > 100  # log-uniform: half the draws in 1..10
