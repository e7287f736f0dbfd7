"""Mutation: a changed copy of one genome.

Contract: ``mutate_*(genome, space, rng, **settings) -> genome``; the input is not changed and every
gene of the result lies in ``space``.
"""

from __future__ import annotations

import numpy as np

from pipeline.space import ChoiceDimension, Genome, SearchSpace


def mutate_resample(genome: Genome, space: SearchSpace, rng: np.random.Generator, *, rate: float = 0.2) -> Genome:
    """Each gene, with probability ``rate``, is redrawn as in the initial population."""
    hits = rng.random(len(space.dimensions)) < rate
    return {dim.name: dim.sample(rng) if hit else genome[dim.name] for dim, hit in zip(space.dimensions, hits)}


def mutate_gaussian(
    genome: Genome, space: SearchSpace, rng: np.random.Generator, *, rate: float = 0.2, sigma: float = 0.1
) -> Genome:
    """Each gene, with probability ``rate``, moves by N(0, sigma) on its unit (log where log-scaled)
    scale, clipped to the space; a choice gene is redrawn instead."""
    hits = rng.random(len(space.dimensions)) < rate
    child: Genome = {}
    for dim, hit in zip(space.dimensions, hits):
        value = genome[dim.name]
        if hit:
            if isinstance(dim, ChoiceDimension):
                value = dim.sample(rng)
            else:
                value = dim.from_unit(dim.to_unit(value) + rng.normal(0.0, sigma))
        child[dim.name] = value
    return child


MUTATIONS = {
    "resample": mutate_resample,
    "gaussian": mutate_gaussian,
}
