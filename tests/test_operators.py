"""GA operators: exact cases, stubbed randomness, and properties over every registry entry."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import SpaceConfig
from pipeline.operators import REGISTRIES, bind_operator, split_settings
from pipeline.operators.crossover import (
    crossover_blend,
    crossover_one_point,
    crossover_two_point,
    crossover_uniform,
)
from pipeline.operators.mutation import adaptive_rate, mutate_adaptive, mutate_gaussian, mutate_resample, mutation_rate
from pipeline.operators.selection import select_rank, select_roulette, select_tournament, select_truncation
from pipeline.space import ChoiceDimension, FloatDimension, IntDimension, SearchSpace

from tests.conftest import MIXED_SPACE as SPACE_DICT

SPACE = SearchSpace.from_config(SpaceConfig.model_validate(SPACE_DICT))
NAMES = SPACE.names

# Two parents that differ in every gene, so a child's gene tells which parent it came from.
PARENT_A = {"learning_rate": 0.001, "momentum": 0.1, "weight_decay": 0.01, "batch_size": 32, "epochs": 2}
PARENT_B = {"learning_rate": 0.1, "momentum": 0.8, "weight_decay": 0.05, "batch_size": 256, "epochs": 10}

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def from_mask(mask: list[int]) -> dict[str, Any]:
    """The child taking gene i from PARENT_B where mask[i] is 1, else from PARENT_A."""
    return {name: (PARENT_B if bit else PARENT_A)[name] for name, bit in zip(NAMES, mask)}


def source_mask(child: dict[str, Any]) -> list[int]:
    mask = []
    for name in NAMES:
        if child[name] == PARENT_A[name]:
            mask.append(0)
        elif child[name] == PARENT_B[name]:
            mask.append(1)
        else:
            raise AssertionError(f"gene {name}={child[name]!r} comes from neither parent")
    return mask


def test_fixed_parents_are_in_space_and_differ_everywhere():
    assert SPACE.contains(PARENT_A) and SPACE.contains(PARENT_B)
    assert all(PARENT_A[n] != PARENT_B[n] for n in NAMES)


# ----------------------------------------------------------------------------------------------------------------------
# Exact, seeded cases: selection


def _picked(pairs: np.ndarray) -> set[int]:
    return set(pairs.ravel().tolist())


@pytest.mark.parametrize(
    ("fitness", "fraction", "allowed"),
    [
        ([0.1, 0.9, 0.5, 0.3], 0.5, {1, 2}),
        ([0.1, 0.9, 0.5, 0.3], 0.1, {1, 2}),  # never fewer than two
        ([0.1, 0.9, 0.5, 0.3], 0.75, {1, 2, 3}),
        ([0.1, 0.9, 0.5, 0.3], 1.0, {0, 1, 2, 3}),
        ([0.5, 0.5, 0.5, 0.1], 0.5, {0, 1}),  # ties: the earlier ones
        ([-math.inf, 0.2, -math.inf, 0.4, 0.3, -math.inf], 0.5, {1, 3, 4}),
    ],
    ids=["half", "tiny-fraction", "three-quarters", "all", "ties", "failed-last"],
)
def test_select_truncation_pool(fitness, fraction, allowed):
    pairs = select_truncation(np.array(fitness), 60, np.random.default_rng(7), fraction=fraction)
    assert pairs.shape == (60, 2)
    assert _picked(pairs) == allowed  # every pool member shows up in 60 pairs, nothing else does
    assert np.all(pairs[:, 0] != pairs[:, 1])


def test_select_tournament_of_everyone_is_deterministic():
    # size == n: the first tournament always holds everyone, the second everyone but the winner.
    pairs = select_tournament(np.array([0.1, 0.9, 0.5, 0.3]), 20, np.random.default_rng(3), size=4)
    assert pairs.tolist() == [[1, 2]] * 20


@pytest.mark.parametrize(
    ("fitness", "allowed"),
    [
        ([0.0, 0.5, 0.0, 0.5], {1, 3}),
        ([-math.inf, 0.2, 0.0, 0.7, -math.inf], {1, 3}),
        ([0.3, 0.3], {0, 1}),
    ],
    ids=["zeros", "failed-and-zero", "two"],
)
def test_select_roulette_only_positive(fitness, allowed):
    pairs = select_roulette(np.array(fitness), 40, np.random.default_rng(11))
    assert _picked(pairs) == allowed


def test_select_roulette_shifts_negative_fitness():
    # Shifted by the minimum (-1): weights 0, 1.5, 2; the worst is never picked.
    pairs = select_roulette(np.array([-1.0, 0.5, 1.0]), 40, np.random.default_rng(2))
    assert _picked(pairs) == {1, 2}


def test_select_roulette_falls_back_to_uniform_with_one_positive():
    pairs = select_roulette(np.array([0.0, 0.9, -math.inf]), 60, np.random.default_rng(5))
    assert _picked(pairs) == {0, 1, 2}
    assert np.all(pairs[:, 0] != pairs[:, 1])


@pytest.mark.parametrize("operator", [select_roulette, select_rank], ids=["roulette", "rank"])
def test_fitness_proportional_prefers_the_best(operator):
    fitness = np.array([0.1, 0.2, 0.3, 0.4, 1.0])
    counts = np.bincount(operator(fitness, 3000, np.random.default_rng(0)).ravel(), minlength=5)
    assert counts[4] > counts[3] > counts[0]
    assert counts.sum() == 6000


# ----------------------------------------------------------------------------------------------------------------------
# Exact, seeded cases: crossover


@pytest.mark.parametrize("seed", range(5))
def test_crossover_uniform_swap_extremes(seed):
    child_0 = crossover_uniform(PARENT_A, PARENT_B, SPACE, np.random.default_rng(seed), swap_prob=0.0)
    child_1 = crossover_uniform(PARENT_A, PARENT_B, SPACE, np.random.default_rng(seed), swap_prob=1.0)
    assert child_0 == PARENT_A and child_0 is not PARENT_A
    assert child_1 == PARENT_B and child_1 is not PARENT_B


def test_crossover_uniform_half_mixes_parents():
    masks = {
        tuple(source_mask(crossover_uniform(PARENT_A, PARENT_B, SPACE, np.random.default_rng(s)))) for s in range(40)
    }
    assert len(masks) > 10  # not stuck on one pattern
    assert any(0 < sum(m) < len(NAMES) for m in masks)


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS)
def test_crossover_one_point_is_a_prefix_of_a_then_suffix_of_b(seed):
    mask = source_mask(crossover_one_point(PARENT_A, PARENT_B, SPACE, np.random.default_rng(seed)))
    cut = mask.index(1)
    assert 1 <= cut <= len(NAMES) - 1
    assert mask == [0] * cut + [1] * (len(NAMES) - cut)


def test_crossover_one_point_uses_every_cut():
    cuts = {
        source_mask(crossover_one_point(PARENT_A, PARENT_B, SPACE, np.random.default_rng(s))).index(1)
        for s in range(100)
    }
    assert cuts == {1, 2, 3, 4}


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS)
def test_crossover_two_point_takes_a_middle_segment_of_b(seed):
    mask = source_mask(crossover_two_point(PARENT_A, PARENT_B, SPACE, np.random.default_rng(seed)))
    start = mask.index(1)
    stop = start + mask[start:].index(0)  # the last gene is always from parent_a
    assert 1 <= start < stop <= len(NAMES) - 1
    assert mask == [0] * start + [1] * (stop - start) + [0] * (len(NAMES) - stop)


def test_crossover_two_point_on_two_genes_falls_back_to_one_point():
    space = SearchSpace((FloatDimension("x", 0.0, 1.0), FloatDimension("y", 0.0, 1.0)))
    child = crossover_two_point({"x": 0.1, "y": 0.2}, {"x": 0.8, "y": 0.9}, space, np.random.default_rng(0))
    assert child == {"x": 0.1, "y": 0.9}


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, parent_seed=SEEDS)
def test_crossover_blend_alpha_zero_stays_between_parents(seed, parent_seed):
    rng = np.random.default_rng(parent_seed)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    child = crossover_blend(a, b, SPACE, np.random.default_rng(seed), alpha=0.0)
    assert SPACE.contains(child)
    for dim in SPACE.dimensions:
        if isinstance(dim, ChoiceDimension):
            assert child[dim.name] in (a[dim.name], b[dim.name])
            continue
        lo, hi = sorted((dim.to_unit(a[dim.name]), dim.to_unit(b[dim.name])))
        assert lo - 1e-9 <= dim.to_unit(child[dim.name]) <= hi + 1e-9


def test_crossover_blend_of_equal_parents_is_the_parent():
    child = crossover_blend(PARENT_A, dict(PARENT_A), SPACE, np.random.default_rng(0), alpha=0.5)
    assert child == pytest.approx(PARENT_A, rel=1e-9)


def test_crossover_blend_positive_alpha_can_leave_the_parents_interval():
    dim = SPACE["momentum"]
    lo, hi = sorted((dim.to_unit(PARENT_A["momentum"]), dim.to_unit(PARENT_B["momentum"])))
    units = [
        dim.to_unit(crossover_blend(PARENT_A, PARENT_B, SPACE, np.random.default_rng(s), alpha=0.5)["momentum"])
        for s in range(200)
    ]
    assert min(units) < lo and max(units) > hi
    spread = 0.5 * (hi - lo)
    assert min(units) >= lo - spread - 1e-9 and max(units) <= hi + spread + 1e-9


# ----------------------------------------------------------------------------------------------------------------------
# Exact, seeded cases: mutation


@pytest.mark.parametrize("operator", [mutate_resample, mutate_gaussian], ids=["resample", "gaussian"])
@pytest.mark.parametrize("seed", range(5))
def test_mutation_rate_zero_returns_equal_copy(operator, seed):
    child = operator(PARENT_A, SPACE, np.random.default_rng(seed), rate=0.0)
    assert child == PARENT_A and child is not PARENT_A


@pytest.mark.parametrize("seed", range(5))
def test_mutate_resample_rate_one_changes_genes(seed):
    child = mutate_resample(PARENT_A, SPACE, np.random.default_rng(seed), rate=1.0)
    assert SPACE.contains(child)
    for name in ("learning_rate", "momentum", "weight_decay"):
        assert child[name] != PARENT_A[name]


def test_mutate_resample_rate_one_redraws_like_sampling():
    # Genes redrawn "as in the initial population": the rate draw, then one sample per gene.
    rng = np.random.default_rng(9)
    rng.random(len(NAMES))
    assert mutate_resample(PARENT_A, SPACE, np.random.default_rng(9), rate=1.0) == SPACE.sample(rng)


@pytest.mark.parametrize("seed", range(5))
def test_mutate_gaussian_tiny_sigma_stays_close(seed):
    child = mutate_gaussian(PARENT_A, SPACE, np.random.default_rng(seed), rate=1.0, sigma=1e-6)
    assert SPACE.contains(child)
    for dim in SPACE.dimensions:
        if isinstance(dim, ChoiceDimension):
            continue
        before, after = dim.to_unit(PARENT_A[dim.name]), dim.to_unit(child[dim.name])
        assert abs(after - before) <= 1e-4
        if isinstance(dim, FloatDimension):
            assert child[dim.name] != PARENT_A[dim.name]  # it did move
        else:
            assert child[dim.name] == PARENT_A[dim.name]  # too small a move to change an int


def test_mutate_gaussian_large_sigma_moves_far():
    moves = [
        abs(
            SPACE["momentum"].to_unit(
                mutate_gaussian(PARENT_A, SPACE, np.random.default_rng(s), rate=1.0, sigma=0.5)["momentum"]
            )
            - SPACE["momentum"].to_unit(0.1)
        )
        for s in range(50)
    ]
    assert max(moves) > 0.3


# ----------------------------------------------------------------------------------------------------------------------
# Stubbed randomness: exactly which genes


class FakeRng:
    """Stands in for numpy's Generator with canned answers, recording how it was called."""

    def __init__(self, random: list[float] | None = None, integers: int | None = None, choice: list[int] | None = None):
        self._random = random
        self._integers = integers
        self._choice = choice
        self.calls: list[tuple[str, tuple, dict]] = []

    def random(self, size=None):
        self.calls.append(("random", (size,), {}))
        assert size == len(self._random), "asked for a different number of uniforms than there are genes"
        return np.array(self._random)

    def integers(self, low, high=None, size=None):
        self.calls.append(("integers", (low, high), {"size": size}))
        return self._integers

    def choice(self, a, size=None, replace=True, p=None):
        self.calls.append(("choice", (np.asarray(a).tolist(),), {"size": size, "replace": replace}))
        return np.array(self._choice)


