"""The genetic algorithm: population, elitism, survival, selection, crossover, mutation, and its loop.

Fitness is computed outside (``evaluate`` callback): the GA hands over a whole generation of
candidates at once and gets one score each back. A genome seen before is never trained again.

The loop works on either genome kind: a ``SearchSpace`` (fixed-length hyperparameters) or an
``ArchitectureSpace`` (variable-length networks, optionally grown in phases). Both offer
``sample``, ``repair`` and ``diversity``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.config import GAConfig, PhasesConfig
from pipeline.operators import bind_operator, split_settings
from pipeline.operators.mutation import mutation_rate
from pipeline.space import Genome, SearchSpace, genome_hash

# Generations in a row that may bring no new genome before the search is declared converged.
MAX_GENERATIONS_WITHOUT_NEW_GENOME = 20
# Rounds of breeding that may replace rejected (untrainable) children in one generation.
MAX_BREEDING_ROUNDS = 10


@dataclass(frozen=True)
class Member:
    """An individual of a generation's population, scored."""

    genome: Genome
    genome_hash: str
    fitness: float
    run_id: str | None
    # "initial", "child", "immigrant" (trained this generation); "elite", "survivor" (carried
    # unchanged); "cached" (bred again but seen before, so not retrained)
    origin: str
    parents: tuple[str, ...] | None = None  # the parents' genome hashes


@dataclass(frozen=True)
class Candidate:
    """A genome to score, with its place in the generation and where its weights may come from."""

    genome: Genome
    index: int
    parents: tuple[Member, ...] | None = None  # fitter first: inheritance starts from parents[0]
    origin: str = "child"
    notes: tuple[str, ...] = ()  # what repair changed before training
    freeze_conv: int = 0  # conv layers kept frozen (phased growth with transferred weights)


@dataclass(frozen=True)
class Rejection:
    """A bred genome no repair could make trainable; recorded, never trained."""

    genome: Genome
    reason: str


@dataclass(frozen=True)
class Generation:
    number: int
    members: tuple[Member, ...]
    trained: int  # genomes trained in this generation (the budget they used)
    cache_hits: int
    diversity: float
    phase: int = 0
    mutation_rate: float | None = None  # the per-gene rate that bred this generation (None: initial)
    rejected: tuple[Rejection, ...] = ()

    @property
    def fitness(self) -> np.ndarray:
        return np.array([m.fitness for m in self.members])

    @property
    def best(self) -> float:
        finite = self.fitness[np.isfinite(self.fitness)]
        return float(finite.max()) if finite.size else -math.inf

    def summary(self) -> dict:
        finite = self.fitness[np.isfinite(self.fitness)]
        stats = (
            {"best": float(finite.max()), "mean": float(finite.mean()), "median": float(np.median(finite)),
             "worst": float(finite.min())}
            if finite.size else {"best": None, "mean": None, "median": None, "worst": None}
        )  # fmt: skip
        return {
            "generation": self.number,
            "phase": self.phase,
            **stats,
            "failed": int((~np.isfinite(self.fitness)).sum()),
            "trained": self.trained,
            "cache_hits": self.cache_hits,
            "diversity": self.diversity,
            "mutation_rate": self.mutation_rate,
            "rejected": [r.reason for r in self.rejected],
            "fitness": [m.fitness if math.isfinite(m.fitness) else None for m in self.members],
            "genome_hashes": [m.genome_hash for m in self.members],
            "origins": [m.origin for m in self.members],
        }


@dataclass
class GAOutcome:
    generations: list[Generation] = field(default_factory=list)
    stop_reason: str = ""
    phase_reasons: list[str] = field(default_factory=list)  # why each phase ended

    @property
    def trained(self) -> int:
        return sum(g.trained for g in self.generations)

    @property
    def best(self) -> float:
        return max((g.best for g in self.generations), default=-math.inf)


# (generation number, candidates) -> one (fitness, run id) per candidate, in order
EvaluateFn = Callable[[int, Sequence[Candidate]], Sequence[tuple[float, str | None]]]


