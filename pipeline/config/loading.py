"""Reading and validating ``params.yaml``: the sections' own checks (``sections``), then what
needs the search space and the operators: trainable genes, operator settings against each
operator's declaration, and an architecture space that fits the dataset's images."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.sections import ChoiceGene, FloatGene, IntGene, OperatorConfig, SpaceConfig, StudyConfig
from pipeline.errors import ConfigError
from pipeline.operators import bind_operator, split_settings
from pipeline.space import ArchitectureSpace, InfeasibleGenome


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