@pytest.mark.parametrize(
    ("uniforms", "swap_prob", "mask"),
    [
        ([0.1, 0.9, 0.4, 0.6, 0.5], 0.5, [1, 0, 1, 0, 0]),  # strictly below swap_prob takes parent_b
        ([0.1, 0.9, 0.4, 0.6, 0.5], 0.45, [1, 0, 1, 0, 0]),
        ([0.1, 0.9, 0.4, 0.6, 0.5], 0.55, [1, 0, 1, 0, 1]),
        ([0.1, 0.9, 0.4, 0.6, 0.5], 0.95, [1, 1, 1, 1, 1]),
        ([0.0, 0.0, 0.0, 0.0, 0.0], 0.0, [0, 0, 0, 0, 0]),
        ([0.99, 0.2, 0.99, 0.2, 0.99], 0.3, [0, 1, 0, 1, 0]),
    ],
    ids=["half", "below-half", "above-half", "almost-all", "zero-prob", "alternate"],
)
def test_crossover_uniform_with_stubbed_uniforms(uniforms, swap_prob, mask):
    rng = FakeRng(random=uniforms)
    child = crossover_uniform(PARENT_A, PARENT_B, SPACE, rng, swap_prob=swap_prob)
    assert child == from_mask(mask)
    assert list(child) == NAMES
    assert rng.calls == [("random", (5,), {})]


