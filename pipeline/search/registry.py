"""The search methods, by the name the stages, results files and report use.

A new method is a strategy module in this package, one ``register`` call below (or from a plugin
or a test), and its ``dvc.yaml`` stage (``python stages/search.py <name>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipeline.search.ga import GeneticSearch
from pipeline.search.grid import GridSearch
from pipeline.search.pbt import PopulationBasedTraining
from pipeline.search.random import RandomSearch
from pipeline.search.tpe import TPESearch
from pipeline.task import task_of_dataset

if TYPE_CHECKING:
    from pipeline.config.sections import StudyConfig
    from pipeline.search.protocol import Strategy
    from pipeline.space import Space


@dataclass(frozen=True)
class Method:
    """A search method: its name (``<name>_search`` stage and results files), the label the report
    shows, how to build its strategy, and the ``params.yaml`` sections of its own settings (besides
    the shared ``seed``, ``model``, ``space``, ``budget`` and ``train``), which its results depend on."""

    name: str
    label: str
    build: Callable[[StudyConfig, Space], Strategy]
    settings_sections: tuple[str, ...] = ()
    # The rule by which its proposals start from their parents' trained weights (``ga.weights``).
    weight_rule: Callable[[StudyConfig], str] = lambda config: "none"
    # Its proposals are intervals of longer trainings that carry their own ``Resume`` (PBT): no rungs
    # are scheduled over them (``fidelity`` is not its), and it cannot search a benchmark table.
    trains_in_intervals: bool = False


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a search method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown search method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    """Registered methods in registration order (the report's row order)."""
    return list(METHODS)


def own_training(method: str, config: StudyConfig) -> StudyConfig:
    """The config a method trains with: one whose proposals are intervals of longer trainings (PBT)
    schedules them itself, so no rungs are scheduled over them and no early stopping cuts an interval
    short (its next interval starts where this one was to end). Its search and its champion's replay
    both train so."""
    if not get_method(method).trains_in_intervals:
        return config
    return config.model_copy(update={
        "fidelity": config.fidelity.model_copy(update={"rungs": None}),
        "train": config.train.model_copy(update={"early_stopping": None}),
    })  # fmt: skip


def table_method_names() -> list[str]:
    """The methods a benchmark table (lookups, no training) can compare: all but those that train in intervals."""
    return [name for name, method in METHODS.items() if not method.trains_in_intervals]


def _build_ga(config: StudyConfig, space: Space) -> Any:
    return GeneticSearch(
        space, config.ga, budget=config.budget.evaluations, seed=config.seed, phases=config.space.layers.phases,
        maximize=task_of_dataset(config.data.dataset, config.data.task).maximize, rank_by_rung=config.fidelity.ranking == "rung",
    )


register(Method("ga", "Genetic algorithm", _build_ga, ("ga",), weight_rule=lambda config: config.ga.weights))
register(Method("grid", "Grid search", lambda config, space: GridSearch(space, config.budget.evaluations)))
register(Method("random", "Random search", lambda config, space: RandomSearch(space, config.budget.evaluations, config.seed)))
register(Method(
    "tpe", "TPE (Bayesian optimisation)",
    lambda config, space: TPESearch(space, config.budget.evaluations, config.seed, config.tpe.startup_trials,
                                    config.tpe.batch_size),
    ("tpe",),
))  # fmt: skip
register(Method(
    "pbt", "Population Based Training",
    lambda config, space: PopulationBasedTraining(space, config.pbt, config.seed,
                                                  task_of_dataset(config.data.dataset, config.data.task).maximize,
                                                  budget=config.budget.evaluations),
    ("pbt",), trains_in_intervals=True,
))  # fmt: skip
