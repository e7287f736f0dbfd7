"""Grid and random search over architecture genomes (scikit-learn's samplers)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.space.architecture import ArchitectureSpace
from pipeline.search.grid import architecture_grid_genomes
from pipeline.search.random import architecture_random_genomes
from pipeline.config import SpaceConfig, parse_config
from pipeline.space import genome_hash

from tests.conftest import MIXED_SPACE, tiny_params

CONFIG = SpaceConfig.model_validate({"kind": "architecture", **MIXED_SPACE})
SPACES = {
    "28x28": ArchitectureSpace.from_config(CONFIG, (1, 28, 28)),
    "8x8": ArchitectureSpace.from_config(CONFIG, (1, 8, 8)),
}
SPACES["grown"] = SPACES["8x8"].grow(SPACES["8x8"].sample(np.random.default_rng(3)), 2)


def test_tiny_study_config_with_architecture_kind():
    params = tiny_params()
    params["space"]["kind"] = "architecture"
    config = parse_config(params)
    space = ArchitectureSpace.from_config(config.space, (1, 8, 8))
    assert space.optimiser.names == list(params["space"]["genes"])
    assert space.conv_length == (1, 4) and space.fc_length == (1, 2)  # the defaults of config.layers
    assert space.contains(space.sample(np.random.default_rng(0)))


@pytest.mark.parametrize("budget", [1, 3, 5, 16, 40])
@pytest.mark.parametrize("name", sorted(SPACES))
def test_grid_genomes_distinct_feasible_within_budget(name, budget):
    space = SPACES[name]
    genomes = architecture_grid_genomes(space, budget)
    assert 1 <= len(genomes) <= budget
    assert all(space.contains(g) for g in genomes)
    assert len({genome_hash(g) for g in genomes}) == len(genomes)
    assert architecture_grid_genomes(space, budget) == genomes


def test_grid_varies_depth_first_with_middle_layer_genes():
    space = SPACES["28x28"]
    genomes = architecture_grid_genomes(space, 4)
    assert sorted((len(g["conv"]), len(g["fc"])) for g in genomes) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    middle_conv = {"filters": 32, "kernel_size": 5, "stride": 2, "padding": 1, "pool_size": 2, "pool_type": "avg",
                   "activation": "swish", "batch_norm": True, "skip": True}  # fmt: skip
    middle_fc = {"units": 64, "activation": "swish", "dropout": 0.2}
    # On 28x28 the first middle gene fits (28 -> 13 -> 6); later ones may be repaired.
    assert all(g["conv"][0] == middle_conv for g in genomes)
    assert all(gene == middle_fc for g in genomes for gene in g["fc"])


def test_grid_drops_duplicates_made_by_repair():
    # Middle gene here: kernel 5, stride 2, no padding, pool 2: 8x8 -> 1x1 after one layer, and no
    # allowed change fits a second one, so repair cuts every grid point to one conv layer.
    config = SpaceConfig.model_validate(
        {"kind": "architecture", **MIXED_SPACE,
         "architecture": {"conv": {"kernel_size": [3, 5], "padding": [0], "pool_size": [None, 2]}}}
    )  # fmt: skip
    space = ArchitectureSpace.from_config(config, (1, 8, 8))
    genomes = architecture_grid_genomes(space, 4)  # conv counts 2 and 4, fc counts 1 and 2
    assert sorted((len(g["conv"]), len(g["fc"])) for g in genomes) == [(1, 1), (1, 2)]
    assert all(space.contains(g) for g in genomes)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_random_genomes_reproducible_and_feasible(name):
    space = SPACES[name]
    genomes = architecture_random_genomes(space, 12, seed=7)
    assert len(genomes) == 12
    assert all(space.contains(g) for g in genomes)
    assert architecture_random_genomes(space, 12, seed=7) == genomes
    assert architecture_random_genomes(space, 12, seed=8) != genomes
    assert len({len(g["conv"]) for g in genomes}) > 1 and len({len(g["fc"]) for g in genomes}) > 1
    assert len({genome_hash(g) for g in genomes}) == 12
    assert all(g["conv"][: len(space.prefix)] == list(space.prefix) for g in genomes)


def test_random_genomes_cover_the_layer_choices():
    space = SPACES["28x28"]
    genomes = architecture_random_genomes(space, 40, seed=0)
    activations = {gene["activation"] for g in genomes for gene in g["conv"] + g["fc"]}
    assert activations == {"relu", "leaky_relu", "swish", "sigmoid"}
    assert {gene["filters"] for g in genomes for gene in g["conv"]} == {8, 16, 32, 64}