@pytest.mark.parametrize(
    ("cut", "mask"),
    [(1, [0, 1, 1, 1, 1]), (2, [0, 0, 1, 1, 1]), (3, [0, 0, 0, 1, 1]), (4, [0, 0, 0, 0, 1])],
    ids=["cut-1", "cut-2", "cut-3", "cut-4"],
)
def test_crossover_one_point_with_stubbed_cut(cut, mask):
    rng = FakeRng(integers=cut)
    assert crossover_one_point(PARENT_A, PARENT_B, SPACE, rng) == from_mask(mask)
    assert rng.calls == [("integers", (1, 5), {"size": None})]  # cut drawn from 1..n-1


@pytest.mark.parametrize(
    ("cuts", "mask"),
    [([1, 4], [0, 1, 1, 1, 0]), ([4, 1], [0, 1, 1, 1, 0]), ([2, 3], [0, 0, 1, 0, 0]), ([3, 1], [0, 1, 1, 0, 0])],
    ids=["1-4", "unsorted-4-1", "2-3", "unsorted-3-1"],
)
def test_crossover_two_point_with_stubbed_cuts(cuts, mask):
    rng = FakeRng(choice=cuts)
    assert crossover_two_point(PARENT_A, PARENT_B, SPACE, rng) == from_mask(mask)
    assert rng.calls == [("choice", ([1, 2, 3, 4],), {"size": 2, "replace": False})]


