"""The genetic algorithm: population, elitism, selection, crossover, mutation, and its loop.

Fitness is computed outside (``evaluate`` callback): the GA hands over a whole generation of
candidates at once and gets one score each back. A genome seen before is never trained again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from pipeline.config import GAConfig
from pipeline.operators import bind_operator
from pipeline.space import Genome, SearchSpace, genome_hash

# Generations in a row that may bring no new genome before the search is declared converged.
MAX_GENERATIONS_WITHOUT_NEW_GENOME = 20


@dataclass(frozen=True)
class Member:
    """An individual of a generation's population, scored."""

    genome: Genome
    genome_hash: str
    fitness: float
    run_id: str | None
    origin: str  # "initial", "child", "elite" (carried unchanged) or "cached" (seen before)
    parents: tuple[str, str] | None = None  # the parents' genome hashes


@dataclass(frozen=True)
class Candidate:
    """A genome to score, with its place in the generation and its parents."""

    genome: Genome
    index: int
    parents: tuple[Member, Member] | None = None


@dataclass(frozen=True)
class Generation:
    number: int
    members: tuple[Member, ...]
    trained: int  # genomes trained in this generation (the budget they used)
    cache_hits: int
    diversity: float

    @property
    def fitness(self) -> np.ndarray:
        return np.array([m.fitness for m in self.members])

    def summary(self) -> dict:
        finite = self.fitness[np.isfinite(self.fitness)]
        stats = (
            {"best": float(finite.max()), "mean": float(finite.mean()), "median": float(np.median(finite)),
             "worst": float(finite.min())}
            if finite.size else {"best": None, "mean": None, "median": None, "worst": None}
        )  # fmt: skip
        return {
            "generation": self.number,
            **stats,
            "failed": int((~np.isfinite(self.fitness)).sum()),
            "trained": self.trained,
            "cache_hits": self.cache_hits,
            "diversity": self.diversity,
            "fitness": [m.fitness if math.isfinite(m.fitness) else None for m in self.members],
            "genome_hashes": [m.genome_hash for m in self.members],
            "origins": [m.origin for m in self.members],
        }


@dataclass
class GAOutcome:
    generations: list[Generation] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def trained(self) -> int:
        return sum(g.trained for g in self.generations)


# (generation number, candidates) -> one (fitness, run id) per candidate, in order
EvaluateFn = Callable[[int, Sequence[Candidate]], Sequence[tuple[float, str | None]]]


def elite_indices(fitness: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` fittest individuals, best first; ties keep population order."""
    return np.argsort(-fitness, kind="stable")[:count]


def population_diversity(genomes: Sequence[Genome], space: SearchSpace) -> float:
    """Mean over genes of the standard deviation of the genes' unit-scale values (0 = clones)."""
    if len(genomes) < 2:
        return 0.0
    units = np.array([[dim.to_unit(g[dim.name]) for dim in space.dimensions] for g in genomes])
    return float(units.std(axis=0).mean())


def breed(
    parents: Sequence[Member],
    n_children: int,
    space: SearchSpace,
    rng: np.random.Generator,
    *,
    select: Callable[..., np.ndarray],
    crossover: Callable[..., Genome],
    mutate: Callable[..., Genome],
) -> list[tuple[Genome, tuple[int, int]]]:
    """``n_children`` children of the population ``parents``, each with its parents' indices."""
    fitness = np.array([m.fitness for m in parents])
    pairs = select(fitness, n_children, rng)
    children = []
    for a, b in pairs:
        child = crossover(parents[a].genome, parents[b].genome, space, rng)
        children.append((mutate(child, space, rng), (int(a), int(b))))
    return children


class GeneticSearch:
    """Generational GA with elitism over ``space``, stopping when ``budget`` genomes are trained."""

    def __init__(self, space: SearchSpace, config: GAConfig, *, budget: int, seed: int) -> None:
        self.space = space
        self.config = config
        self.budget = budget
        self.rng = np.random.default_rng(seed)
        self.select = bind_operator("selection", config.selection.name, config.selection.settings)
        self.crossover = bind_operator("crossover", config.crossover.name, config.crossover.settings)
        self.mutate = bind_operator("mutation", config.mutation.name, config.mutation.settings)
        self.cache: dict[str, Member] = {}

    def run(self, evaluate: EvaluateFn, on_generation: Callable[[Generation], None] | None = None) -> GAOutcome:
        outcome = GAOutcome()
        initial = [Candidate(self.space.sample(self.rng), i) for i in range(self.config.population_size)]
        population = self._score_generation(0, initial, [], evaluate, outcome, on_generation)
        idle_generations = 0
        while outcome.trained < self.budget:
            number = len(outcome.generations)
            elites = [
                replace(population[i], origin="elite")
                for i in elite_indices(np.array([m.fitness for m in population]), self.config.elites)
            ]
            n_children = self.config.population_size - len(elites)
            bred = breed(
                population, n_children, self.space, self.rng,
                select=self.select, crossover=self.crossover, mutate=self.mutate,
            )  # fmt: skip
            children = [
                Candidate(genome, len(elites) + i, (population[a], population[b]))
                for i, (genome, (a, b)) in enumerate(bred)
            ]
            population = self._score_generation(number, children, elites, evaluate, outcome, on_generation)
            idle_generations = 0 if outcome.generations[-1].trained else idle_generations + 1
            if idle_generations >= MAX_GENERATIONS_WITHOUT_NEW_GENOME:
                outcome.stop_reason = f"converged: no new genome in {idle_generations} generations"
                return outcome
        outcome.stop_reason = f"budget of {self.budget} evaluations spent"
        return outcome

    def _score_generation(
        self,
        number: int,
        candidates: list[Candidate],
        elites: list[Member],
        evaluate: EvaluateFn,
        outcome: GAOutcome,
        on_generation: Callable[[Generation], None] | None,
    ) -> list[Member]:
        """Score a generation's candidates: cached genomes reuse their score, new ones are trained
        as one batch while budget remains; candidates past the budget are dropped."""
        remaining = self.budget - outcome.trained
        to_train: list[Candidate] = []
        planned: set[str] = set(self.cache)
        for candidate in candidates:
            hash_ = genome_hash(candidate.genome)
            if hash_ not in planned and len(to_train) < remaining:
                to_train.append(candidate)
                planned.add(hash_)
        scores = evaluate(number, to_train) if to_train else []
        for candidate, (fitness, run_id) in zip(to_train, scores):
            hash_ = genome_hash(candidate.genome)
            parents = tuple(p.genome_hash for p in candidate.parents) if candidate.parents else None
            origin = "initial" if number == 0 else "child"
            self.cache[hash_] = Member(candidate.genome, hash_, fitness, run_id, origin, parents)  # type: ignore[arg-type]
        members = list(elites)
        cache_hits = 0
        for candidate in candidates:
            hash_ = genome_hash(candidate.genome)
            if hash_ not in self.cache:
                continue  # past the budget
            member = self.cache[hash_]
            if not any(c is candidate for c in to_train):
                cache_hits += 1
                member = replace(member, origin="cached")
            members.append(member)
        generation = Generation(
            number, tuple(members), len(to_train), cache_hits,
            population_diversity([m.genome for m in members], self.space),
        )  # fmt: skip
        outcome.generations.append(generation)
        if on_generation is not None:
            on_generation(generation)
        return members

