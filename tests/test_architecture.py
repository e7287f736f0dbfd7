"""Architecture genomes: the space, repair, the layer operators, and the network built from them."""

from __future__ import annotations

import copy
import functools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.operators.layers import (
    LAYER_CROSSOVERS,
    crossover_architecture,
    crossover_layers_cut_splice,
    crossover_layers_mix,
    mutate_architecture,
    mutate_layer_genes,
    mutate_length,
)
from pipeline.space.architecture import (
    CONV_KEYS,
    FC_KEYS,
    ArchitectureSpace,
    InfeasibleGenome,
    conv_block_output_size,
    feature_shape,
)
from pipeline.config import SpaceConfig
from pipeline.training.models import ArchitectureNet, build_architecture_network, freeze_conv_layers
from pipeline.operators.crossover import crossover_uniform
from pipeline.operators.mutation import mutate_resample
from pipeline.space import FloatDimension, SearchSpace, genome_hash

from tests.conftest import MIXED_SPACE


def space_config(**architecture: Any) -> SpaceConfig:
    """An architecture SpaceConfig over the shared optimiser genes; ``architecture`` overrides."""
    raw = {"kind": "architecture", **MIXED_SPACE}
    if architecture:
        raw["architecture"] = architecture
    return SpaceConfig.model_validate(raw)


SPACE_28 = ArchitectureSpace.from_config(space_config(), (1, 28, 28))
SPACE_8 = ArchitectureSpace.from_config(space_config(), (1, 8, 8))
OPTIMISER = {"learning_rate": 0.01, "momentum": 0.5, "weight_decay": 0.01, "batch_size": 64, "epochs": 2}

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
HYPOTHESIS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conv_gene(**changes: Any) -> dict[str, Any]:
    gene = {"filters": 8, "kernel_size": 3, "stride": 1, "padding": 1, "pool_size": None, "pool_type": "max",
            "activation": "relu", "batch_norm": False, "skip": False}  # fmt: skip
    assert set(changes) <= set(gene)
    return gene | changes


def fc_gene(**changes: Any) -> dict[str, Any]:
    return {"units": 16, "activation": "relu", "dropout": 0.1} | changes


def genome(conv: list[dict], fc: list[dict] | None = None) -> dict[str, Any]:
    return {**OPTIMISER, "conv": conv, "fc": fc if fc is not None else [fc_gene()]}


def labelled(tag: str, count: int) -> list[dict[str, Any]]:
    """Genes whose every value tells which parent and slot they came from."""
    return [{"a": f"{tag}{i}a", "b": f"{tag}{i}b", "c": f"{tag}{i}c"} for i in range(count)]


def forward_shape(g: dict[str, Any], image_shape: tuple[int, int, int]) -> tuple[int, ...]:
    net = build_architecture_network(g, image_shape, 10).eval()
    with torch.no_grad():
        return tuple(net(torch.zeros(2, *image_shape)).shape)


# ----------------------------------------------------------------------------------------------------------------------
# The space


def test_from_config_reads_the_layers_section():
    space = ArchitectureSpace.from_config(
        space_config(conv_layers={"min": 2, "max": 3}, fc={"units": [32, 64]}), (3, 32, 32)
    )
    assert space.optimiser.names == list(MIXED_SPACE["genes"])
    assert space.conv.names == list(CONV_KEYS) and space.fc.names == list(FC_KEYS)
    assert space.conv["pool_size"].values == (None, 2, 3)
    assert space.fc["units"].values == (32, 64)
    assert space.conv_length == (2, 3) and space.fc_length == (1, 2)
    assert space.image_shape == (3, 32, 32) and space.prefix == ()
    assert space.names == [*MIXED_SPACE["genes"], "conv", "fc"]


def test_from_config_refuses_a_space_with_no_trainable_network():
    config = space_config(conv_layers={"min": 2, "max": 3}, conv={"kernel_size": [7], "padding": [0]})
    with pytest.raises(InfeasibleGenome, match=r"8x8 images.*conv 1"):
        ArchitectureSpace.from_config(config, (1, 8, 8))