def test_mutate_resample_with_stubbed_hits():
    # Uniforms 0.1 and 0.3 fall below rate 0.2 only for the first gene: only learning_rate is redrawn.
    class Rng(FakeRng):
        def random(self, size=None):
            if size is None:
                self.calls.append(("random", (None,), {}))
                return 0.5  # the redraw of learning_rate: the log-scale midpoint
            return super().random(size)

    rng = Rng(random=[0.1, 0.3, 0.9, 0.2, 0.5])
    child = mutate_resample(PARENT_A, SPACE, rng, rate=0.2)
    assert child == {**PARENT_A, "learning_rate": pytest.approx(1e-2)}


# ----------------------------------------------------------------------------------------------------------------------
# Properties over every registry entry

SETTING_STRATEGIES: dict[tuple[str, str], st.SearchStrategy[dict[str, Any]]] = {
    ("selection", "truncation"): st.fixed_dictionaries({"fraction": st.floats(min_value=0.01, max_value=1.0)}),
    ("selection", "tournament"): st.fixed_dictionaries({"size": st.integers(min_value=2, max_value=8)}),
    ("selection", "roulette"): st.just({}),
    ("selection", "rank"): st.just({}),
    ("crossover", "uniform"): st.fixed_dictionaries({"swap_prob": st.floats(min_value=0.0, max_value=1.0)}),
    ("crossover", "one_point"): st.just({}),
    ("crossover", "two_point"): st.just({}),
    ("crossover", "blend"): st.fixed_dictionaries({"alpha": st.floats(min_value=0.0, max_value=3.0)}),
    ("mutation", "resample"): st.fixed_dictionaries({"rate": st.floats(min_value=0.0, max_value=1.0)}),
    ("mutation", "gaussian"): st.fixed_dictionaries(
        {"rate": st.floats(min_value=0.0, max_value=1.0), "sigma": st.floats(min_value=1e-3, max_value=5.0)}
    ),
    ("mutation", "adaptive"): st.builds(
        lambda rates, target: {"rate": min(rates), "max_rate": max(rates), "target_diversity": target},
        st.tuples(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0)),
        st.floats(min_value=0.01, max_value=1.0),
    ),
}

