"""The genetic algorithm as an ask/tell strategy: population, elitism, survival, selection,
crossover, mutation, termination, and phased growth of architectures.

Fitness is computed outside: ``ask`` hands over a whole generation of proposals, ``tell`` gets one
score each back (a genome seen before is scored from the runner's cache, never trained again).

The generational loop is written once, as a coroutine (``_generations``): it yields each
generation's batch and receives its scores, so the random stream is drawn in one fixed order
whoever drives it, and a resumed search replays to the same state.

It works on either genome kind: a ``SearchSpace`` (fixed-length hyperparameters) or an
``ArchitectureSpace`` (variable-length networks, optionally grown in phases). Both offer
``sample``, ``repair`` and ``diversity``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from pipeline.config.sections import PhasesConfig
from pipeline.evaluation import Proposal, Scored
from pipeline.operators import bind_operator, split_settings
from pipeline.operators.layers import genome_operators
from pipeline.operators.mutation import mutation_rate
from pipeline.search.fidelity import rung_ranked_fitness
from pipeline.search.protocol import Batch, Group, GroupReport, Method
from pipeline.space import Genome
from pipeline.task import task_of_dataset

if TYPE_CHECKING:
    from pipeline.config.sections import GAConfig, StudyConfig
    from pipeline.space import Space

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
    # Multi-fidelity: the rung successive halving stopped it at; inf: trained all its epochs.
    fidelity_level: float = math.inf


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
    fitness: np.ndarray | None = None,
) -> list[tuple[Genome, tuple[int, int]]]:
    """``n_children`` children of the population ``parents``, each with its parents' indices.

    A pair is crossed with probability ``crossover_probability`` (else the child starts as a copy
    of the first parent); every child is then mutated. Draw order per child: the crossover coin
    (only when the probability is below 1), the crossover's draws, the mutation's draws.
    ``fitness``: what selection ranks the parents by (default: their fitness).
    """
    if fitness is None:
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


def _phases_or_single(phases: PhasesConfig | None, space: Any) -> PhasesConfig:
    """Phased growth applies to architecture genomes only; one phase otherwise."""
    return phases if phases is not None and space.kind == "architecture" else PhasesConfig()


class GeneticSearch:
    """Generational GA with elitism over ``space``, stopping when ``budget`` genomes are trained or
    a ``ga.termination`` rule fires. An architecture space with ``phases.count > 1`` is grown in
    phases that share the budget equally.

    ``clock`` gives seconds since the search started; by default the ``elapsed_seconds`` of the
    latest record told, so a resumed search (replaying its records) sees the clock of the killed one.
    """

    def __init__(
        self,
        space: Any,
        config: GAConfig,
        *,
        budget: int,
        seed: int,
        phases: PhasesConfig | None = None,
        clock: Callable[[], float] | None = None,
        maximize: bool = True,
        rank_by_rung: bool = True,
    ) -> None:
        self.space = space
        # Multi-fidelity (fidelity.ranking: rung): a member stopped at a lower rung ranks below every
        # member that went further, in elitism, survival, selection and the best; else by score alone.
        self.rank_by_rung = rank_by_rung
        self.config = config
        self.maximize = maximize  # the direction of termination.target_fitness (accuracy, or an error)
        self.budget = budget
        self.rng = np.random.default_rng(seed)
        self.phases = _phases_or_single(phases, space)
        self._elapsed = 0.0
        self.clock = clock or (lambda: self._elapsed)
        self.select = bind_operator("selection", config.selection.name, config.selection.settings)
        crossover_settings, loop = split_settings("crossover", config.crossover.settings)
        self.crossover_probability = float(loop["probability"])
        crossover = bind_operator("crossover", config.crossover.name, crossover_settings)
        self.mutate = bind_operator("mutation", config.mutation.name, config.mutation.settings)
        self.crossover, self.mutate_genome = genome_operators(space, crossover, self.mutate, loop["layers"])
        self.cache: dict[str, Member] = {}  # every genome trained, by hash
        self.outcome = GAOutcome()
        self._training_limit = budget
        self._flow = self._generations()
        self._pending: Batch | None = None
        self._started = False
        self._report: GroupReport | None = None

    # -- the ask/tell protocol ---------------------------------------------------------------

    @property
    def stop_reason(self) -> str:
        return self.outcome.stop_reason

    def ask(self) -> Batch | None:
        if not self._started:
            self._started = True
            self._pending = next(self._flow, None)
        return self._pending

    def tell(self, scored: Sequence[Scored | None]) -> GroupReport | None:
        if self._pending is None:
            raise RuntimeError("tell() without a pending batch: ask() first")
        for item in scored:
            if item is not None and item.new and item.record.elapsed_seconds is not None:
                self._elapsed = item.record.elapsed_seconds
        try:
            self._pending = self._flow.send(list(scored))
        except StopIteration:
            self._pending = None
        return self._report

    def stage_params(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {
            "generations": len(self.outcome.generations),
            "stop_reason": self.outcome.stop_reason,
            "phase_reasons": self.outcome.phase_reasons,
            "operators": self.operator_params(),
            "rejected": sum(len(g.rejected) for g in self.outcome.generations),
        }

    def history(self) -> list[dict[str, Any]]:
        return [g.summary() for g in self.outcome.generations]

    def operator_params(self) -> dict[str, Any]:
        """The GA's operator choices and settings, flat (MLflow params of every generation run)."""
        ga = self.config
        params: dict[str, Any] = {
            "population_size": ga.population_size, "elites": ga.elites, "survival.fraction": ga.survival.fraction,
            "survival.immigrants": ga.survival.immigrants, "weights": ga.weights, "space.kind": self.space.kind,
        }  # fmt: skip
        for role in ("selection", "crossover", "mutation"):
            spec = getattr(ga, role)
            params[role] = spec.name
            params |= {f"{role}.{k}": v for k, v in spec.settings.items()}
        params |= {f"termination.{k}": v for k, v in ga.termination.model_dump().items() if v is not None}
        return params

    # -- the generational loop (a coroutine: yields batches, receives their scores) --------------

    def _generations(self) -> Generator[Batch, list[Scored | None], None]:
        outcome = self.outcome
        space = self.space
        best: Member | None = None
        for phase in range(self.phases.count):
            transfer: Member | None = None
            if phase > 0:
                if best is None:
                    outcome.stop_reason = "no individual of the previous phase could be trained"
                    return
                try:
                    space = space.grow(best.genome, self.phases.new_conv_layers)
                except ValueError as exc:  # InfeasibleGenome: no new layer fits after the best's
                    outcome.stop_reason = f"phase {phase} cannot start: {exc}"
                    return
                transfer = best
            phase_budget = self.budget * (phase + 1) // self.phases.count
            reason, stop_all = yield from self._run_phase(phase, space, transfer, phase_budget)
            outcome.phase_reasons.append(reason)
            best = self._best_member() or best
            if stop_all or phase == self.phases.count - 1:
                outcome.stop_reason = reason
                return

    def _best_member(self) -> Member | None:
        finished = [m for m in self.cache.values() if math.isfinite(m.fitness)]
        if not finished:
            return None
        ranked = self.ranking_fitness(finished)
        return finished[int(np.argmax(ranked))]  # the first of equals

    def ranking_fitness(self, members: Sequence[Member]) -> np.ndarray:
        """What the GA ranks ``members`` by: their fitness, below every member of a higher rung when
        multi-fidelity stopped them early (and ``rank_by_rung``)."""
        fitness = np.array([m.fitness for m in members], dtype=float)
        if not self.rank_by_rung:
            return fitness
        return rung_ranked_fitness(fitness, np.array([m.fidelity_level for m in members], dtype=float))

    def _run_phase(
        self, phase: int, space: Any, transfer: Member | None, phase_budget: int
    ) -> Generator[Batch, list[Scored | None], tuple[str, bool]]:
        """One phase's generations; returns (why it ended, whether the whole search must stop)."""
        outcome = self.outcome
        freeze = len(getattr(space, "prefix", ())) if transfer is not None and self.phases.freeze_transferred else 0
        self._training_limit = phase_budget  # a generation may not overrun its phase's share
        number = len(outcome.generations)
        parents = (transfer,) if transfer is not None else ()
        # sample() returns trainable genomes (an architecture space repairs its draws).
        initial = [
            self._proposal(number, i, space.sample(self.rng), "initial", parents, (), freeze)
            for i in range(self.config.population_size)
        ]
        population = yield from self._score_generation(number, phase, space, initial, [], None, ())
        phase_generations, idle, stagnant, best = 1, 0, 0, outcome.generations[-1].best
        while True:
            reason = self._global_stop()
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
            population = yield from self._next_generation(len(outcome.generations), phase, space, population, freeze)
            phase_generations += 1
            idle = 0 if outcome.generations[-1].trained else idle + 1
            new_best = outcome.generations[-1].best
            stagnant = 0 if new_best > best else stagnant + 1
            best = max(best, new_best)

    def _global_stop(self) -> str | None:
        outcome = self.outcome
        if outcome.trained >= self.budget:
            return f"budget of {self.budget} evaluations spent"
        termination = self.config.termination
        target = termination.target_fitness
        if target is not None and outcome.best >= (target if self.maximize else -target):
            score = outcome.best if self.maximize else -outcome.best
            return f"target fitness {target} reached (best {score:.4f})"
        if termination.wall_clock_seconds is not None and self.clock() >= termination.wall_clock_seconds:
            return f"wall-clock budget of {termination.wall_clock_seconds:g} s spent"
        return None

    def _next_generation(
        self, number: int, phase: int, space: Any, population: list[Member], freeze: int
    ) -> Generator[Batch, list[Scored | None], list[Member]]:
        """Elites and random survivors carried unchanged, fresh immigrants, then bred children."""
        fitness = self.ranking_fitness(population)
        elite_idx = elite_indices(fitness, self.config.elites)
        carried = [replace(population[i], origin="elite") for i in elite_idx]
        for i in survivor_indices(fitness, len(elite_idx), self.config.survivors, self.rng):
            carried.append(replace(population[i], origin="survivor"))
        proposals = []
        for _ in range(self.config.survival.immigrants):
            index = len(carried) + len(proposals)
            proposals.append(self._proposal(number, index, space.sample(self.rng), "immigrant", (), (), freeze))
        diversity = self.outcome.generations[-1].diversity
        rate = mutation_rate(self.mutate, diversity)
        rejected: list[Rejection] = []
        wanted = self.config.population_size - len(carried) - len(proposals)
        for _ in range(MAX_BREEDING_ROUNDS):
            missing = wanted - sum(p.tags["origin"] == "child" for p in proposals)
            if missing <= 0:
                break
            bred = breed(
                population, missing, space, self.rng,
                select=self.select, crossover=self.crossover, mutate=self.mutate_genome,
                crossover_probability=self.crossover_probability, diversity=diversity, fitness=fitness,
            )  # fmt: skip
            for genome, (a, b) in bred:
                try:
                    repaired, notes = space.repair(genome)
                except ValueError as exc:  # InfeasibleGenome: recorded, never trained
                    rejected.append(Rejection(genome, str(exc)))
                    continue
                parents = tuple(population[i] for i in sorted((a, b), key=lambda i: -fitness[i]))
                index = len(carried) + len(proposals)
                proposals.append(self._proposal(number, index, repaired, "child", tuple(parents), tuple(notes), freeze))
        return (yield from self._score_generation(number, phase, space, proposals, carried, rate, tuple(rejected)))

    @staticmethod
    def _proposal(
        number: int,
        index: int,
        genome: Genome,
        origin: str,
        parents: tuple[Member, ...],
        notes: tuple[str, ...],
        freeze: int,
    ) -> Proposal:
        """A generation's proposal; ``parents`` fitter first (inheritance starts from the first)."""
        tags = {
            "method": "ga",
            "generation": number,
            "index": index,
            "origin": origin,
            "parent_hashes": ",".join(p.genome_hash for p in parents),
            "parent_run_ids": ",".join(str(p.run_id) for p in parents),
            **({"repaired": "; ".join(notes)} if notes else {}),
        }
        return Proposal(genome, f"ga-g{number:02d}-{index:02d}", tags, tuple(p.genome_hash for p in parents), freeze)

    def _score_generation(
        self,
        number: int,
        phase: int,
        space: Any,
        proposals: list[Proposal],
        carried: list[Member],
        rate: float | None,
        rejected: tuple[Rejection, ...],
    ) -> Generator[Batch, list[Scored | None], list[Member]]:
        """Hand the generation's proposals to the runner and build the generation from their scores:
        genomes seen before come back from its cache, new ones trained while budget remains; those
        past the budget (told ``None``) are dropped."""
        group = Group(
            number, f"generation-{number:02d}", self.operator_params(), {"method": "ga", "generation": number}
        )
        limit = min(self.budget, self._training_limit) - self.outcome.trained
        scored = yield Batch(tuple(proposals), group, max_trainings=limit)
        members = list(carried)
        trained = cache_hits = 0
        for proposal, score in zip(proposals, scored):
            if score is None:
                continue  # past the budget
            record = score.record
            if score.new:
                trained += 1
                member = Member(
                    proposal.genome, record.genome_hash, record.fitness, record.run_id,
                    proposal.tags["origin"], proposal.parents or None, record.fidelity_level,
                )  # fmt: skip
                self.cache[record.genome_hash] = member
            else:
                cache_hits += 1
                member = replace(self.cache[record.genome_hash], origin="cached")
            members.append(member)
        generation = Generation(
            number, tuple(members), trained, cache_hits,
            population_diversity([m.genome for m in members], space), phase, rate, rejected,
        )  # fmt: skip
        self.outcome.generations.append(generation)
        self._report = _generation_report(generation)
        return members


