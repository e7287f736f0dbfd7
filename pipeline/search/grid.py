"""Grid search: every point of the largest even grid that fits the budget, with scikit-learn's
``ParameterGrid``, proposed in one batch."""

from __future__ import annotations

import math
from typing import Any

from sklearn.model_selection import ParameterGrid

from pipeline.search.protocol import FixedBatch, Method
from pipeline.space import ArchitectureSpace, Genome, InfeasibleGenome, SearchSpace, genome_hash
from pipeline.space.architecture import CONV_COUNT, FC_COUNT, assemble_genome, layer_count_view


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


# ----------------------------------------------------------------------------------------------------------------------
# The architecture genome kind (pipeline.architecture)


def architecture_grid_genomes(space: ArchitectureSpace, budget: int) -> list[Genome]:
    """A grid over the two layer counts and the optimiser genes (``grid_levels`` of that view), every
    layer gene at the middle of each choice list; each point repaired, infeasible points and
    duplicates after repair dropped, so at most ``budget`` genomes (``ParameterGrid`` order)."""
    view = layer_count_view(space)
    levels = grid_levels(view, budget)
    param_grid = {dim.name: dim.levels(levels[dim.name]) for dim in view.dimensions}
    middle_conv = {dim.name: dim.levels(1)[0] for dim in space.conv.dimensions}
    middle_fc = {dim.name: dim.levels(1)[0] for dim in space.fc.dimensions}
    genomes, seen = [], set()
    for point in ParameterGrid(param_grid):
        conv = [dict(middle_conv) for _ in range(int(point[CONV_COUNT]))]
        fc = [dict(middle_fc) for _ in range(int(point[FC_COUNT]))]
        try:
            genome, _ = space.repair(assemble_genome(space, point, conv, fc))
        except InfeasibleGenome:
            continue
        if genome_hash(genome) not in seen:
            seen.add(genome_hash(genome))
            genomes.append(genome)
    return genomes[:budget]


GRIDS_BY_KIND = {"hyperparameters": grid_genomes, "architecture": architecture_grid_genomes}


class GridSearch(FixedBatch):
    method = "grid"

    def __init__(self, space: SearchSpace | ArchitectureSpace, budget: int) -> None:
        genomes = GRIDS_BY_KIND[space.kind](space, budget)
        super().__init__(genomes, f"all {len(genomes)} grid points evaluated")

    def stage_params(self) -> dict[str, Any]:
        return {"grid_points": len(self.genomes)}

    def summary(self) -> dict[str, Any]:
        return {"grid_points": len(self.genomes)}


METHOD = Method("grid", "Grid search", lambda config, space: GridSearch(space, config.budget.evaluations))