ALL_OPERATORS = [(role, name) for role, registry in REGISTRIES.items() for name in registry]
SELECTIONS = [(r, n) for r, n in ALL_OPERATORS if r == "selection"]
VARIATIONS = [(r, n) for r, n in ALL_OPERATORS if r != "selection"]


def op_id(entry: tuple[str, str]) -> str:
    return f"{entry[0]}-{entry[1]}"


def test_every_registry_entry_has_a_settings_strategy():
    assert set(SETTING_STRATEGIES) == set(ALL_OPERATORS)
    assert set(REGISTRIES) == {"selection", "crossover", "mutation"}


genomes = st.builds(lambda seed: SPACE.sample(np.random.default_rng(seed)), SEEDS)
fitness_values = st.one_of(
    st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_subnormal=False),
    st.just(-math.inf),
    st.just(0.0),
)
fitness_arrays = st.lists(fitness_values, min_size=2, max_size=12).map(np.array)


def apply(role: str, operator, seed: int, parents: tuple[dict, dict]) -> dict:
    rng = np.random.default_rng(seed)
    if role == "crossover":
        return operator(parents[0], parents[1], SPACE, rng)
    return operator(parents[0], SPACE, rng)


@pytest.mark.parametrize("entry", VARIATIONS, ids=op_id)
@HYPOTHESIS
@given(data=st.data(), a=genomes, b=genomes, seed=SEEDS)
def test_variation_properties(entry, data, a, b, seed):
    role, name = entry
    operator = bind_operator(role, name, data.draw(SETTING_STRATEGIES[entry]))
    before = copy.deepcopy((a, b))
    child = apply(role, operator, seed, (a, b))
    assert (a, b) == before, "an input genome was changed"
    assert SPACE.contains(child), f"{name} produced {child}"
    assert child is not a and child is not b
    assert apply(role, operator, seed, (a, b)) == child, "same seed, different child"


@pytest.mark.parametrize("entry", [e for e in VARIATIONS if e[0] == "crossover" and e[1] != "blend"], ids=op_id)
@HYPOTHESIS
@given(data=st.data(), a=genomes, b=genomes, seed=SEEDS)
def test_discrete_crossover_genes_come_from_a_parent(entry, data, a, b, seed):
    role, name = entry
    child = apply(role, bind_operator(role, name, data.draw(SETTING_STRATEGIES[entry])), seed, (a, b))
    for gene in NAMES:
        assert child[gene] in (a[gene], b[gene]) and type(child[gene]) in (type(a[gene]), type(b[gene]))


@pytest.mark.parametrize("entry", VARIATIONS, ids=op_id)
@HYPOTHESIS
@given(data=st.data(), a=genomes, seed=SEEDS)
def test_variation_of_identical_parents(entry, data, a, seed):
    """Crossover of a genome with itself gives it back; so does any mutation at rate 0."""
    role, name = entry
    settings_ = data.draw(SETTING_STRATEGIES[entry])
    if role == "mutation":
        settings_ = {**settings_, "rate": 0.0}
    child = apply(role, bind_operator(role, name, settings_), seed, (a, copy.deepcopy(a)))
    assert child == pytest.approx(a, rel=1e-9)


@pytest.mark.parametrize("entry", SELECTIONS, ids=op_id)
@HYPOTHESIS
@given(data=st.data(), fitness=fitness_arrays, n_pairs=st.integers(min_value=0, max_value=12), seed=SEEDS)
def test_selection_properties(entry, data, fitness, n_pairs, seed):
    role, name = entry
    operator = bind_operator(role, name, data.draw(SETTING_STRATEGIES[entry]))
    before = fitness.copy()
    pairs = operator(fitness, n_pairs, np.random.default_rng(seed))
    assert np.array_equal(fitness, before), "fitness was changed"
    assert isinstance(pairs, np.ndarray)
    assert pairs.shape == (n_pairs, 2)
    assert np.issubdtype(pairs.dtype, np.integer)
    assert np.all((pairs >= 0) & (pairs < len(fitness)))
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert np.array_equal(operator(fitness, n_pairs, np.random.default_rng(seed)), pairs), "same seed, other pairs"


