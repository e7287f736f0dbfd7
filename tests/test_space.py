"""Dimensions and genomes: sampling, unit-scale mapping, grid levels, hashes and seeds."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import SpaceConfig
from pipeline.space import (
    ChoiceDimension,
    FloatDimension,
    IntDimension,
    SearchSpace,
    genome_hash,
    genome_seed,
)

from tests.conftest import MIXED_SPACE as SPACE_DICT


def make_space() -> SearchSpace:
    return SearchSpace.from_config(SpaceConfig.model_validate(SPACE_DICT))


SEEDS = st.integers(min_value=0, max_value=2**32 - 1)

FLOAT_DIMS = [
    FloatDimension("unit", 0.0, 1.0),
    FloatDimension("shifted", -3.0, 5.0),
    FloatDimension("lr", 1e-4, 1.0, log=True),
    FloatDimension("wide_log", 1e-8, 1e3, log=True),
]
INT_DIMS = [
    IntDimension("small", 1, 3),
    IntDimension("negative", -2, 2),
    IntDimension("single", 5, 5),
    IntDimension("log", 1, 100, log=True),
]
CHOICE_DIMS = [
    ChoiceDimension("batch", (32, 64, 128, 256)),
    ChoiceDimension("mixed", ("relu", 1, 2.5, True)),
    ChoiceDimension("one", ("only",)),
]


def dim_id(dim) -> str:
    return dim.name


# ----------------------------------------------------------------------------------------------------------------------
# FloatDimension


@pytest.mark.parametrize("dim", FLOAT_DIMS, ids=dim_id)
@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_float_sample_in_bounds(dim, seed):
    value = dim.sample(np.random.default_rng(seed))
    assert isinstance(value, float)
    assert dim.low <= value <= dim.high
    assert dim.contains(value)


@pytest.mark.parametrize("dim", FLOAT_DIMS, ids=dim_id)
@settings(max_examples=100, deadline=None)
@given(fraction=st.floats(min_value=0.0, max_value=1.0))
def test_float_value_round_trip(dim, fraction):
    # Values spread over the dimension's own scale so log ranges get small values too.
    value = dim.low + fraction * (dim.high - dim.low) if not dim.log else dim.low * (dim.high / dim.low) ** fraction
    value = min(max(value, dim.low), dim.high)
    back = dim.from_unit(dim.to_unit(value))
    assert math.isclose(back, value, rel_tol=1e-9, abs_tol=1e-12 * (dim.high - dim.low))


@pytest.mark.parametrize("dim", FLOAT_DIMS, ids=dim_id)
@settings(max_examples=100, deadline=None)
@given(unit=st.floats(min_value=0.0, max_value=1.0))
def test_float_unit_round_trip(dim, unit):
    assert math.isclose(dim.to_unit(dim.from_unit(unit)), unit, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("dim", FLOAT_DIMS, ids=dim_id)
def test_float_unit_end_points(dim):
    assert dim.to_unit(dim.low) == pytest.approx(0.0, abs=1e-12)
    assert dim.to_unit(dim.high) == pytest.approx(1.0)
    assert dim.from_unit(0.0) == pytest.approx(dim.low, rel=1e-12)
    assert dim.from_unit(1.0) == pytest.approx(dim.high, rel=1e-12)
    assert dim.from_unit(-0.5) == dim.from_unit(0.0)
    assert dim.from_unit(1.5) == dim.from_unit(1.0)


# Ranges whose end points do not survive the float arithmetic of from_unit exactly; the second is the
# learning-rate range of tests/conftest.py's tiny study.
EDGE_FLOAT_DIMS = [
    FloatDimension("wide_log", 1e-8, 1e3, log=True),
    FloatDimension("lin_a", 1.184, 3.69),
    FloatDimension("lin_b", -4.989, -0.053),
    FloatDimension("log_a", 1.0e-3, 0.3, log=True),
    FloatDimension("log_b", 1.0e-5, 0.1, log=True),
    FloatDimension("log_c", 0.0427, 243.0, log=True),
]


@pytest.mark.parametrize("dim", EDGE_FLOAT_DIMS, ids=dim_id)
@pytest.mark.parametrize("unit", [0.0, 1.0], ids=["zero", "one"])
def test_float_from_unit_clipped_ends_stay_in_bounds(dim, unit):
    """Operators clip to the unit interval and map back with from_unit (gaussian mutation and blend
    crossover hit 0 and 1 often), so the value at the ends must lie in the dimension."""
    value = dim.from_unit(unit)
    assert dim.contains(value), f"{dim}.from_unit({unit}) = {value!r} is outside [{dim.low!r}, {dim.high!r}]"


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(min_value=-1e3, max_value=1e3, allow_subnormal=False),
    width=st.floats(min_value=1e-3, max_value=1e3),
    log=st.booleans(),
    unit=st.floats(min_value=-1.0, max_value=2.0),
)
def test_float_from_unit_always_in_bounds(low, width, log, unit):
    if log:
        low = abs(low) + 1e-6
    dim = FloatDimension("x", low, low + width, log=log)
    assert dim.low < dim.high
    assert dim.contains(dim.from_unit(unit))


def test_float_log_scale_midpoint_is_geometric_mean():
    dim = FloatDimension("lr", 1e-4, 1.0, log=True)
    assert dim.from_unit(0.5) == pytest.approx(1e-2, rel=1e-12)
    assert dim.to_unit(1e-3) == pytest.approx(0.25)
    linear = FloatDimension("m", 0.0, 0.9)
    assert linear.from_unit(0.5) == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("dim", "count", "expected"),
    [
        (FloatDimension("x", 0.0, 1.0), 2, [0.25, 0.75]),
        (FloatDimension("x", 0.0, 1.0), 1, [0.5]),
        (FloatDimension("x", 0.0, 1.0), 4, [0.125, 0.375, 0.625, 0.875]),
        (FloatDimension("x", -1.0, 3.0), 2, [0.0, 2.0]),
        (FloatDimension("lr", 1e-4, 1.0, log=True), 2, [1e-3, 1e-1]),
        (FloatDimension("lr", 1e-4, 1.0, log=True), 1, [1e-2]),
        (FloatDimension("lr", 1e-6, 1.0, log=True), 3, [1e-5, 1e-3, 1e-1]),
    ],
    ids=["unit-2", "unit-1", "unit-4", "shifted-2", "log-2", "log-1", "log-3"],
)
def test_float_levels_are_cell_centres(dim, count, expected):
    assert dim.levels(count) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dim", FLOAT_DIMS, ids=dim_id)
@settings(max_examples=30, deadline=None)
@given(count=st.integers(min_value=1, max_value=60))
def test_float_levels_distinct_within_bounds(dim, count):
    levels = dim.levels(count)
    assert len(levels) == count
    assert len(set(levels)) == count
    assert levels == sorted(levels)
    assert all(dim.low < v < dim.high for v in levels)
    for i, value in enumerate(levels):
        assert dim.to_unit(value) == pytest.approx((i + 0.5) / count, abs=1e-9)


def test_float_contains_rejects_ints_bools_and_out_of_range():
    dim = FloatDimension("x", 0.0, 1.0)
    assert dim.contains(0.5)
    assert not dim.contains(1)
    assert not dim.contains(True)
    assert not dim.contains(1.0000001)
    assert not dim.contains(-1e-12)
    assert not dim.contains(float("nan"))
    assert dim.max_levels == math.inf


# ----------------------------------------------------------------------------------------------------------------------
# IntDimension


@pytest.mark.parametrize("dim", INT_DIMS, ids=dim_id)
@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_int_sample_in_bounds(dim, seed):
    value = dim.sample(np.random.default_rng(seed))
    assert type(value) is int
    assert dim.low <= value <= dim.high
    assert dim.contains(value)


@pytest.mark.parametrize("dim", INT_DIMS, ids=dim_id)
def test_int_sample_reaches_both_ends(dim):
    rng = np.random.default_rng(0)
    values = {dim.sample(rng) for _ in range(2000)}
    assert dim.low in values and dim.high in values


@pytest.mark.parametrize("dim", INT_DIMS, ids=dim_id)
def test_int_round_trip_every_value(dim):
    for value in range(dim.low, dim.high + 1):
        unit = dim.to_unit(value)
        assert 0.0 <= unit <= 1.0
        assert dim.from_unit(unit) == value


def test_int_from_unit_clips_and_rounds():
    dim = IntDimension("e", 1, 3)
    assert dim.from_unit(-1.0) == 1
    assert dim.from_unit(2.0) == 3
    assert dim.from_unit(0.74) == 2
    assert dim.from_unit(0.76) == 3
    assert IntDimension("s", 5, 5).to_unit(5) == 0.5


@pytest.mark.parametrize(
    ("dim", "count", "expected"),
    [
        (IntDimension("e", 1, 3), 1, [2]),
        (IntDimension("e", 1, 3), 2, [1, 3]),
        (IntDimension("e", 1, 3), 3, [1, 2, 3]),
        (IntDimension("e", 0, 9), 2, [2, 7]),
        (IntDimension("e", 0, 9), 10, list(range(10))),
    ],
    ids=["1-3x1", "1-3x2", "1-3x3", "0-9x2", "0-9x10"],
)
def test_int_levels_exact(dim, count, expected):
    assert dim.levels(count) == expected


@settings(max_examples=150, deadline=None)
@given(
    low=st.integers(min_value=-50, max_value=50),
    width=st.integers(min_value=0, max_value=60),
    data=st.data(),
)
def test_int_levels_distinct_within_bounds(low, width, data):
    dim = IntDimension("x", low, low + width)
    count = data.draw(st.integers(min_value=1, max_value=dim.max_levels))
    levels = dim.levels(count)
    assert len(levels) == count
    assert len(set(levels)) == count
    assert all(type(v) is int and dim.low <= v <= dim.high for v in levels)


@pytest.mark.parametrize(
    ("low", "high", "count"),
    [(1, 3, 3), (1, 10, 10), (1, 10, 7), (1, 100, 50)],
    ids=["1-3x3", "1-10x10", "1-10x7", "1-100x50"],
)
def test_int_log_levels_give_count_distinct_values(low, high, count):
    """``max_levels`` promises up to high-low+1 levels, and grid search multiplies the counts; so a
    log-scaled int dimension must return ``count`` distinct values too, not a de-duplicated subset."""
    dim = IntDimension("epochs", low, high, log=True)
    assert count <= dim.max_levels
    levels = dim.levels(count)
    assert len(set(levels)) == len(levels)
    assert all(dim.low <= v <= dim.high for v in levels)
    assert len(levels) == count, f"levels({count}) of {dim} gave only {levels}"


def test_int_contains_rejects_bools_and_floats():
    dim = IntDimension("x", 0, 3)
    assert dim.contains(1)
    assert not dim.contains(True)
    assert not dim.contains(1.0)
    assert not dim.contains(4)
    assert not dim.contains(-1)


# ----------------------------------------------------------------------------------------------------------------------
# ChoiceDimension


@pytest.mark.parametrize("dim", CHOICE_DIMS, ids=dim_id)
@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_choice_sample_is_a_value_of_the_right_type(dim, seed):
    value = dim.sample(np.random.default_rng(seed))
    assert dim.contains(value)
    assert any(value == v and type(value) is type(v) for v in dim.values)


def test_choice_sample_reaches_every_value():
    dim = CHOICE_DIMS[0]
    rng = np.random.default_rng(1)
    assert {dim.sample(rng) for _ in range(500)} == set(dim.values)


def test_choice_round_trip():
    dim = ChoiceDimension("batch", (32, 64, 128, 256))
    assert [dim.to_unit(v) for v in dim.values] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    for value in dim.values:
        assert dim.from_unit(dim.to_unit(value)) == value
    assert dim.from_unit(-3.0) == 32
    assert dim.from_unit(7.0) == 256


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, [128]), (2, [32, 512]), (3, [32, 128, 512]), (5, [32, 64, 128, 256, 512]), (9, [32, 64, 128, 256, 512])],
    ids=["1", "2", "3", "all", "more-than-all"],
)
def test_choice_levels(count, expected):
    dim = ChoiceDimension("batch", (32, 64, 128, 256, 512))
    assert dim.levels(count) == expected


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=30), data=st.data())
def test_choice_levels_distinct(n, data):
    dim = ChoiceDimension("c", tuple(range(n)))
    count = data.draw(st.integers(min_value=1, max_value=n))
    levels = dim.levels(count)
    assert len(levels) == count
    assert len(set(levels)) == count
    assert set(levels) <= set(dim.values)


def test_choice_contains_is_type_strict():
    dim = ChoiceDimension("batch", (32, 64))
    assert dim.contains(32)
    assert not dim.contains(32.0)
    assert not dim.contains(48)
    assert not ChoiceDimension("flag", (1, 2)).contains(True)


# ----------------------------------------------------------------------------------------------------------------------
# SearchSpace and genomes


def test_from_config_builds_typed_dimensions_in_order():
    space = make_space()
    assert space.names == ["learning_rate", "momentum", "weight_decay", "batch_size", "epochs"]
    assert space["learning_rate"] == FloatDimension("learning_rate", 1e-4, 1.0, log=True)
    assert space["momentum"] == FloatDimension("momentum", 0.0, 0.9, log=False)
    assert space["batch_size"] == ChoiceDimension("batch_size", (32, 64, 128, 256))
    assert space["epochs"] == IntDimension("epochs", 1, 20, log=True)
    assert isinstance(space["weight_decay"].low, float)
    with pytest.raises(KeyError):
        space["dropout"]


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_sample_same_seed_same_genome_and_in_space(seed):
    space = make_space()
    first = space.sample(np.random.default_rng(seed))
    second = space.sample(np.random.default_rng(seed))
    assert first == second
    assert list(first) == space.names
    assert space.contains(first)


def test_sample_different_seeds_differ():
    space = make_space()
    genomes = [space.sample(np.random.default_rng(seed)) for seed in range(8)]
    hashes = {genome_hash(g) for g in genomes}
    assert len(hashes) == len(genomes)
    # Successive draws from one generator differ too.
    rng = np.random.default_rng(0)
    assert space.sample(rng) != space.sample(rng)


def test_contains_rejects_wrong_order_missing_extra_and_bad_values():
    space = make_space()
    genome = space.sample(np.random.default_rng(3))
    assert space.contains(genome)
    assert not space.contains(dict(reversed(list(genome.items()))))
    assert not space.contains({k: v for k, v in genome.items() if k != "epochs"})
    assert not space.contains({**genome, "dropout": 0.1})
    assert not space.contains({**genome, "momentum": 0.95})
    assert not space.contains({**genome, "batch_size": 48})
    assert not space.contains({**genome, "epochs": 2.0})


def test_canonical_reorders_and_converts_numpy_scalars():
    space = make_space()
    messy = {
        "epochs": np.int64(3),
        "batch_size": np.int64(64),
        "weight_decay": np.float32(0.05),
        "momentum": np.float64(0.5),
        "learning_rate": np.float64(0.01),
    }
    genome = space.canonical(messy)
    assert list(genome) == space.names
    assert type(genome["epochs"]) is int and type(genome["batch_size"]) is int
    assert type(genome["momentum"]) is float and type(genome["weight_decay"]) is float
    assert space.contains(genome)


def test_genome_hash_ignores_key_order():
    a = {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 64}
    b = {"batch_size": 64, "momentum": 0.5, "learning_rate": 0.01}
    assert genome_hash(a) == genome_hash(b)
    assert re.fullmatch(r"[0-9a-f]{16}", genome_hash(a))


@pytest.mark.parametrize(
    "other",
    [
        {"learning_rate": 0.011, "momentum": 0.5, "batch_size": 64},
        {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 128},
        {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 64.0},
        {"learning_rate": 0.01, "momentum": 0.5},
        {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 64, "epochs": 1},
    ],
    ids=["float-value", "choice-value", "int-vs-float", "missing-gene", "extra-gene"],
)
def test_genome_hash_differs_for_different_genomes(other):
    base = {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 64}
    assert genome_hash(base) != genome_hash(other)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS)
def test_genome_hash_distinguishes_sampled_genomes(seed):
    space = make_space()
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    assert (genome_hash(a) == genome_hash(b)) == (a == b)


def test_genome_seed_deterministic_and_depends_on_study_seed_and_genes():
    genome = {"learning_rate": 0.01, "momentum": 0.5, "batch_size": 64}
    reordered = dict(reversed(list(genome.items())))
    seed = genome_seed(42, genome)
    assert seed == genome_seed(42, genome)
    assert seed == genome_seed(42, reordered)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert len({genome_seed(s, genome) for s in range(20)}) == 20
    assert genome_seed(42, {**genome, "momentum": 0.6}) != seed
