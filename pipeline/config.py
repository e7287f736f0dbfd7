"""Typed, frozen view of ``params.yaml``.

Every key is declared here with its type and range, so a wrong ``params.yaml`` fails before any
training, with the dotted path of the culprit (``ga.population_size: ...``).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

class ConfigError(ValueError):
    """A ``params.yaml`` that cannot run; the message names the dotted key at fault."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    dataset: Literal["fashion_mnist", "digits"] = "fashion_mnist"
    root: str | None = None
    train_size: Annotated[int, Field(gt=0)] | None = None
    val_size: Annotated[int, Field(gt=0)] = 10_000
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2  # digits only: it has no official test set


class FloatGene(_Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> FloatGene:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled gene needs low > 0, got {self.low}")
        return self


class IntGene(_Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> IntGene:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled gene needs low > 0, got {self.low}")
        return self


class ChoiceGene(_Section):
    type: Literal["choice"]
    values: Annotated[list[Union[bool, int, float, str]], Field(min_length=1)]

    @model_validator(mode="after")
    def _check_unique(self) -> ChoiceGene:
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        return self


GeneConfig = Annotated[Union[FloatGene, IntGene, ChoiceGene], Field(discriminator="type")]


ACTIVATIONS = ("relu", "leaky_relu", "swish", "sigmoid")


class LengthRange(_Section):
    min: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _check_order(self) -> LengthRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ConvChoices(_Section):
    """The values each convolutional gene may take (the studies' blueprint by default)."""

    filters: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [8, 16, 32, 64]
    kernel_size: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [3, 5, 7]
    stride: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [1, 2]
    padding: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0, 1]
    pool_size: Annotated[list[Annotated[int, Field(ge=2)] | None], Field(min_length=1)] = [None, 2, 3]
    pool_type: Annotated[list[Literal["max", "avg"]], Field(min_length=1)] = ["max", "avg"]
    activation: Annotated[list[Literal[ACTIVATIONS]], Field(min_length=1)] = list(ACTIVATIONS)  # type: ignore[valid-type]
    batch_norm: Annotated[list[bool], Field(min_length=1)] = [False, True]
    skip: Annotated[list[bool], Field(min_length=1)] = [False, True]


class FcChoices(_Section):
    units: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [8, 16, 32, 64, 128, 256, 512]
    activation: Annotated[list[Literal[ACTIVATIONS]], Field(min_length=1)] = list(ACTIVATIONS)  # type: ignore[valid-type]
    dropout: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=1)] = [0.1, 0.2, 0.25]


class PhasesConfig(_Section):
    """Phased growth: after each phase the best genome's conv genes are kept, new ones appended."""

    count: Annotated[int, Field(ge=1)] = 1
    new_conv_layers: Annotated[int, Field(ge=1)] = 1  # at most this many conv genes appended per phase
    freeze_transferred: bool = True  # with ga.weights inherit/merge: train only the new layers


class ArchitectureConfig(_Section):
    conv_layers: LengthRange = LengthRange(min=1, max=4)
    fc_layers: LengthRange = LengthRange(min=1, max=2)
    conv: ConvChoices = ConvChoices()
    fc: FcChoices = FcChoices()
    phases: PhasesConfig = PhasesConfig()


class SpaceConfig(_Section):
    kind: Literal["hyperparameters", "architecture"] = "hyperparameters"
    genes: dict[str, GeneConfig]  # the optimiser genes (both kinds); the network itself only for architecture
    architecture: ArchitectureConfig | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> SpaceConfig:
        if self.kind == "hyperparameters" and self.architecture is not None:
            raise ValueError("architecture is only read with kind: architecture; remove it or set kind")
        return self

    @property
    def layers(self) -> ArchitectureConfig:
        """The architecture section, its defaults when not written."""
        return self.architecture or ArchitectureConfig()



class BudgetConfig(_Section):
    evaluations: Annotated[int, Field(gt=0)]


class ModelConfig(_Section):
    conv_channels: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=2, max_length=2)] = [32, 64]
    hidden_units: Annotated[int, Field(gt=0)] = 128