@HYPOTHESIS
@given(
    finite=st.lists(st.floats(min_value=-5.0, max_value=5.0), min_size=2, max_size=10),
    n_failed=st.integers(min_value=1, max_value=6),
    fraction=st.floats(min_value=0.01, max_value=1.0),
    seed=SEEDS,
)
def test_truncation_never_picks_failed_when_enough_finite(finite, n_failed, fraction, seed):
    rng = np.random.default_rng(seed)
    fitness = rng.permutation(np.array(finite + [-math.inf] * n_failed))
    pool_size = min(len(fitness), max(2, math.ceil(fraction * len(fitness))))
    pairs = select_truncation(fitness, 20, np.random.default_rng(seed), fraction=fraction)
    if len(finite) >= pool_size:
        assert np.all(np.isfinite(fitness[pairs]))
    # Always the top of the ranking: nobody picked is beaten by pool_size others.
    threshold = np.sort(fitness)[::-1][pool_size - 1]
    assert np.all(fitness[pairs] >= threshold)


@HYPOTHESIS
@given(
    fitness=st.lists(
        st.one_of(st.just(0.0), st.just(-math.inf), st.floats(min_value=1e-3, max_value=1.0)), min_size=2, max_size=12
    ).filter(lambda f: sum(v > 0 for v in f) >= 2),
    seed=SEEDS,
)
def test_roulette_never_picks_zero_or_failed(fitness, seed):
    fitness = np.array(fitness)
    pairs = select_roulette(fitness, 20, np.random.default_rng(seed))
    assert np.all(fitness[pairs] > 0)


@HYPOTHESIS
@given(
    fitness=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=10, unique=True),
    size=st.integers(min_value=2, max_value=6),
    seed=SEEDS,
)
def test_tournament_never_picks_the_unique_worst(fitness, size, seed):
    fitness = np.array(fitness)
    pairs = select_tournament(fitness, 20, np.random.default_rng(seed), size=size)
    assert int(np.argmin(fitness)) not in pairs


# ----------------------------------------------------------------------------------------------------------------------
# Edge ranges: operators clip to the unit interval and must still land inside the space

# The learning-rate range of tests/conftest.py's tiny study: from_unit(1.0) of it is 0.30000000000000004.
EDGE_SPACE = SearchSpace(
    (
        FloatDimension("learning_rate", 1.0e-3, 0.3, log=True),
        FloatDimension("momentum", 0.0, 0.9),
        FloatDimension("weight_decay", 0.0, 0.1),
        ChoiceDimension("batch_size", (32, 64)),
        IntDimension("epochs", 1, 2),
    )
)


def test_mutate_gaussian_stays_in_space_at_range_ends():
    genome = {"learning_rate": 0.29, "momentum": 0.5, "weight_decay": 0.05, "batch_size": 32, "epochs": 1}
    assert EDGE_SPACE.contains(genome)
    outside = []
    for seed in range(20):
        child = mutate_gaussian(genome, EDGE_SPACE, np.random.default_rng(seed), rate=1.0, sigma=2.0)
        if not EDGE_SPACE.contains(child):
            outside.append((seed, child))
    assert not outside, f"{len(outside)} of 20 children out of the space, e.g. {outside[0]}"


def test_crossover_blend_stays_in_space_at_range_ends():
    a = {"learning_rate": 0.2, "momentum": 0.5, "weight_decay": 0.05, "batch_size": 32, "epochs": 1}
    b = {"learning_rate": 0.29, "momentum": 0.5, "weight_decay": 0.05, "batch_size": 64, "epochs": 2}
    outside = []
    for seed in range(40):
        child = crossover_blend(a, b, EDGE_SPACE, np.random.default_rng(seed), alpha=3.0)
        if not EDGE_SPACE.contains(child):
            outside.append((seed, child))
    assert not outside, f"{len(outside)} of 40 children out of the space, e.g. {outside[0]}"


@pytest.mark.parametrize(
    ("role", "name", "settings_"),
    [("crossover", "blend", {"alpha": math.inf}), ("mutation", "gaussian", {"rate": 1.0, "sigma": math.inf})],
    ids=["blend-alpha-inf", "gaussian-sigma-inf"],
)
def test_accepted_settings_give_working_operators(role, name, settings_):
    """A setting bind_operator (and so params.yaml validation) accepts must not break the operator
    mid-search: either it is refused when bound, or the operator still returns a genome in the space."""
    try:
        operator = bind_operator(role, name, settings_)
    except ValueError:
        return
    for seed in range(5):
        child = apply(role, operator, seed, (PARENT_A, PARENT_B))
        assert SPACE.contains(child)


# ----------------------------------------------------------------------------------------------------------------------
# bind_operator


@pytest.mark.parametrize("role", sorted(REGISTRIES))
def test_bind_unknown_name_lists_choices(role):
    with pytest.raises(KeyError) as info:
        bind_operator(role, "nope", {})
    message = info.value.args[0]
    assert "'nope'" in message and role in message
    for name in REGISTRIES[role]:
        assert repr(name) in message