def _generation_report(generation: Generation) -> GroupReport:
    summary = generation.summary()
    metrics = {k: summary[k] for k in ("best", "mean", "median", "worst") if summary[k] is not None}
    metrics |= {k: summary[k] for k in ("failed", "trained", "cache_hits", "diversity", "phase")}
    metrics |= {"rejected": len(generation.rejected)}
    if generation.mutation_rate is not None:
        metrics["mutation_rate"] = generation.mutation_rate
    tags = {"elite_hashes": ",".join(m.genome_hash for m in generation.members if m.origin == "elite")}
    if generation.rejected:
        tags["rejected"] = " | ".join(r.reason for r in generation.rejected)[:5000]
    stage = {"generation_best": metrics.get("best", 0.0), "generation_diversity": generation.diversity}
    return GroupReport(metrics, tags, stage)


def build(config: StudyConfig, space: Space) -> GeneticSearch:
    return GeneticSearch(
        space,
        config.ga,
        budget=config.budget.evaluations,
        seed=config.seed,
        phases=config.space.layers.phases,
        maximize=task_of_dataset(config.data.dataset, config.data.task).maximize,
        rank_by_rung=config.fidelity.ranking == "rung",
    )


METHOD = Method("ga", "Genetic algorithm", build, ("ga",), weight_rule=lambda config: config.ga.weights)
