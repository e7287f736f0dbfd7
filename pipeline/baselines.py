"""The baselines: grid search and random search over the same space, with scikit-learn's samplers."""

from __future__ import annotations

import math

from sklearn.model_selection import ParameterGrid, ParameterSampler

from pipeline.space import Genome, SearchSpace


def grid_levels(space: SearchSpace, budget: int) -> dict[str, int]:
    """Levels per dimension whose product (the grid's size) fits ``budget``, spread as evenly as
    the dimensions allow: repeatedly give one more level to the dimension with the fewest."""
    levels = {dim.name: 1 for dim in space.dimensions}
    while True:
        growable = [d for d in space.dimensions if levels[d.name] < d.max_levels]
        growable.sort(key=lambda d: levels[d.name])  # stable: ties go to the earlier dimension
        for dim in growable:
            size = math.prod(levels.values()) // levels[dim.name] * (levels[dim.name] + 1)
            if size <= budget:
                levels[dim.name] += 1
                break
        else:
            return levels


def grid_genomes(space: SearchSpace, budget: int) -> list[Genome]:
    """Every point of the largest even grid that fits ``budget`` (``ParameterGrid`` order)."""
    levels = grid_levels(space, budget)
    param_grid = {dim.name: dim.levels(levels[dim.name]) for dim in space.dimensions}
    return [space.canonical(point) for point in ParameterGrid(param_grid)]


def random_genomes(space: SearchSpace, budget: int, seed: int) -> list[Genome]:
    """``budget`` genomes drawn independently from the space's distributions (``ParameterSampler``)."""
    distributions = {dim.name: dim.distribution() for dim in space.dimensions}
    sampler = ParameterSampler(distributions, n_iter=budget, random_state=seed)
    return [space.canonical(point) for point in sampler]
