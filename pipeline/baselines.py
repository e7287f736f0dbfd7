"""The baselines: grid search and random search over the same space, with scikit-learn's samplers."""

from __future__ import annotations

import math

from sklearn.model_selection import ParameterGrid, ParameterSampler

from pipeline.architecture import ArchitectureSpace, InfeasibleGenome
from pipeline.space import Genome, IntDimension, SearchSpace, genome_hash


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


# ----------------------------------------------------------------------------------------------------------------------
# The architecture genome kind (pipeline.architecture)

# Names of the layer-count dimensions in the fixed-length views below (never an optimiser gene's name).
_CONV_COUNT, _FC_COUNT = "conv_layers", "fc_layers"


def _count_view(space: ArchitectureSpace) -> SearchSpace:
    """The new-conv and fc layer counts, then the optimiser dimensions: a fixed-length space.

    Counts first: ``grid_levels`` breaks ties towards earlier dimensions, so a small grid varies
    the depth of the network before the optimiser genes.
    """
    counts = (IntDimension(_CONV_COUNT, *space.conv_length), IntDimension(_FC_COUNT, *space.fc_length))
    return SearchSpace(counts + space.optimiser.dimensions)


def _assemble(space: ArchitectureSpace, point: dict, conv: list[dict], fc: list[dict]) -> Genome:
    genome = {**space.optimiser.canonical(point), "conv": [*space.prefix, *conv], "fc": fc}
    return space.canonical(genome)


def architecture_grid_genomes(space: ArchitectureSpace, budget: int) -> list[Genome]:
    """A grid over the two layer counts and the optimiser genes (``grid_levels`` of that view), every
    layer gene at the middle of each choice list; each point repaired, infeasible points and
    duplicates after repair dropped, so at most ``budget`` genomes (``ParameterGrid`` order)."""
    view = _count_view(space)
    levels = grid_levels(view, budget)
    param_grid = {dim.name: dim.levels(levels[dim.name]) for dim in view.dimensions}
    middle_conv = {dim.name: dim.levels(1)[0] for dim in space.conv.dimensions}
    middle_fc = {dim.name: dim.levels(1)[0] for dim in space.fc.dimensions}
    genomes, seen = [], set()
    for point in ParameterGrid(param_grid):
        conv = [dict(middle_conv) for _ in range(int(point[_CONV_COUNT]))]
        fc = [dict(middle_fc) for _ in range(int(point[_FC_COUNT]))]
        try:
            genome, _ = space.repair(_assemble(space, point, conv, fc))
        except InfeasibleGenome:
            continue
        if genome_hash(genome) not in seen:
            seen.add(genome_hash(genome))
            genomes.append(genome)
    return genomes[:budget]


def architecture_random_genomes(space: ArchitectureSpace, budget: int, seed: int) -> list[Genome]:
    """``budget`` genomes from ``ParameterSampler(random_state=seed)`` over the optimiser genes'
    distributions, the two layer counts and one slot per possible layer gene key
    (``conv_<i>_<key>``, ``fc_<j>_<key>``, up to the maximum lengths), the slots truncated to the
    counts; each repaired. Draws repair rejects are skipped (further draws of the same sampler take
    their place), so same seed, same genomes."""
    distributions = {dim.name: dim.distribution() for dim in _count_view(space).dimensions}
    for kind, layer_space, bounds in (("conv", space.conv, space.conv_length), ("fc", space.fc, space.fc_length)):
        for i in range(bounds[1]):
            distributions |= {f"{kind}_{i}_{dim.name}": dim.distribution() for dim in layer_space.dimensions}
    # The counts are scipy distributions, so ParameterSampler samples with replacement; the iterator
    # is lazy, so the headroom only costs draws that are used.
    sampler = ParameterSampler(distributions, n_iter=100 * budget, random_state=seed)
    genomes: list[Genome] = []
    for point in sampler:
        if len(genomes) == budget:
            break
        conv = [{d.name: point[f"conv_{i}_{d.name}"] for d in space.conv.dimensions} for i in range(point[_CONV_COUNT])]
        fc = [{d.name: point[f"fc_{i}_{d.name}"] for d in space.fc.dimensions} for i in range(point[_FC_COUNT])]
        try:
            genomes.append(space.repair(_assemble(space, point, conv, fc))[0])
        except InfeasibleGenome:
            continue
    return genomes
