"""Population Based Training (Jaderberg et al. 2017): synchronous, with Ray Tune's defaults.

A population of ``pbt.population_size`` members, each a genome drawn from the space with its epochs
gene set to the space's largest (the horizon), trains in intervals of ``perturbation_interval``
epochs. An interval is one batch (one MLflow run per member under the interval's run): each member
trains on from the training state it starts with to the interval's end, and saves it. Then the
members are ranked; each of the bottom ``quantile_fraction`` copies a member of the top quantile,
drawn at random: its training state (weights, optimiser, schedule, batch position) and its genes
(exploit); then it explores: each gene PBT may change (``PBT_GENES`` in the space) is redrawn from
its range with ``resample_probability``, else a number is scaled by one of ``perturbation_factors``
(clipped to its range) and a choice moves to a neighbouring value. The others go on as they are.

Its result is a schedule, not a configuration: ``history()`` holds each member's lineage (the genes it
trained each interval with and whose state it started from), from which ``schedule_of`` reads the
best member's; the champion replays that schedule from scratch. Budgets count intervals trained (one
evaluation each) and their epochs. Every random choice comes from one seeded generator: same seed,
same schedule. torch-free: each interval is a ``Proposal`` with a ``Resume`` the evaluator trains.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.config.sections import PBT_GENES, PBTConfig, StudyConfig
from pipeline.evaluation import Proposal, Resume, Scored
from pipeline.search.protocol import Batch, Group, GroupReport, Method
from pipeline.space import ArchitectureSpace, Genome, SearchSpace
from pipeline.space.dimensions import ChoiceDimension, Dimension, FloatDimension, IntDimension
from pipeline.task import task_of_dataset


def gene_dimensions(space: SearchSpace | ArchitectureSpace) -> tuple[Dimension, ...]:
    """The fixed-length genes: all of a hyperparameter space's, an architecture space's optimiser genes."""
    return space.optimiser.dimensions if isinstance(space, ArchitectureSpace) else space.dimensions


def perturbable(space: SearchSpace | ArchitectureSpace) -> tuple[Dimension, ...]:
    """The genes PBT's explore step changes: those of ``PBT_GENES`` the space searches."""
    return tuple(d for d in gene_dimensions(space) if d.name in PBT_GENES)


def horizon_of(space: SearchSpace | ArchitectureSpace) -> int:
    """The epochs every member trains: the largest value of the space's epochs gene."""
    epochs = next((d for d in gene_dimensions(space) if d.name == "epochs"), None)
    if isinstance(epochs, IntDimension):
        return epochs.high
    if isinstance(epochs, ChoiceDimension):
        return int(max(epochs.values))
    raise ValueError("PBT needs an epochs gene (space.genes.epochs) to set its members' training length")


def interval_ends(horizon: int, interval: int) -> tuple[int, ...]:
    """The epoch at which each interval ends; the last one at the horizon (it may be shorter).

    >>> interval_ends(5, 2), interval_ends(3, 1)
    ((2, 4, 5), (1, 2, 3))
    """
    return tuple(sorted({*range(interval, horizon, interval), horizon}))


def explore(
    genome: Genome, dimensions: Sequence[Dimension], settings: PBTConfig, rng: np.random.Generator
) -> tuple[Genome, dict[str, list[Any]]]:
    """A copy of ``genome`` with each of ``dimensions`` redrawn (``resample_probability``) or
    perturbed: a number scaled by one of ``perturbation_factors`` and clipped to its range, a choice
    moved to a neighbouring value. Returns it and the genes that changed, ``{name: [old, new]}``."""
    explored = dict(genome)
    for dim in dimensions:
        if rng.random() < settings.resample_probability:
            value = dim.sample(rng)
        elif isinstance(dim, ChoiceDimension):
            index = dim.values.index(genome[dim.name]) + (1 if rng.random() < 0.5 else -1)
            value = dim.values[min(max(index, 0), len(dim.values) - 1)]
        else:
            factor = settings.perturbation_factors[int(rng.integers(len(settings.perturbation_factors)))]
            value = min(max(genome[dim.name] * factor, dim.low), dim.high)
            value = float(value) if isinstance(dim, FloatDimension) else int(round(value))
        explored[dim.name] = value
    changed = {name: [genome[name], explored[name]] for name in explored if explored[name] != genome[name]}
    return explored, changed