@pytest.mark.parametrize(
    ("role", "name", "settings_", "fragments"),
    [
        ("selection", "truncation", {"fractio": 0.5}, ["'fractio'", "fraction"]),
        ("selection", "rank", {"size": 3}, ["'size'", "none"]),
        ("crossover", "one_point", {"swap_prob": 0.5}, ["'swap_prob'"]),
        ("mutation", "resample", {"sigma": 0.1}, ["'sigma'", "rate"]),
        ("crossover", "uniform", {"swap_prob": "0.5"}, ["swap_prob", "expected a number"]),
        ("mutation", "gaussian", {"rate": False}, ["rate", "expected a number"]),
    ],
    ids=["near-miss", "settingless", "other-operators-setting", "other-mutation-setting", "string", "bool"],
)
def test_bind_bad_setting_type_error(role, name, settings_, fragments):
    with pytest.raises(TypeError) as info:
        bind_operator(role, name, settings_)
    for fragment in fragments:
        assert fragment in info.value.args[0]


@pytest.mark.parametrize(
    ("role", "name", "settings_", "fragment"),
    [
        ("selection", "truncation", {"fraction": 0.0}, "truncation.fraction"),
        ("selection", "truncation", {"fraction": 1.01}, "truncation.fraction"),
        ("selection", "tournament", {"size": 1}, "tournament.size"),
        ("selection", "tournament", {"size": 2.5}, "tournament.size"),
        ("crossover", "uniform", {"swap_prob": -0.1}, "uniform.swap_prob"),
        ("crossover", "blend", {"alpha": -1.0}, "blend.alpha"),
        ("mutation", "resample", {"rate": 1.5}, "resample.rate"),
        ("mutation", "gaussian", {"sigma": 0.0}, "gaussian.sigma"),
        ("mutation", "gaussian", {"rate": math.nan}, "gaussian.rate"),
    ],
    ids=[
        "fraction-0",
        "fraction-big",
        "size-1",
        "size-frac",
        "swap-neg",
        "alpha-neg",
        "rate-1.5",
        "sigma-0",
        "rate-nan",
    ],
)
def test_bind_bad_value_value_error(role, name, settings_, fragment):
    with pytest.raises(ValueError) as info:
        bind_operator(role, name, settings_)
    assert fragment in info.value.args[0]


def test_bind_good_settings_are_bound():
    operator = bind_operator("selection", "tournament", {"size": 4.0})
    assert operator.keywords == {"size": 4}
    assert type(operator.keywords["size"]) is int
    pairs = operator(np.array([0.1, 0.9, 0.5, 0.3]), 3, np.random.default_rng(0))
    assert pairs.tolist() == [[1, 2]] * 3  # size 4 of 4: the deterministic case above
    uniform = bind_operator("crossover", "uniform", {"swap_prob": 1})
    assert uniform(PARENT_A, PARENT_B, SPACE, np.random.default_rng(0)) == PARENT_B


# ----------------------------------------------------------------------------------------------------------------------
# adaptive mutation and the loop's own settings


@pytest.mark.parametrize(
    ("diversity", "expected"),
    [(None, 0.2), (0.5, 0.2), (0.1, 0.2), (0.05, 0.5), (0.0, 0.8), (-0.01, 0.8)],
    ids=["unknown", "high", "at-target", "half-target", "clones", "negative-clamped"],
)
def test_adaptive_rate_rises_as_diversity_collapses(diversity, expected):
    assert adaptive_rate(diversity, rate=0.2, max_rate=0.8, target_diversity=0.1) == pytest.approx(expected)


@given(d1=st.floats(0, 1), d2=st.floats(0, 1))
def test_adaptive_rate_is_monotone_and_bounded(d1, d2):
    low, high = sorted((d1, d2))
    r_low = adaptive_rate(low, rate=0.1, max_rate=0.9, target_diversity=0.3)
    r_high = adaptive_rate(high, rate=0.1, max_rate=0.9, target_diversity=0.3)
    assert 0.1 <= r_high <= r_low <= 0.9


def test_mutate_adaptive_equals_resample_at_the_adaptive_rate():
    for diversity, rate in ((0.5, 0.1), (0.0, 0.9)):
        adaptive = mutate_adaptive(PARENT_A, SPACE, np.random.default_rng(3), diversity, rate=0.1, max_rate=0.9)
        resampled = mutate_resample(PARENT_A, SPACE, np.random.default_rng(3), rate=rate)
        assert adaptive == resampled


