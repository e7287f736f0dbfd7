"""Operators on architecture genomes: the conv and fc layer lists, and whole genomes.

They follow the house contract: pure functions, randomness only from the given
``numpy.random.Generator`` in a documented order (same seed, same child), inputs never changed.
They do not repair; the caller runs ``ArchitectureSpace.repair`` before training.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.operators.mutation import mutation_rate
from pipeline.space.architecture import ArchitectureSpace, Layer
from pipeline.space.dimensions import Genome, SearchSpace

# ----------------------------------------------------------------------------------------------------------------------
# Layer-list operators


def crossover_layers_mix(
    layers_a: Sequence[Layer],
    layers_b: Sequence[Layer],
    rng: np.random.Generator,
    *,
    bounds: tuple[int, int] | None = None,
) -> list[Layer]:
    """Study 002: over the shorter parent's length, each key of each gene from ``a`` or ``b`` with
    probability 0.5; the longer parent's remaining genes copied after. The child is as long as the
    longer parent, so it respects any ``bounds`` both parents do (accepted for a common call shape).

    Draws: one ``rng.random((n, keys))`` for the ``n`` shared slots (none when ``n == 0``).
    """
    n = min(len(layers_a), len(layers_b))
    child: list[Layer] = []
    if n:
        keys = list(layers_a[0])
        take_b = rng.random((n, len(keys))) < 0.5
        for i in range(n):
            child.append({k: (layers_b[i] if b else layers_a[i])[k] for k, b in zip(keys, take_b[i])})
    longer = layers_a if len(layers_a) > len(layers_b) else layers_b
    return child + [dict(g) for g in longer[n:]]


def crossover_layers_cut_splice(
    layers_a: Sequence[Layer], layers_b: Sequence[Layer], rng: np.random.Generator, *, bounds: tuple[int, int]
) -> list[Layer]:
    """One-point cut and splice: ``a[:i] + b[j:]``, ``(i, j)`` uniform among the cuts
    (``0 <= i <= len(a)``, ``0 <= j <= len(b)``) that give a length within ``bounds``.

    Draws: one ``rng.integers`` over the valid cuts, listed by ``i`` then ``j``.
    """
    lo, hi = bounds
    cuts = [
        (i, j) for i in range(len(layers_a) + 1) for j in range(len(layers_b) + 1) if lo <= i + len(layers_b) - j <= hi
    ]
    if not cuts:
        raise ValueError(f"no cut of parents of lengths {len(layers_a)} and {len(layers_b)} fits {bounds}")
    i, j = cuts[int(rng.integers(len(cuts)))]
    return [dict(g) for g in layers_a[:i]] + [dict(g) for g in layers_b[j:]]


LAYER_CROSSOVERS: dict[str, Callable[..., list[Layer]]] = {
    "mix": crossover_layers_mix,
    "cut_splice": crossover_layers_cut_splice,
}


def mutate_layer_genes(
    layers: Sequence[Layer], layer_space: SearchSpace, rng: np.random.Generator, *, rate: float
) -> list[Layer]:
    """Each key of each gene, with probability ``rate``, redrawn from its choices.

    Draws, gene by gene: ``rng.random(keys)``, then one ``sample`` per key hit (in key order).
    """
    child = []
    for gene in layers:
        hits = rng.random(len(layer_space.dimensions)) < rate
        child.append({d.name: d.sample(rng) if hit else gene[d.name] for d, hit in zip(layer_space.dimensions, hits)})
    return child


def mutate_length(
    layers: Sequence[Layer],
    layer_space: SearchSpace,
    rng: np.random.Generator,
    *,
    rate: float,
    bounds: tuple[int, int],
) -> list[Layer]:
    """Study 002: new length ``round(Normal(len(layers), sqrt(rate * bounds[1])))`` clipped to
    ``bounds`` (variance proportional to the rate); genes appended are drawn like initial ones,
    a shorter list drops genes from the end. Rate 0 keeps the length.

    Draws: one ``rng.normal``, then ``layer_space.sample`` per appended gene.
    """
    sd = math.sqrt(rate * bounds[1])
    length = int(round(float(rng.normal(len(layers), sd))))
    length = min(max(length, bounds[0]), bounds[1])
    kept = [dict(g) for g in layers[:length]]
    return kept + [layer_space.sample(rng) for _ in range(length - len(kept))]


# ----------------------------------------------------------------------------------------------------------------------
# Whole-genome operators


def crossover_architecture(
    parent_a: Genome,
    parent_b: Genome,
    space: ArchitectureSpace,
    rng: np.random.Generator,
    *,
    optimiser_crossover: Callable[..., Genome],
    layer_method: str = "mix",
) -> Genome:
    """A child genome, not repaired. ``optimiser_crossover(opt_a, opt_b, space.optimiser, rng)``
    crosses the optimiser genes; ``LAYER_CROSSOVERS[layer_method]`` the conv genes after the
    prefix (the prefix is kept) and the fc genes.

    Draws: the optimiser crossover's, then the conv layers', then the fc layers'.
    """
    if layer_method not in LAYER_CROSSOVERS:
        raise KeyError(f"unknown layer crossover {layer_method!r}; choose one of {sorted(LAYER_CROSSOVERS)}")
    cross = LAYER_CROSSOVERS[layer_method]
    p = len(space.prefix)
    opt_a, opt_b = space.optimiser_genes(parent_a), space.optimiser_genes(parent_b)
    child = dict(optimiser_crossover(opt_a, opt_b, space.optimiser, rng))
    conv = cross(parent_a["conv"][p:], parent_b["conv"][p:], rng, bounds=space.conv_length)
    fc = cross(parent_a["fc"], parent_b["fc"], rng, bounds=space.fc_length)
    return child | {"conv": [dict(g) for g in space.prefix] + conv, "fc": fc}


def mutate_architecture(
    genome: Genome,
    space: ArchitectureSpace,
    rng: np.random.Generator,
    *,
    optimiser_mutation: Callable[..., Genome],
    rate: float,
) -> Genome:
    """A mutated copy, not repaired: ``optimiser_mutation(opt_genes, space.optimiser, rng)`` on the
    optimiser genes; on the conv genes after the prefix and on the fc genes, ``mutate_length`` then
    ``mutate_layer_genes``, both at ``rate``. The prefix is kept.

    Draws: the optimiser mutation's, then conv length, conv genes, fc length, fc genes.
    """
    p = len(space.prefix)
    child = dict(optimiser_mutation(space.optimiser_genes(genome), space.optimiser, rng))
    conv = mutate_length(genome["conv"][p:], space.conv, rng, rate=rate, bounds=space.conv_length)
    conv = mutate_layer_genes(conv, space.conv, rng, rate=rate)
    fc = mutate_length(genome["fc"], space.fc, rng, rate=rate, bounds=space.fc_length)
    fc = mutate_layer_genes(fc, space.fc, rng, rate=rate)
    return child | {"conv": [dict(g) for g in space.prefix] + conv, "fc": fc}


# The layer genes' mutation rate when the configured mutation operator declares no per-gene rate.
DEFAULT_LAYER_RATE = 0.2


def genome_operators(
    space: Any, crossover: Callable[..., Genome], mutate: Callable[..., Genome], layer_method: str
) -> tuple[Callable[..., Genome], Callable[..., Genome]]:
    """Whole-genome (crossover, mutation) for the space's genome kind: the configured operators as
    they are for hyperparameter genomes; for architecture genomes they act on the optimiser genes
    and the layer operators (``layer_method`` crossover, length and gene mutation) on the layers."""
    if space.kind != "architecture":
        return crossover, mutate

    def cross(parent_a: Genome, parent_b: Genome, space: Any, rng: np.random.Generator) -> Genome:
        return crossover_architecture(
            parent_a, parent_b, space, rng, optimiser_crossover=crossover, layer_method=layer_method
        )

    def mutate_all(genome: Genome, space: Any, rng: np.random.Generator, diversity: float | None = None) -> Genome:
        rate = mutation_rate(mutate, diversity)
        return mutate_architecture(
            genome, space, rng,
            optimiser_mutation=functools.partial(mutate, diversity=diversity),
            rate=DEFAULT_LAYER_RATE if rate is None else rate,
        )  # fmt: skip

    return cross, mutate_all
