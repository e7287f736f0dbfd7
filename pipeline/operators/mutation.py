"""Mutation: a changed copy of one genome.

Contract: ``mutate_*(genome, space, rng, diversity=None, **settings) -> genome``; the input is not
changed and every gene of the result lies in ``space``. ``diversity`` is the parents' population
diversity in [0, 1] (``SearchSpace.diversity``); only adaptive operators read it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.operators.settings import Real, declare, keyword_defaults
from pipeline.space.dimensions import ChoiceDimension, Genome, SearchSpace


def _fixed_rate(diversity: float | None, *, rate: float, **_: Any) -> float:
    return rate


@declare(rate=Real(0, 1), per_gene_rate=_fixed_rate)
def mutate_resample(
    genome: Genome, space: SearchSpace, rng: np.random.Generator, diversity: float | None = None, *, rate: float = 0.2
) -> Genome:
    """Each gene, with probability ``rate``, is redrawn as in the initial population."""
    hits = rng.random(len(space.dimensions)) < rate
    return {dim.name: dim.sample(rng) if hit else genome[dim.name] for dim, hit in zip(space.dimensions, hits)}


@declare(rate=Real(0, 1), sigma=Real(0, low_open=True), per_gene_rate=_fixed_rate)
def mutate_gaussian(
    genome: Genome,
    space: SearchSpace,
    rng: np.random.Generator,
    diversity: float | None = None,
    *,
    rate: float = 0.2,
    sigma: float = 0.1,
) -> Genome:
    """Each gene, with probability ``rate``, moves by N(0, sigma) on its unit (log where log-scaled)
    scale, clipped to the space (an ordered choice: on its index scale); an unordered choice gene is
    redrawn instead."""
    hits = rng.random(len(space.dimensions)) < rate
    child: Genome = {}
    for dim, hit in zip(space.dimensions, hits):
        value = genome[dim.name]
        if hit:
            if isinstance(dim, ChoiceDimension) and not dim.ordered:
                value = dim.sample(rng)
            else:
                value = dim.from_unit(dim.to_unit(value) + rng.normal(0.0, sigma))
        child[dim.name] = value
    return child


def adaptive_rate(diversity: float | None, *, rate: float, max_rate: float, target_diversity: float) -> float:
    """``rate`` while diversity is at least ``target_diversity``; below it the rate rises linearly,
    reaching ``max_rate`` when the population has collapsed to clones (diversity 0)."""
    if diversity is None or diversity >= target_diversity:
        return rate
    return rate + (max_rate - rate) * (1.0 - max(diversity, 0.0) / target_diversity)


def _max_rate_at_least_rate(*, rate: float, max_rate: float, **_: Any) -> tuple[str, str] | None:
    if max_rate < rate:
        return f"max_rate ({max_rate}) must be at least rate ({rate})", "max_rate"
    return None


@declare(
    rate=Real(0, 1), max_rate=Real(0, 1), target_diversity=Real(0, 1, low_open=True),
    combination_check=_max_rate_at_least_rate, per_gene_rate=adaptive_rate,
)  # fmt: skip
def mutate_adaptive(
    genome: Genome,
    space: SearchSpace,
    rng: np.random.Generator,
    diversity: float | None = None,
    *,
    rate: float = 0.2,
    max_rate: float = 0.8,
    target_diversity: float = 0.15,
) -> Genome:
    """Per-gene resampling at ``adaptive_rate``: more mutation as the population's diversity collapses."""
    effective = adaptive_rate(diversity, rate=rate, max_rate=max_rate, target_diversity=target_diversity)
    return mutate_resample(genome, space, rng, rate=effective)


MUTATIONS = {
    "resample": mutate_resample,
    "gaussian": mutate_gaussian,
    "adaptive": mutate_adaptive,
}


def mutation_rate(mutate: Callable[..., Genome], diversity: float | None) -> float | None:
    """The per-gene rate a bound mutation operator applies at ``diversity`` (logged per generation,
    and used for the layer genes of architecture genomes); None for an operator that declares none."""
    function = getattr(mutate, "func", mutate)
    rate_at = getattr(function, "per_gene_rate", None)
    if rate_at is None:
        return None
    return float(rate_at(diversity, **(keyword_defaults(function) | dict(getattr(mutate, "keywords", {})))))