class EarlyStoppingConfig(_Section):
    patience: Annotated[int, Field(ge=1)] = 1  # epochs without val_acc improvement before stopping
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class TrainConfig(_Section):
    lr_step_size: Annotated[int, Field(gt=0)] = 1
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.7
    eval_batch_size: Annotated[int, Field(gt=0)] = 1000
    # Std of Gaussian noise added to training images (data augmentation); a gene `noise_level` overrides.
    noise_level: Annotated[float, Field(ge=0)] = 0.0
    early_stopping: EarlyStoppingConfig | None = None  # None: every individual trains all its epochs


class OperatorConfig(_Section):
    """``{name: ..., <settings>}``; the settings are checked against the named operator."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    name: str

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SurvivalConfig(_Section):
    """Who lives on besides the elites: a random share of the rest, and fresh random immigrants."""

    fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # of the non-elites, carried unchanged
    immigrants: Annotated[int, Field(ge=0)] = 0  # new random genomes per generation


class TerminationConfig(_Section):
    """Extra stopping rules; the evaluation budget (budget.evaluations) always applies."""

    generations: Annotated[int, Field(ge=1)] | None = None  # generations in all, the initial one included
    wall_clock_seconds: Annotated[float, Field(gt=0)] | None = None
    target_fitness: Annotated[float, Field(gt=0, le=1)] | None = None  # stop once reached
    stagnation: Annotated[int, Field(ge=1)] | None = None  # generations without a better best


class GAConfig(_Section):
    population_size: Annotated[int, Field(ge=2)]
    elites: Annotated[int, Field(ge=0)] = 1
    survival: SurvivalConfig = SurvivalConfig()
    selection: OperatorConfig = OperatorConfig(name="truncation", fraction=0.5)
    crossover: OperatorConfig = OperatorConfig(name="uniform", swap_prob=0.5)
    mutation: OperatorConfig = OperatorConfig(name="resample", rate=0.2)
    weights: Literal["none", "inherit", "merge"] = "none"
    termination: TerminationConfig = TerminationConfig()

    @property
    def survivors(self) -> int:
        """Non-elites carried into each next generation at random."""
        return round(self.survival.fraction * (self.population_size - self.elites))

    @property
    def children(self) -> int:
        return self.population_size - self.elites - self.survivors - self.survival.immigrants

    @model_validator(mode="after")
    def _check_sizes(self) -> GAConfig:
        if self.population_size < self.elites + 2:
            raise ValueError(
                f"population_size ({self.population_size}) must be at least elites ({self.elites}) + 2:"
                " two parents are needed beside the elites to breed a child"
            )
        if self.children < 1:
            raise ValueError(
                f"elites ({self.elites}) + random survivors ({self.survivors}, survival.fraction) + "
                f"survival.immigrants ({self.survival.immigrants}) leave no room for a child in a "
                f"population of {self.population_size}"
            )
        return self


class ChampionConfig(_Section):
    epochs: Annotated[int, Field(gt=0)]
    train_size: Annotated[int, Field(gt=0)] | None = None  # None: every training image not in validation
    registered_model: str = "evohpo-champion"


class MlflowConfig(_Section):
    experiment: Annotated[str, Field(min_length=1)]


class StudyConfig(_Section):
    seed: Annotated[int, Field(ge=0)]
    data: DataConfig
    model: ModelConfig = ModelConfig()
    space: SpaceConfig
    budget: BudgetConfig
    train: TrainConfig = TrainConfig()
    ga: GAConfig
    champion: ChampionConfig
    mlflow: MlflowConfig

    @model_validator(mode="after")
    def _check_cross_section(self) -> StudyConfig:
        if self.ga.population_size > self.budget.evaluations:
            raise ValueError(
                f"ga.population_size ({self.ga.population_size}) exceeds budget.evaluations "
                f"({self.budget.evaluations}): the first generation alone would overrun the budget"
            )
        phases = self.space.layers.phases.count
        if self.space.kind == "architecture" and phases * self.ga.population_size > self.budget.evaluations:
            raise ValueError(
                f"space.architecture.phases.count ({phases}) x ga.population_size ({self.ga.population_size}) "
                f"exceeds budget.evaluations ({self.budget.evaluations}): phases share the budget equally "
                "and each starts with a whole population"
            )
        return self


# The images of each dataset (channels, height, width): architecture genomes are checked against them.
DATASET_IMAGE_SHAPES = {"fashion_mnist": (1, 28, 28), "digits": (1, 8, 8)}


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a section at ``loc`` accepts, for 'did you mean' hints."""
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        annotation = getattr(field, "annotation", None)
        # An optional section (``ArchitectureConfig | None``) hints with the section's keys.
        members = typing.get_args(annotation) or (annotation,)
        sections = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(sections) != 1:
            return []
        model = sections[0]
    return list(model.model_fields)