def test_mutate_adaptive_mutates_more_in_a_collapsed_population():
    changed = {0.5: 0, 0.0: 0}
    for seed in range(200):
        for diversity in changed:
            child = mutate_adaptive(PARENT_A, SPACE, np.random.default_rng(seed), diversity, rate=0.05, max_rate=0.95)
            changed[diversity] += sum(child[k] != PARENT_A[k] for k in NAMES)
    assert changed[0.0] > 5 * changed[0.5]


def test_mutation_rate_reads_bound_settings_and_defaults():
    assert mutation_rate(bind_operator("mutation", "resample", {}), 0.0) == 0.2
    assert mutation_rate(bind_operator("mutation", "gaussian", {"rate": 0.4}), 0.0) == 0.4
    adaptive = bind_operator("mutation", "adaptive", {"rate": 0.1, "max_rate": 0.5, "target_diversity": 0.2})
    assert mutation_rate(adaptive, 0.3) == pytest.approx(0.1)
    assert mutation_rate(adaptive, 0.1) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("settings_", "fragment"),
    [
        ({"max_rate": 0.1}, "max_rate (0.1) must be at least rate (0.2)"),
        ({"rate": 0.5, "max_rate": 0.4}, "max_rate"),
        ({"target_diversity": 0.0}, "adaptive.target_diversity"),
    ],
    ids=["below-default-rate", "below-rate", "target-0"],
)
def test_bind_adaptive_rejects_inconsistent_rates(settings_, fragment):
    with pytest.raises(ValueError) as info:
        bind_operator("mutation", "adaptive", settings_)
    assert fragment in info.value.args[0]


def test_split_settings_separates_the_loops_crossover_settings():
    own, loop = split_settings("crossover", {"swap_prob": 0.3, "probability": 0.7, "layers": "cut_splice"})
    assert own == {"swap_prob": 0.3} and loop == {"probability": 0.7, "layers": "cut_splice"}
    assert split_settings("crossover", {}) == ({}, {"probability": 1.0, "layers": "mix"})
    assert split_settings("mutation", {"rate": 0.1}) == ({"rate": 0.1}, {})


@pytest.mark.parametrize(
    ("settings_", "key"),
    [
        ({"probability": 1.5}, "probability"),
        ({"probability": "high"}, "probability"),
        ({"probability": True}, "probability"),
        ({"layers": "splice"}, "layers"),
    ],
)
def test_split_settings_rejects_bad_loop_settings(settings_, key):
    with pytest.raises(ValueError) as info:
        split_settings("crossover", settings_)
    assert info.value.args[1] == key and key in info.value.args[0]


# ----------------------------------------------------------------------------------------------------------------------
# settings declared beside the operator


def test_a_new_operator_is_validated_through_its_own_declaration(monkeypatch):
    from pipeline.operators import selection
    from pipeline.operators.settings import Real, declare

    @declare(pressure=Real(1, 2, low_open=True))
    def select_pressure(fitness, n_pairs, rng, *, pressure=1.5):
        return select_rank(fitness, n_pairs, rng)

    monkeypatch.setitem(selection.SELECTIONS, "pressure", select_pressure)
    assert bind_operator("selection", "pressure", {"pressure": 2}).keywords == {"pressure": 2}
    with pytest.raises(ValueError, match=r"pressure.pressure must be in \(1, 2\], got 1") as raised:
        bind_operator("selection", "pressure", {"pressure": 1})
    assert raised.value.args[1] == "pressure"
    with pytest.raises(TypeError, match="unknown setting 'presure'.*did you mean 'pressure'"):
        bind_operator("selection", "pressure", {"presure": 1.5})


def test_a_declaration_that_disagrees_with_the_signature_fails_at_import():
    from pipeline.operators.settings import Real, declare

    with pytest.raises(TypeError, match=r"declared settings \['rate'\] != keyword-only \['rte'\]"):

        @declare(rate=Real(0, 1))
        def mutate_typo(genome, space, rng, diversity=None, *, rte=0.1):
            return genome


@pytest.mark.parametrize("role", sorted(REGISTRIES))
def test_every_registered_operator_declares_its_settings(role):
    from pipeline.operators.settings import declared_settings, keyword_defaults

    for name, function in REGISTRIES[role].items():
        assert set(declared_settings(function)) == set(keyword_defaults(function)), name
