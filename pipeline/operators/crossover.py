"""Crossover: one child from two parents.

Contract: ``crossover_*(parent_a, parent_b, space, rng, **settings) -> child``; parents are genomes
of ``space`` (dicts in the space's order) and are not changed.
"""

from __future__ import annotations

import numpy as np

from pipeline.operators.settings import Real, declare
from pipeline.space.dimensions import ChoiceDimension, Genome, SearchSpace


@declare(swap_prob=Real(0, 1))
def crossover_uniform(
    parent_a: Genome, parent_b: Genome, space: SearchSpace, rng: np.random.Generator, *, swap_prob: float = 0.5
) -> Genome:
    """Each gene from ``parent_b`` with probability ``swap_prob``, else from ``parent_a``."""
    take_b = rng.random(len(space.names)) < swap_prob
    return {name: (parent_b if b else parent_a)[name] for name, b in zip(space.names, take_b)}


def crossover_one_point(parent_a: Genome, parent_b: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """Genes before a random cut (1..n-1) from ``parent_a``, the rest from ``parent_b``."""
    n = len(space.names)
    cut = int(rng.integers(1, n)) if n > 1 else 0
    return {name: (parent_a if i < cut else parent_b)[name] for i, name in enumerate(space.names)}


def crossover_two_point(parent_a: Genome, parent_b: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """Genes between two random cuts from ``parent_b``, the outer segments from ``parent_a``."""
    n = len(space.names)
    if n < 3:
        return crossover_one_point(parent_a, parent_b, space, rng)
    start, stop = np.sort(rng.choice(np.arange(1, n), size=2, replace=False))
    return {name: (parent_b if start <= i < stop else parent_a)[name] for i, name in enumerate(space.names)}


@declare(alpha=Real(0))
def crossover_blend(
    parent_a: Genome, parent_b: Genome, space: SearchSpace, rng: np.random.Generator, *, alpha: float = 0.5
) -> Genome:
    """BLX-alpha on the normalised (log where log-scaled) scale of numeric genes.

    A numeric child gene is uniform on ``[lo - alpha*d, hi + alpha*d]`` of the parents' unit values,
    clipped to the space; a choice gene comes from either parent with equal probability.
    """
    child: Genome = {}
    for dim in space.dimensions:
        a, b = parent_a[dim.name], parent_b[dim.name]
        if isinstance(dim, ChoiceDimension):
            child[dim.name] = a if rng.random() < 0.5 else b
            continue
        lo, hi = sorted((dim.to_unit(a), dim.to_unit(b)))
        spread = alpha * (hi - lo)
        child[dim.name] = dim.from_unit(rng.uniform(lo - spread, hi + spread))
    return child


CROSSOVERS = {
    "uniform": crossover_uniform,
    "one_point": crossover_one_point,
    "two_point": crossover_two_point,
    "blend": crossover_blend,
}