def _format_error(error: dict[str, Any]) -> str:
    # Drop the discriminator tags pydantic inserts into the location of a union member.
    loc = [str(p) for p in error["loc"] if p not in ("float", "int", "choice")]
    key = ".".join(loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(loc[-1], _allowed_keys(StudyConfig, tuple(loc[:-1])))
        return f"{key}: unknown key{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "missing"):
        message += f" (got {error.get('input')!r})"
    return f"{key}: {message}"


def parse_config(raw: Any, source: str = "params.yaml") -> StudyConfig:
    """Validate a loaded ``params.yaml`` mapping; raises ``ConfigError`` naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    errors = gene_errors(config.space)
    if errors:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(errors))
    _check_operators(config, source)
    if config.space.kind == "architecture":
        _check_architecture(config, source)
    return config


def _check_architecture(config: StudyConfig, source: str) -> None:
    from pipeline.architecture import ArchitectureSpace, InfeasibleGenome

    try:
        ArchitectureSpace.from_config(config.space, DATASET_IMAGE_SHAPES[config.data.dataset])
    except InfeasibleGenome as exc:
        raise ConfigError(f"{source} is invalid:\n  space.architecture.conv_layers.min: {exc}") from None


# What the evaluator can train with: (allowed gene types, value check, what it must be).
_GENE_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "learning_rate": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v > 0, "a number > 0"),
    "momentum": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "batch_size": ((IntGene, ChoiceGene), lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "epochs": ((IntGene, ChoiceGene), lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "noise_level": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v >= 0, "a number >= 0"),
}
# Genes the evaluator can do without (a fixed value from `train` stands in).
_OPTIONAL_GENES = {"noise_level"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def gene_errors(space: SpaceConfig) -> list[str]:
    """Genes the evaluator cannot train with, each as ``space.genes.<name>[.<field>]: why``."""
    errors = []
    for name in space.genes:
        if name not in _GENE_RULES:
            errors.append(f"space.genes.{name}: unknown gene{_did_you_mean(name, _GENE_RULES)}; "
                          f"the evaluator knows {list(_GENE_RULES)}")  # fmt: skip
    for name, (types, valid, wanted) in _GENE_RULES.items():
        gene = space.genes.get(name)
        if gene is None:
            if name not in _OPTIONAL_GENES:
                required = [g for g in _GENE_RULES if g not in _OPTIONAL_GENES]
                errors.append(f"space.genes.{name}: missing; the evaluator needs every one of {required}")
            continue
        if not isinstance(gene, types):
            allowed = " or ".join(t.model_fields["type"].annotation.__args__[0] for t in types)
            errors.append(f"space.genes.{name}.type: must be {allowed}, got {gene.type!r}")
            continue
        ends = {"values": gene.values} if isinstance(gene, ChoiceGene) else {"low": [gene.low], "high": [gene.high]}
        for field, values in ends.items():
            bad = [v for v in values if not valid(v)]
            if bad:
                errors.append(f"space.genes.{name}.{field}: must be {wanted}, got {bad[0]!r}")
    return errors


def _check_operators(config: StudyConfig, source: str) -> None:
    # Imported here: the operator registries import numpy-only code, not this module.
    from pipeline.operators import bind_operator, split_settings

    for role in ("selection", "crossover", "mutation"):
        spec: OperatorConfig = getattr(config.ga, role)
        try:
            own, _ = split_settings(role, spec.settings)
            bind_operator(role, spec.name, own)
        except (KeyError, TypeError, ValueError) as exc:
            message, key = exc.args
            raise ConfigError(f"{source} is invalid:\n  ga.{role}.{key}: {message}") from None


def load_config(path: str | Path = "params.yaml") -> StudyConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, source=str(path))