def test_contains_rejects_each_kind_of_fault():
    good = genome([conv_gene(), conv_gene(filters=16)])
    assert SPACE_8.contains(good)
    reordered = {"conv": good["conv"], **OPTIMISER, "fc": good["fc"]}
    bad_value = genome([conv_gene(filters=12)])
    bad_type = genome([conv_gene(batch_norm=1)])
    too_long = genome([conv_gene()] * 5)
    too_short = genome([conv_gene()], fc=[])
    bad_key = genome([{**conv_gene(), "extra": 1}])
    unfit = genome([conv_gene(kernel_size=7, padding=0, stride=2, pool_size=3)])  # 8 -> 1 -> pool 3 -> 0
    bad_optimiser = {**good, "momentum": 2.0}
    for fault in (reordered, bad_value, bad_type, too_long, too_short, bad_key, unfit, bad_optimiser):
        assert not SPACE_8.contains(fault), fault


def test_contains_checks_the_prefix():
    prefix = [conv_gene(filters=16), conv_gene(kernel_size=5)]
    grown = SPACE_28.grow(genome(prefix), 2)
    assert grown.contains(genome([*prefix, conv_gene()]))
    assert not grown.contains(genome([prefix[0], conv_gene(kernel_size=7), conv_gene()]))  # prefix changed
    assert not grown.contains(genome(prefix))  # no new layer: below conv_length (1, 2)
    assert not grown.contains(genome([conv_gene(), *prefix]))  # prefix moved


def test_canonical_turns_numpy_scalars_into_python_values():
    raw = genome([conv_gene(filters=np.int64(16), batch_norm=np.bool_(True), pool_size=np.int64(2))],
                 [fc_gene(dropout=np.float64(0.25), activation=np.str_("swish"))])  # fmt: skip
    raw["epochs"] = np.int64(3)
    canonical = SPACE_28.canonical(raw)
    assert SPACE_28.contains(canonical)
    assert type(canonical["conv"][0]["filters"]) is int and type(canonical["conv"][0]["batch_norm"]) is bool
    assert type(canonical["fc"][0]["dropout"]) is float and type(canonical["epochs"]) is int
    json.dumps(canonical)  # plain JSON, so genome_hash works
    assert genome_hash(canonical) == genome_hash(SPACE_28.canonical(canonical))


@pytest.mark.parametrize("space", [SPACE_28, SPACE_8], ids=["28x28", "8x8"])
@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_sampled_genomes_are_in_the_space_and_run(space, seed):
    g = space.sample(np.random.default_rng(seed))
    assert space.contains(g)
    assert g == space.sample(np.random.default_rng(seed))
    assert forward_shape(g, space.image_shape) == (2, 10)


def test_sample_varies_the_lengths():
    lengths = {(len(g["conv"]), len(g["fc"])) for g in (SPACE_28.sample(np.random.default_rng(s)) for s in range(60))}
    assert lengths == {(c, f) for c in range(1, 5) for f in (1, 2)}


# ----------------------------------------------------------------------------------------------------------------------
# Spatial arithmetic and repair