def quantiles(fitness: Sequence[float], fraction: float) -> tuple[list[int], list[int]]:
    """Members (indices) of the bottom and the top quantile by fitness, as Ray Tune forms them:
    ceil(n x fraction) each, at most half the population; ties keep the lower index higher."""
    count = min(math.ceil(len(fitness) * fraction), len(fitness) // 2)
    order = sorted(range(len(fitness)), key=lambda m: (-fitness[m], m))  # best first
    return (order[len(order) - count :] if count else []), order[:count]


class PopulationBasedTraining:
    """Synchronous PBT over a search space; ``state_dir`` (set by the search stage) keeps each
    member's training state at the end of each interval."""

    method = "pbt"

    def __init__(
        self, space: SearchSpace | ArchitectureSpace, settings: PBTConfig, seed: int, maximize: bool = True,
        state_dir: Path | None = None, budget: int | None = None,
    ) -> None:  # fmt: skip
        self.space = space
        self.budget = budget  # trainings (member intervals) it may ask for; None: until the horizon
        self.trained = 0
        self.settings = settings
        self.maximize = maximize
        self.state_dir = state_dir
        self.rng = np.random.default_rng(seed)
        self.ends = interval_ends(horizon_of(space), settings.perturbation_interval)
        self.dimensions = perturbable(space)
        horizon = self.ends[-1]
        self.genomes: list[Genome] = [{**space.sample(self.rng), "epochs": horizon}
                                      for _ in range(settings.population_size)]  # fmt: skip
        self.sources: list[int | None] = [None] * settings.population_size  # whose state each member starts from
        self.changes: list[dict[str, list[Any]]] = [{} for _ in self.genomes]
        self.interval = 0
        self.intervals: list[dict[str, Any]] = []  # the lineage: one entry per interval trained
        self.stop_reason = ""

    def _state(self, interval: int, member: int) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / f"interval-{interval}" / f"member-{member}.ckpt"

    def _copied(self, member: int) -> int | None:
        """The member whose state and genes ``member`` took at the last exploit step, if any."""
        source = self.sources[member]
        return None if source is None or source == member else source

    def ask(self) -> Batch | None:
        if not self.stop_reason and self.budget is not None and self.trained >= self.budget:
            self.stop_reason = (
                f"budget spent after interval {self.interval - 1} (at {self.ends[self.interval - 1]} epochs)"
            )
        if self.stop_reason:
            return None
        k, start = self.interval, (self.ends[self.interval - 1] if self.interval else 0)
        if self.state_dir is not None and k >= 2:
            # Only the last interval's states can be copied or resumed from now.
            shutil.rmtree(self.state_dir / f"interval-{k - 2}", ignore_errors=True)
        proposals = []
        for member, (genome, source) in enumerate(zip(self.genomes, self.sources)):
            resume = Resume(epochs=self.ends[k], resume_from=None if source is None else self._state(k - 1, source),
                            save_to=self._state(k, member), start_epoch=start)  # fmt: skip
            copied = self._copied(member)
            tags = {"method": self.method, "member": member, "interval": k, "epochs": self.ends[k],
                    "copied_from": "" if copied is None else copied}  # fmt: skip
            proposals.append(Proposal(genome, f"pbt-i{k:02d}-m{member:02d}", tags, resume=resume,
                                      identity=f"member-{member}/interval-{k}"))  # fmt: skip
        group = Group(k, f"interval {k}", params={"interval": k, "first_epoch": start + 1, "last_epoch": self.ends[k]},
                      tags={"method": self.method})  # fmt: skip
        return Batch(tuple(proposals), group)

    def tell(self, scored: Sequence[Scored | None]) -> GroupReport | None:
        k = self.interval
        if all(s is None for s in scored):  # the budget ended with the interval before: nothing trained
            self.stop_reason = f"budget spent after interval {k - 1} (at {self.ends[k - 1]} epochs)"
            return None
        fitness = [s.record.fitness if s is not None else -math.inf for s in scored]
        self.trained += sum(s is not None for s in scored)
        self.intervals.append({
            "interval": k, "epochs": self.ends[k],
            "members": [
                {"member": m, "genome": self.genomes[m], "copied_from": self._copied(m), "explored": self.changes[m],
                 "val_score": s.record.val_score if s is not None else None,
                 "status": s.record.status if s is not None else "not trained (budget spent)"}
                for m, s in enumerate(scored)
            ],
        })  # fmt: skip
        finite = [f for f in fitness if math.isfinite(f)]
        report = GroupReport(
            metrics={"best_val_score": max(finite) if self.maximize else -max(finite)} if finite else {}
        )
        if any(s is None for s in scored):
            self.stop_reason = f"budget spent in interval {k} (at {self.ends[k]} epochs)"
            return report
        if k + 1 == len(self.ends):
            self.stop_reason = f"every member trained to {self.ends[k]} epochs ({len(self.ends)} intervals)"
            return report
        if not finite:
            self.stop_reason = f"every member failed in interval {k}"
            return report
        self._exploit_and_explore(fitness)
        self.interval += 1
        return report

    def _exploit_and_explore(self, fitness: Sequence[float]) -> None:
        bottom, top = quantiles(fitness, self.settings.quantile_fraction)
        # A failed member saved no state to go on from: it copies a top member too, as the bottom does;
        # only a finished member is copied.
        top = [m for m in top if math.isfinite(fitness[m])]
        bottom = [m for m in range(len(fitness)) if m in bottom or not math.isfinite(fitness[m])]
        self.sources = list(range(len(self.genomes)))
        self.changes = [{} for _ in self.genomes]
        for member in bottom:
            source = top[int(self.rng.integers(len(top)))]
            self.genomes[member], self.changes[member] = explore(self.genomes[source], self.dimensions, self.settings,
                                                                 self.rng)  # fmt: skip
            self.sources[member] = source

    def stage_params(self) -> dict[str, Any]:
        return {"population_size": self.settings.population_size, "intervals": len(self.ends),
                "perturbation_interval": self.settings.perturbation_interval,
                "perturbed_genes": ",".join(d.name for d in self.dimensions)}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        best = best_member(self.intervals, self.maximize)
        out: dict[str, Any] = {"stop_reason": self.stop_reason, "intervals_trained": len(self.intervals)}
        if best is not None:
            out["best_schedule"] = schedule_of(self.intervals, *best)
        return out

    def history(self) -> list[dict[str, Any]]:
        return list(self.intervals)


def best_member(intervals: Sequence[dict[str, Any]], maximize: bool = True) -> tuple[int, int] | None:
    """(interval, member) of the best score recorded, the first of equal ones (interval, then member
    order: the runner's record order, so it is the search's best record)."""
    best, where = -math.inf, None
    for entry in intervals:
        for member in entry["members"]:
            score = member["val_score"]
            if score is None or member["status"] != "finished":
                continue
            fitness = score if maximize else -score
            if fitness > best:
                best, where = fitness, (entry["interval"], member["member"])
    return where


def schedule_of(intervals: Sequence[dict[str, Any]], interval: int, member: int) -> list[dict[str, Any]]:
    """The schedule that trained ``member`` up to the end of ``interval``, from scratch: for each
    interval of its lineage (following whose state it copied back to the first), the epoch it ended
    at and the genes it trained with. Replaying it (``replay_schedule``) retrains that member."""
    steps = []
    for k in range(interval, -1, -1):
        entry = intervals[k]["members"][member]
        steps.append({"epochs": intervals[k]["epochs"], "genome": entry["genome"], "member": member})
        if entry["copied_from"] is not None:
            member = entry["copied_from"]
    return steps[::-1]


def build(config: StudyConfig, space: SearchSpace | ArchitectureSpace) -> PopulationBasedTraining:
    maximize = task_of_dataset(config.data.dataset, config.data.task).maximize
    return PopulationBasedTraining(space, config.pbt, config.seed, maximize, budget=config.budget.evaluations)


METHOD = Method("pbt", "Population Based Training", build, ("pbt",), trains_in_intervals=True)
