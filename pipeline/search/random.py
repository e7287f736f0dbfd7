"""Random search: ``budget`` genomes drawn independently with scikit-learn's ``ParameterSampler``,
proposed in one batch."""

from __future__ import annotations

from sklearn.model_selection import ParameterSampler

from pipeline.search.protocol import FixedBatch, Method
from pipeline.space import ArchitectureSpace, Genome, InfeasibleGenome, SearchSpace
from pipeline.space.architecture import CONV_COUNT, FC_COUNT, assemble_genome, layer_count_view


def random_genomes(space: SearchSpace, budget: int, seed: int) -> list[Genome]:
    """``budget`` genomes drawn independently from the space's distributions (``ParameterSampler``)."""
    distributions = {dim.name: dim.distribution() for dim in space.dimensions}
    sampler = ParameterSampler(distributions, n_iter=budget, random_state=seed)
    return [space.canonical(point) for point in sampler]


def architecture_random_genomes(space: ArchitectureSpace, budget: int, seed: int) -> list[Genome]:
    """``budget`` genomes from ``ParameterSampler(random_state=seed)`` over the optimiser genes'
    distributions, the two layer counts and one slot per possible layer gene key
    (``conv_<i>_<key>``, ``fc_<j>_<key>``, up to the maximum lengths), the slots truncated to the
    counts; each repaired. Draws repair rejects are skipped (further draws of the same sampler take
    their place), so same seed, same genomes."""
    distributions = {dim.name: dim.distribution() for dim in layer_count_view(space).dimensions}
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
        conv = [{d.name: point[f"conv_{i}_{d.name}"] for d in space.conv.dimensions} for i in range(point[CONV_COUNT])]
        fc = [{d.name: point[f"fc_{i}_{d.name}"] for d in space.fc.dimensions} for i in range(point[FC_COUNT])]
        try:
            genomes.append(space.repair(assemble_genome(space, point, conv, fc))[0])
        except InfeasibleGenome:
            continue
    return genomes


SAMPLERS_BY_KIND = {"hyperparameters": random_genomes, "architecture": architecture_random_genomes}


class RandomSearch(FixedBatch):
    method = "random"

    def __init__(self, space: SearchSpace | ArchitectureSpace, budget: int, seed: int) -> None:
        super().__init__(SAMPLERS_BY_KIND[space.kind](space, budget, seed), f"{budget} random draws evaluated")


METHOD = Method(
    "random", "Random search", lambda config, space: RandomSearch(space, config.budget.evaluations, config.seed)
)