def elite_indices(fitness: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` fittest individuals, best first; ties keep population order."""
    return np.argsort(-fitness, kind="stable")[:count]


def survivor_indices(fitness: np.ndarray, elites: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` of the non-elite individuals, drawn uniformly without replacement (so some less
    fit individuals live on, as in the variable-length GA study); in population order."""
    rest = np.sort(np.argsort(-fitness, kind="stable")[elites:])
    count = min(count, len(rest))
    if count == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(rng.choice(rest, size=count, replace=False))


def population_diversity(genomes: Sequence[Genome], space: Any) -> float:
    """The space's diversity measure of a population (0 = clones)."""
    return space.diversity(list(genomes))


def breed(
    parents: Sequence[Member],
    n_children: int,
    space: Any,
    rng: np.random.Generator,
    *,
    select: Callable[..., np.ndarray],
    crossover: Callable[..., Genome],
    mutate: Callable[..., Genome],
    crossover_probability: float = 1.0,
    diversity: float | None = None,
) -> list[tuple[Genome, tuple[int, int]]]:
    """``n_children`` children of the population ``parents``, each with its parents' indices.

    A pair is crossed with probability ``crossover_probability`` (else the child starts as a copy
    of the first parent); every child is then mutated. Draw order per child: the crossover coin
    (only when the probability is below 1), the crossover's draws, the mutation's draws.
    """
    fitness = np.array([m.fitness for m in parents])
    pairs = select(fitness, n_children, rng)
    children = []
    for a, b in pairs:
        if crossover_probability >= 1.0 or rng.random() < crossover_probability:
            child = crossover(parents[a].genome, parents[b].genome, space, rng)
        else:
            child = dict(parents[a].genome)
        children.append((mutate(child, space, rng, diversity), (int(a), int(b))))
    return children


def _architecture_operators(crossover: Callable, mutate: Callable, layer_method: str) -> tuple[Callable, Callable]:
    """Whole-genome operators for architecture genomes: the configured hyperparameter operators act
    on the optimiser genes, the layer operators on the conv and fc gene lists."""
    from pipeline.architecture import crossover_architecture, mutate_architecture

    def cross(parent_a: Genome, parent_b: Genome, space: Any, rng: np.random.Generator) -> Genome:
        return crossover_architecture(
            parent_a, parent_b, space, rng, optimiser_crossover=crossover, layer_method=layer_method
        )

    def mutate_all(genome: Genome, space: Any, rng: np.random.Generator, diversity: float | None = None) -> Genome:
        return mutate_architecture(
            genome, space, rng,
            optimiser_mutation=functools.partial(mutate, diversity=diversity),
            rate=mutation_rate(mutate, diversity),
        )  # fmt: skip

    return cross, mutate_all


class GeneticSearch:
    """Generational GA with elitism over ``space``, stopping when ``budget`` genomes are trained or
    a ``ga.termination`` rule fires. An architecture space with ``phases.count > 1`` is grown in
    phases that share the budget equally."""

    def __init__(
        self,
        space: Any,
        config: GAConfig,
        *,
        budget: int,
        seed: int,
        phases: PhasesConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.space = space
        self.config = config
        self.budget = budget
        self.rng = np.random.default_rng(seed)
        self.phases = phases if phases is not None and not isinstance(space, SearchSpace) else PhasesConfig()
        # Seconds since the search started; the stage passes a clock that replays identically on resume.
        self.clock = clock or _elapsed_since(time.perf_counter())
        self.select = bind_operator("selection", config.selection.name, config.selection.settings)
        crossover_settings, loop = split_settings("crossover", config.crossover.settings)
        self.crossover_probability = float(loop["probability"])
        self.crossover = bind_operator("crossover", config.crossover.name, crossover_settings)
        self.mutate = bind_operator("mutation", config.mutation.name, config.mutation.settings)
        if not isinstance(space, SearchSpace):
            self.crossover, self.mutate_genome = _architecture_operators(self.crossover, self.mutate, loop["layers"])
        else:
            self.mutate_genome = self.mutate
        self.cache: dict[str, Member] = {}
        self._training_limit = budget

    def run(self, evaluate: EvaluateFn, on_generation: Callable[[Generation], None] | None = None) -> GAOutcome:
        outcome = GAOutcome()
        space = self.space
        best: Member | None = None
        for phase in range(self.phases.count):
            transfer: Member | None = None
            if phase > 0:
                if best is None:
                    outcome.stop_reason = "no individual of the previous phase could be trained"
                    return outcome
                try:
                    space = space.grow(best.genome, self.phases.new_conv_layers)
                except ValueError as exc:  # InfeasibleGenome: no new layer fits after the best's
                    outcome.stop_reason = f"phase {phase} cannot start: {exc}"
                    return outcome
                transfer = best
            phase_budget = self.budget * (phase + 1) // self.phases.count
            reason, stop_all = self._run_phase(phase, space, transfer, phase_budget, evaluate, on_generation, outcome)
            outcome.phase_reasons.append(reason)
            best = self._best_member() or best
            if stop_all or phase == self.phases.count - 1:
                outcome.stop_reason = reason
                return outcome
        return outcome

    def _best_member(self) -> Member | None:
        finished = [m for m in self.cache.values() if math.isfinite(m.fitness)]
        return max(finished, key=lambda m: m.fitness) if finished else None

    def _run_phase(
        self,
        phase: int,
        space: Any,
        transfer: Member | None,
        phase_budget: int,
        evaluate: EvaluateFn,
        on_generation: Callable[[Generation], None] | None,
        outcome: GAOutcome,
    ) -> tuple[str, bool]:
        """Run one phase's generations; returns (why it ended, whether the whole search must stop)."""
        freeze = len(getattr(space, "prefix", ())) if transfer is not None and self.phases.freeze_transferred else 0
        self._training_limit = phase_budget  # a generation may not overrun its phase's share
        initial = []
        for i in range(self.config.population_size):
            # sample() returns trainable genomes (an architecture space repairs its draws).
            parents = (transfer,) if transfer is not None else None
            initial.append(Candidate(space.sample(self.rng), i, parents, "initial", (), freeze))
        population = self._score_generation(
            len(outcome.generations), phase, space, initial, [], evaluate, outcome, on_generation, None, ()
        )
        phase_generations, idle, stagnant, best = 1, 0, 0, outcome.generations[-1].best
        while True:
            reason = self._global_stop(outcome)
            if reason:
                return reason, True
            if outcome.trained >= phase_budget:
                return f"phase {phase}: its share of the budget ({phase_budget} evaluations in all) spent", False
            if len(population) < 2:
                return f"only {len(population)} trainable individual(s) left: nothing to breed", True
            termination = self.config.termination
            if termination.generations is not None and phase_generations >= termination.generations:
                return f"{termination.generations} generations run", False
            if termination.stagnation is not None and stagnant >= termination.stagnation:
                return f"stagnation: no better best in {stagnant} generations", False
            if idle >= MAX_GENERATIONS_WITHOUT_NEW_GENOME:
                return f"converged: no new genome in {idle} generations", False
            population = self._next_generation(
                len(outcome.generations), phase, space, population, freeze, evaluate, outcome, on_generation
            )
            phase_generations += 1
            idle = 0 if outcome.generations[-1].trained else idle + 1
            new_best = outcome.generations[-1].best
            stagnant = 0 if new_best > best else stagnant + 1
            best = max(best, new_best)

    def _global_stop(self, outcome: GAOutcome) -> str | None:
        if outcome.trained >= self.budget:
            return f"budget of {self.budget} evaluations spent"
        termination = self.config.termination
        if termination.target_fitness is not None and outcome.best >= termination.target_fitness:
            return f"target fitness {termination.target_fitness} reached (best {outcome.best:.4f})"
        if termination.wall_clock_seconds is not None and self.clock() >= termination.wall_clock_seconds:
            return f"wall-clock budget of {termination.wall_clock_seconds:g} s spent"
        return None

    def _next_generation(
        self,
        number: int,
        phase: int,
        space: Any,
        population: list[Member],
        freeze: int,
        evaluate: EvaluateFn,
        outcome: GAOutcome,
        on_generation: Callable[[Generation], None] | None,
    ) -> list[Member]:
        """Elites and random survivors carried unchanged, fresh immigrants, then bred children."""
        fitness = np.array([m.fitness for m in population])
        elite_idx = elite_indices(fitness, self.config.elites)
        carried = [replace(population[i], origin="elite") for i in elite_idx]
        for i in survivor_indices(fitness, len(elite_idx), self.config.survivors, self.rng):
            carried.append(replace(population[i], origin="survivor"))
        candidates = []
        for _ in range(self.config.survival.immigrants):
            index = len(carried) + len(candidates)
            candidates.append(Candidate(space.sample(self.rng), index, None, "immigrant", (), freeze))
        diversity = outcome.generations[-1].diversity
        rate = mutation_rate(self.mutate, diversity)
        rejected: list[Rejection] = []
        wanted = self.config.population_size - len(carried) - len(candidates)
        for _ in range(MAX_BREEDING_ROUNDS):
            missing = wanted - sum(c.origin == "child" for c in candidates)
            if missing <= 0:
                break
            bred = breed(
                population, missing, space, self.rng,
                select=self.select, crossover=self.crossover, mutate=self.mutate_genome,
                crossover_probability=self.crossover_probability, diversity=diversity,
            )  # fmt: skip
            for genome, (a, b) in bred:
                try:
                    repaired, notes = space.repair(genome)
                except ValueError as exc:  # InfeasibleGenome: recorded, never trained
                    rejected.append(Rejection(genome, str(exc)))
                    continue
                parents = sorted((population[a], population[b]), key=lambda m: -m.fitness)
                candidates.append(
                    Candidate(repaired, len(carried) + len(candidates), tuple(parents), "child", tuple(notes), freeze)
                )
        return self._score_generation(
            number, phase, space, candidates, carried, evaluate, outcome, on_generation, rate, tuple(rejected)
        )

    def _score_generation(
        self,
        number: int,
        phase: int,
        space: Any,
        candidates: list[Candidate],
        carried: list[Member],
        evaluate: EvaluateFn,
        outcome: GAOutcome,
        on_generation: Callable[[Generation], None] | None,
        rate: float | None,
        rejected: tuple[Rejection, ...],
    ) -> list[Member]:
        """Score a generation's candidates: cached genomes reuse their score, new ones are trained
        as one batch while budget remains; candidates past the budget are dropped."""
        remaining = min(self.budget, self._training_limit) - outcome.trained
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
            self.cache[hash_] = Member(candidate.genome, hash_, fitness, run_id, candidate.origin, parents)
        members = list(carried)
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
            population_diversity([m.genome for m in members], space), phase, rate, rejected,
        )  # fmt: skip
        outcome.generations.append(generation)
        if on_generation is not None:
            on_generation(generation)
        return members


def _elapsed_since(start: float) -> Callable[[], float]:
    return lambda: time.perf_counter() - start