@pytest.mark.parametrize("pool", [None, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_block_size_matches_pytorch(kernel, stride, pool):
    for size in range(1, 12):
        for padding in (0, 1, 2):
            gene = conv_gene(kernel_size=kernel, stride=stride, padding=padding, pool_size=pool)
            expected = conv_block_output_size(size, gene)
            layers = [nn.Conv2d(1, 1, kernel, stride, padding)] + ([nn.MaxPool2d(pool)] if pool else [])
            try:
                actual = nn.Sequential(*layers)(torch.zeros(1, 1, size, size)).shape[-1]
            except RuntimeError:
                actual = None
            if expected >= 1:
                assert actual == expected, (size, gene)
            else:
                assert actual in (None, 0), (size, gene)  # PyTorch refuses (or yields an empty image)


def test_feature_shape_names_the_first_unfit_layer():
    conv = [conv_gene(filters=16, padding=0), conv_gene(kernel_size=7, padding=0), conv_gene()]
    assert feature_shape((1, 28, 28), conv) == (8, 20, 20)
    with pytest.raises(InfeasibleGenome, match=r"conv 1 does not fit its 6x6 input"):
        feature_shape((1, 8, 8), conv)


def test_repair_of_big_kernels_strides_and_pools_on_8x8():
    layer = conv_gene(kernel_size=7, stride=2, padding=0, pool_size=3)
    raw = genome([layer, dict(layer), dict(layer)])
    before = copy.deepcopy(raw)
    repaired, notes = SPACE_8.repair(raw)
    assert raw == before
    assert notes == [
        "conv 0: pool 3 dropped (image 8x8)",  # 8 -> 1 by the conv alone
        "conv 1: pool 3 dropped (image 1x1)",
        "conv 1: stride 2 -> 1 (image 1x1)",
        "conv 1: kernel_size 7 -> 3 (image 1x1)",
        "conv 1: padding 0 -> 1 (image 1x1)",
        "conv 2: pool 3 dropped (image 1x1)",
        "conv 2: stride 2 -> 1 (image 1x1)",
        "conv 2: kernel_size 7 -> 3 (image 1x1)",
        "conv 2: padding 0 -> 1 (image 1x1)",
    ]
    small = conv_gene(kernel_size=3, stride=1, padding=1, pool_size=None)
    assert repaired["conv"] == [layer | {"pool_size": None}, small, small]
    assert SPACE_8.contains(repaired)
    assert forward_shape(repaired, (1, 8, 8)) == (2, 10)


def test_repair_leaves_a_feasible_genome_alone():
    raw = genome([conv_gene(kernel_size=5, stride=2, pool_size=2), conv_gene(kernel_size=3, padding=0)])
    repaired, notes = SPACE_28.repair(raw)
    assert repaired == raw and repaired is not raw and notes == []


# Only stride 2, no padding, and a pool on every layer: the repair steps that need stride 1, padding
# or no pool are not allowed and must be skipped.
RESTRICTED = {"kernel_size": [3, 5], "stride": [1, 2], "padding": [0], "pool_size": [None, 2]}


def test_repair_drops_layers_that_cannot_fit():
    config = space_config(conv_layers={"min": 2, "max": 4}, conv=RESTRICTED)
    space = ArchitectureSpace.from_config(config, (1, 8, 8))
    first = conv_gene(padding=0, pool_size=2)  # 8 -> 6 -> 3
    raw = genome([first, conv_gene(padding=0, pool_size=2), conv_gene(padding=0), conv_gene(padding=0)])
    repaired, notes = space.repair(raw)
    # conv 1: 3 -> 1, its pool of 2 dropped; conv 2 gets 1x1, which no kernel fits without padding.
    assert notes == ["conv 1: pool 2 dropped (image 3x3)", "conv 2: dropped with the 1 after it (image 1x1)"]
    assert repaired["conv"] == [first, conv_gene(padding=0)]
    assert space.contains(repaired)


def test_repair_raises_when_dropping_breaks_the_minimum():
    config = space_config(conv_layers={"min": 3, "max": 4}, conv=RESTRICTED)
    space = ArchitectureSpace.from_config(config, (1, 8, 8))  # 8 -> 6 -> 4 -> 2 fits three layers
    raw = genome([conv_gene(padding=0, pool_size=2)] * 3)
    with pytest.raises(InfeasibleGenome, match=r"conv 2 cannot fit its 1x1 input.*minimum 3"):
        space.repair(raw)


def test_repair_only_uses_allowed_values():
    config = space_config(conv={"kernel_size": [5, 7], "stride": [2], "padding": [0, 2], "pool_size": [2]})
    space = ArchitectureSpace.from_config(config, (1, 8, 8))
    raw = genome([conv_gene(kernel_size=7, stride=2, padding=0, pool_size=2)])
    repaired, notes = space.repair(raw)
    # No pool-free or stride-1 option: kernel 7 -> 5 gives 2x2 -> pool 1x1.
    assert notes == ["conv 0: kernel_size 7 -> 5 (image 8x8)"]
    assert space.contains(repaired)


def test_repair_raises_when_the_prefix_does_not_fit():
    space = SPACE_28.grow(genome([conv_gene(kernel_size=7, padding=0, pool_size=3)]), 2)  # 28 -> 22 -> 7
    too_small = ArchitectureSpace(space.optimiser, space.conv, space.fc, (1, 2), (1, 2), (1, 6, 6), space.prefix)
    with pytest.raises(InfeasibleGenome, match=r"conv 0 \(fixed by an earlier phase\) does not fit its 6x6"):
        too_small.repair(genome([*space.prefix, conv_gene()]))


SPACES_TO_REPAIR = {
    "default-8": SPACE_8,
    "restricted-8": ArchitectureSpace.from_config(space_config(conv=RESTRICTED), (1, 8, 8)),
    "default-6": ArchitectureSpace.from_config(space_config(), (1, 6, 10)),
}


@pytest.mark.parametrize("name", sorted(SPACES_TO_REPAIR))
@HYPOTHESIS
@given(seed=SEEDS)
def test_repaired_raw_draws_are_in_the_space_and_run(name, seed):
    space = SPACES_TO_REPAIR[name]
    rng = np.random.default_rng(seed)
    raw = genome([space.conv.sample(rng) for _ in range(int(rng.integers(1, 5)))], [space.fc.sample(rng)])
    before = copy.deepcopy(raw)
    try:
        repaired, notes = space.repair(raw)
    except InfeasibleGenome as exc:
        assert "conv" in str(exc)
        return
    assert raw == before
    assert space.contains(repaired)
    assert (notes == []) == (repaired == raw)
    assert all(note.startswith("conv ") for note in notes)
    assert forward_shape(repaired, space.image_shape) == (2, 10)


# ----------------------------------------------------------------------------------------------------------------------
# Layer operators: exact cases


def test_mix_copies_the_longer_parents_tail():
    a, b = labelled("a", 2), labelled("b", 4)
    child = crossover_layers_mix(a, b, np.random.default_rng(0))
    take_b = np.random.default_rng(0).random((2, 3)) < 0.5  # the documented draw
    assert child[:2] == [{k: (b[i] if take_b[i, j] else a[i])[k] for j, k in enumerate("abc")} for i in range(2)]
    assert child[2:] == b[2:] and child[2] is not b[2]
    assert crossover_layers_mix(b, a, np.random.default_rng(0))[2:] == b[2:]


def test_mix_takes_keys_from_both_parents():
    a, b = labelled("a", 3), labelled("b", 3)
    children = [crossover_layers_mix(a, b, np.random.default_rng(s)) for s in range(10)]
    sources = [value[0] for child in children for gene in child for value in gene.values()]
    assert 0.35 < sources.count("b") / len(sources) < 0.65


def test_mix_with_an_empty_parent_is_the_other():
    b = labelled("b", 2)
    assert crossover_layers_mix([], b, np.random.default_rng(0)) == b
    assert crossover_layers_mix([], [], np.random.default_rng(0)) == []


def test_cut_splice_is_a_prefix_of_a_then_a_suffix_of_b():
    a, b = labelled("a", 2), labelled("b", 3)
    valid = [(i, j) for i in range(3) for j in range(4) if 1 <= i + 3 - j <= 4]
    seen = set()
    for seed in range(300):
        child = crossover_layers_cut_splice(a, b, np.random.default_rng(seed), bounds=(1, 4))
        i = sum(g["a"].startswith("a") for g in child)
        j = 3 - (len(child) - i)
        assert child == a[:i] + b[j:] and 1 <= len(child) <= 4
        seen.add((i, j))
    assert seen == set(valid)  # every valid cut happens, nothing else
    i, j = valid[int(np.random.default_rng(0).integers(len(valid)))]
    assert crossover_layers_cut_splice(a, b, np.random.default_rng(0), bounds=(1, 4)) == a[:i] + b[j:]


def test_cut_splice_respects_tight_bounds():
    a, b = labelled("a", 1), labelled("b", 4)
    for seed in range(30):
        assert len(crossover_layers_cut_splice(a, b, np.random.default_rng(seed), bounds=(3, 3))) == 3
    with pytest.raises(ValueError, match="no cut"):
        crossover_layers_cut_splice(a, b, np.random.default_rng(0), bounds=(6, 7))


def test_layer_crossovers_share_a_call_shape():
    a, b = labelled("a", 2), labelled("b", 3)
    for method in LAYER_CROSSOVERS.values():
        assert 2 <= len(method(a, b, np.random.default_rng(1), bounds=(2, 3))) <= 3


@pytest.mark.parametrize("seed", range(5))
def test_mutate_length_rate_zero_keeps_the_genes(seed):
    layers = [conv_gene(), conv_gene(filters=16)]
    child = mutate_length(layers, SPACE_28.conv, np.random.default_rng(seed), rate=0.0, bounds=(1, 4))
    assert child == layers and child is not layers and child[0] is not layers[0]


def test_mutate_length_grows_and_shrinks_within_bounds():
    layers = [conv_gene(filters=8), conv_gene(filters=16)]
    lengths = set()
    for seed in range(100):
        child = mutate_length(layers, SPACE_28.conv, np.random.default_rng(seed), rate=1.0, bounds=(1, 4))
        assert 1 <= len(child) <= 4
        assert child[: len(layers)] == layers[: len(child)]  # genes dropped from the end only
        assert all(SPACE_28.conv.contains(g) for g in child)
        lengths.add(len(child))
    assert lengths == {1, 2, 3, 4}


def test_mutate_length_draws_documented():
    layers = [conv_gene()]
    rng = np.random.default_rng(4)
    length = min(max(round(float(rng.normal(1, math.sqrt(0.5 * 4)))), 1), 4)
    expected = layers[:length] + [SPACE_28.conv.sample(rng) for _ in range(length - 1)]
    assert mutate_length(layers, SPACE_28.conv, np.random.default_rng(4), rate=0.5, bounds=(1, 4)) == expected


def test_mutate_length_spread_grows_with_the_rate():
    # sd = sqrt(rate * bounds[1]): with rate 0.25 and at most 100 genes, lengths spread by 5.
    layers = [{"x": 0.5}] * 50
    space = SearchSpace((FloatDimension("x", 0.0, 1.0),))
    children = [mutate_length(layers, space, np.random.default_rng(s), rate=0.25, bounds=(0, 100)) for s in range(800)]
    lengths = [len(child) for child in children]
    assert np.mean(lengths) == pytest.approx(50, abs=0.6)
    assert np.std(lengths) == pytest.approx(5.0, rel=0.1)


def test_mutate_layer_genes_hits_each_key_at_the_rate():
    # Float keys: a redraw always changes the value, so the share changed is the share hit.
    space = SearchSpace((FloatDimension("x", 0.0, 1.0), FloatDimension("y", 0.0, 1.0)))
    layers = [{"x": 0.5, "y": 0.5}] * 500
    child = mutate_layer_genes(layers, space, np.random.default_rng(0), rate=0.3)
    changed = np.mean([gene[k] != 0.5 for gene in child for k in "xy"])
    assert changed == pytest.approx(0.3, abs=0.03)
    assert all(list(gene) == ["x", "y"] for gene in child)


def test_mutate_layer_genes():
    layers = [conv_gene(), conv_gene(filters=64)]
    assert mutate_layer_genes(layers, SPACE_28.conv, np.random.default_rng(0), rate=0.0) == layers
    # Rate 1 redraws every key like sampling: per gene, the hit draws then one sample per key.
    rng = np.random.default_rng(2)
    expected = []
    for _ in layers:
        rng.random(len(CONV_KEYS))
        expected.append(SPACE_28.conv.sample(rng))
    assert mutate_layer_genes(layers, SPACE_28.conv, np.random.default_rng(2), rate=1.0) == expected
    children = [mutate_layer_genes(layers, SPACE_28.conv, np.random.default_rng(s), rate=0.3) for s in range(20)]
    assert any(child != layers for child in children)
    assert all(SPACE_28.conv.contains(g) for child in children for g in child)


# ----------------------------------------------------------------------------------------------------------------------
# Whole-genome operators: properties

GROWN = SPACE_28.grow(genome([conv_gene(filters=16, pool_size=2), conv_gene(kernel_size=5)]), 2)
OPERATOR_SPACES = {"flat": SPACE_28, "grown": GROWN, "8x8": SPACE_8}
OPT_CROSSOVER = functools.partial(crossover_uniform, swap_prob=0.5)


def in_bounds(space: ArchitectureSpace, g: dict[str, Any]) -> bool:
    new_conv = len(g["conv"]) - len(space.prefix)
    conv_ok = space.conv_length[0] <= new_conv <= space.conv_length[1]
    return conv_ok and space.fc_length[0] <= len(g["fc"]) <= space.fc_length[1]


@pytest.mark.parametrize("method", sorted(LAYER_CROSSOVERS))
@pytest.mark.parametrize("name", sorted(OPERATOR_SPACES))
@HYPOTHESIS
@given(a_seed=SEEDS, b_seed=SEEDS, seed=SEEDS)
def test_crossover_architecture_properties(name, method, a_seed, b_seed, seed):
    space = OPERATOR_SPACES[name]
    a, b = space.sample(np.random.default_rng(a_seed)), space.sample(np.random.default_rng(b_seed))
    before = copy.deepcopy((a, b))
    cross = functools.partial(crossover_architecture, optimiser_crossover=OPT_CROSSOVER, layer_method=method)
    child = cross(a, b, space, np.random.default_rng(seed))
    assert (a, b) == before, "a parent was changed"
    assert list(child) == space.names
    assert child["conv"][: len(space.prefix)] == list(space.prefix)
    assert in_bounds(space, child)
    assert all(child[k] in (a[k], b[k]) for k in space.optimiser.names)
    assert cross(a, b, space, np.random.default_rng(seed)) == child, "same seed, different child"
    repaired, _ = space.repair(child)
    assert space.contains(repaired)


@pytest.mark.parametrize("name", sorted(OPERATOR_SPACES))
@HYPOTHESIS
@given(g_seed=SEEDS, seed=SEEDS, rate=st.floats(min_value=0.0, max_value=1.0))
def test_mutate_architecture_properties(name, g_seed, seed, rate):
    space = OPERATOR_SPACES[name]
    g = space.sample(np.random.default_rng(g_seed))
    before = copy.deepcopy(g)
    mutate = functools.partial(
        mutate_architecture, optimiser_mutation=functools.partial(mutate_resample, rate=rate), rate=rate
    )
    child = mutate(g, space, np.random.default_rng(seed))
    assert g == before, "the genome was changed"
    assert list(child) == space.names
    assert child["conv"][: len(space.prefix)] == list(space.prefix)
    assert in_bounds(space, child)
    assert mutate(g, space, np.random.default_rng(seed)) == child, "same seed, different child"
    repaired, _ = space.repair(child)
    assert space.contains(repaired)
    if rate == 0.0:
        assert child == g


def test_crossover_architecture_draw_order():
    a, b = SPACE_28.sample(np.random.default_rng(1)), SPACE_28.sample(np.random.default_rng(2))
    child = crossover_architecture(a, b, SPACE_28, np.random.default_rng(3), optimiser_crossover=OPT_CROSSOVER)
    rng = np.random.default_rng(3)
    opt = OPT_CROSSOVER(SPACE_28.optimiser_genes(a), SPACE_28.optimiser_genes(b), SPACE_28.optimiser, rng)
    conv = crossover_layers_mix(a["conv"], b["conv"], rng)
    assert child == {**opt, "conv": conv, "fc": crossover_layers_mix(a["fc"], b["fc"], rng)}
    with pytest.raises(KeyError, match="unknown layer crossover"):
        crossover_architecture(a, b, SPACE_28, rng, optimiser_crossover=OPT_CROSSOVER, layer_method="nope")


# ----------------------------------------------------------------------------------------------------------------------
# Diversity and growth


def test_diversity_of_clones_and_singletons_is_zero():
    g = SPACE_28.sample(np.random.default_rng(0))
    assert SPACE_28.diversity([g, copy.deepcopy(g), copy.deepcopy(g)]) == 0.0
    assert SPACE_28.diversity([g]) == 0.0 and SPACE_28.diversity([]) == 0.0


def test_diversity_exact_for_one_differing_key():
    a = genome([conv_gene()])
    b = genome([conv_gene(activation="swish")])
    # Parts: optimiser 0, conv slots 0.5 on 1 of 9 keys, fc slots 0, conv length 0, fc length 0.
    assert SPACE_28.diversity([a, b]) == pytest.approx(0.5 / 9 / 5)
    c = genome([conv_gene(), conv_gene()])  # one more layer: conv length spread std 0.5 over range 3
    assert SPACE_28.diversity([a, c]) == pytest.approx(0.5 / 3 / 5)


@HYPOTHESIS
@given(seeds=st.lists(SEEDS, min_size=2, max_size=8, unique=True))
def test_diversity_in_unit_interval_and_positive_for_distinct(seeds):
    genomes = [GROWN.sample(np.random.default_rng(s)) for s in seeds]
    diversity = GROWN.diversity(genomes)
    assert 0.0 <= diversity <= 1.0
    if len({genome_hash(g) for g in genomes}) > 1:
        assert diversity > 0.0


def test_grow_fixes_the_best_conv_genes():
    best = SPACE_28.sample(np.random.default_rng(5))
    before = copy.deepcopy(best)
    grown = SPACE_28.grow(best, 2)
    assert best == before
    assert list(grown.prefix) == best["conv"] and grown.prefix[0] is not best["conv"][0]
    assert grown.conv_length == (1, 2) and grown.fc_length == SPACE_28.fc_length
    for seed in range(20):
        g = grown.sample(np.random.default_rng(seed))
        assert g["conv"][: len(best["conv"])] == best["conv"]
        assert 1 <= len(g["conv"]) - len(best["conv"]) <= 2
        assert grown.contains(g)
        assert forward_shape(g, (1, 28, 28)) == (2, 10)
    again = grown.grow(grown.sample(np.random.default_rng(0)), 1)
    assert len(again.prefix) > len(grown.prefix) and again.conv_length == (1, 1)


def test_grow_refuses_a_prefix_that_leaves_no_room():
    space = ArchitectureSpace.from_config(space_config(conv=RESTRICTED), (1, 8, 8))
    best = genome([conv_gene(padding=0, pool_size=2), conv_gene(padding=0)])  # 8 -> 6 -> 3 -> 1
    with pytest.raises(InfeasibleGenome, match="no network"):
        space.grow(best, 2)


# ----------------------------------------------------------------------------------------------------------------------
# The network


def test_state_dict_keys_are_stable_by_layer_index():
    g = genome([conv_gene(batch_norm=True, skip=True), conv_gene()], [fc_gene(), fc_gene(units=8)])
    keys = set(build_architecture_network(g, (1, 28, 28), 10).state_dict())
    assert {"conv.0.conv.weight", "conv.0.norm.weight", "conv.0.shortcut.weight", "conv.1.conv.weight",
            "fc.0.linear.weight", "fc.1.linear.weight", "head.weight", "head.bias"} <= keys  # fmt: skip
    assert not any(k.startswith(("conv.1.norm", "conv.1.shortcut")) for k in keys)
    assert {k.split(".")[0] for k in keys} == {"conv", "fc", "head"}


def test_a_child_can_take_a_parents_matching_layers():
    parent = build_architecture_network(genome([conv_gene(filters=16), conv_gene()]), (1, 8, 8), 10)
    child = build_architecture_network(genome([conv_gene(filters=16), conv_gene(filters=32)]), (1, 8, 8), 10)
    child_state = child.state_dict()
    matching = {k: v for k, v in parent.state_dict().items() if k in child_state and v.shape == child_state[k].shape}
    assert "conv.0.conv.weight" in matching and "conv.1.conv.weight" not in matching
    child.load_state_dict(matching, strict=False)
    assert torch.equal(child.conv[0].conv.weight, parent.conv[0].conv.weight)


def test_blocks_follow_the_gene():
    g = genome([conv_gene(batch_norm=True, activation="leaky_relu", pool_size=2, pool_type="avg")],
               [fc_gene(activation="swish", dropout=0.25), fc_gene(activation="sigmoid")])  # fmt: skip
    net = build_architecture_network(g, (3, 16, 16), 7)
    block = net.conv[0]
    assert isinstance(block.norm, nn.BatchNorm2d) and isinstance(block.pool, nn.AvgPool2d) and block.shortcut is None
    assert isinstance(block.activation, nn.LeakyReLU) and block.activation.negative_slope == 0.01
    assert isinstance(net.fc[0].activation, nn.SiLU) and net.fc[0].dropout.p == 0.25
    assert isinstance(net.fc[1].activation, nn.Sigmoid)
    assert net.fc[0].linear.in_features == 8 * 8 * 8 and net.head.out_features == 7
    assert net(torch.zeros(4, 3, 16, 16)).shape == (4, 7)


@pytest.mark.parametrize("pool", [None, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_skip_connection_is_shape_safe(stride, pool):
    g = genome([conv_gene(filters=16, skip=True, stride=stride, pool_size=pool, kernel_size=5, padding=0),
                conv_gene(skip=True, padding=1)])  # fmt: skip
    net = build_architecture_network(g, (1, 28, 28), 10)
    assert isinstance(net.conv[0].shortcut, nn.Conv2d) and net.conv[0].shortcut.kernel_size == (1, 1)
    out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_no_conv_and_no_fc_layers():
    net = ArchitectureNet([], [], (1, 8, 8), 10)
    assert net.head.in_features == 64 and net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_build_refuses_an_unfit_genome():
    with pytest.raises(InfeasibleGenome, match="conv 0"):
        build_architecture_network(genome([conv_gene(kernel_size=7, padding=0, stride=2, pool_size=3)]), (1, 8, 8), 10)


def test_freeze_conv_layers_freezes_exactly_the_first_blocks():
    g = genome([conv_gene(batch_norm=True, skip=True), conv_gene(batch_norm=True), conv_gene()])
    net = build_architecture_network(g, (1, 8, 8), 10)
    freeze_conv_layers(net, 2)
    for name, parameter in net.named_parameters():
        frozen = name.startswith(("conv.0.", "conv.1."))
        assert parameter.requires_grad is not frozen, name
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert net.conv[0].conv.weight.grad is None and net.conv[2].conv.weight.grad is not None
    freeze_conv_layers(net, 0)  # nothing more
    assert net.conv[2].conv.weight.requires_grad
    with pytest.raises(ValueError, match="cannot freeze 4"):
        freeze_conv_layers(net, 4)
