"""Reading and validating ``params.yaml``: the sections' own checks (``sections``), then what
needs the search space and the operators: trainable genes, operator settings against each
operator's declaration, and an architecture space that fits the dataset's images."""

from __future__ import annotations

import difflib
import math
import reprlib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.sections import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_SEED,
    OPTIMIZERS,
    SENSITIVITY_SETTINGS,
    ChoiceGene,
    DataConfig,
    FloatGene,
    IntGene,
    OperatorConfig,
    SpaceConfig,
    StudyConfig,
)
from pipeline.errors import ConfigError
from pipeline.operators import bind_operator, split_settings
from pipeline.space import ArchitectureSpace, InfeasibleGenome
from pipeline.task import REGRESSION_DATASETS, TABLE_DATASETS, is_table_name


# The images of each dataset (channels, height, width): architecture genomes are checked against them.
# Input shapes by dataset, to check architecture genomes before any data is read (diabetes: 10 features, one row).
DATASET_IMAGE_SHAPES = {"fashion_mnist": (1, 28, 28), "digits": (1, 8, 8), "diabetes": (1, 1, 10)}


def input_shape(data: DataConfig) -> tuple[int, int, int]:
    """The network's input (channels, height, width) as far as params tell it: a CSV table's width
    is known once prepared (1 stands in; its networks have fc layers only)."""
    if data.dataset == "image_folder":
        return (data.channels, *data.image_size)  # type: ignore[return-value]
    if data.dataset == "csv":
        return (1, 1, 1)
    return DATASET_IMAGE_SHAPES[data.dataset]


# No error message may be huge, whatever the file holds: each value echoed is cut to _MAX_SHOWN characters,
# each line to _MAX_LINE, and at most _MAX_LINES faults are listed.
_MAX_SHOWN, _MAX_LINE, _MAX_LINES = 200, 400, 30
MAX_PARAMS_BYTES = 1_000_000  # params.yaml is a few kB; the limit stops a wrong file before the YAML parser
_REPR = reprlib.Repr()  # bounded in time too: a huge list is never formatted whole only to be cut
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlist, _REPR.maxdict = 120, 120, 60, 10, 10


def _clip(text: str, limit: int = _MAX_SHOWN) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _shown(value: Any) -> str:
    """``repr(value)`` as echoed in an error: never more than ``_MAX_SHOWN`` characters."""
    return _clip(_REPR.repr(value))


def invalid(source: str, lines: list[str]) -> ConfigError:
    shown = [_clip(line, _MAX_LINE) for line in lines[:_MAX_LINES]]
    if len(lines) > _MAX_LINES:
        shown.append(f"... and {len(lines) - _MAX_LINES} more")
    return ConfigError(f"{source} is invalid:\n  " + "\n  ".join(shown))


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path)) or "<top level>"


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


def format_error(error: dict[str, Any], model: type[BaseModel] = StudyConfig) -> str:
    # Drop the discriminator tags pydantic inserts into the location of a union member.
    loc = [str(p) for p in error["loc"] if p not in ("float", "int", "choice")]
    key = ".".join(loc) or "<top level>"
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(loc[-1], _allowed_keys(model, tuple(loc[:-1])))
        return f"{key}: unknown key{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "missing"):
        message += f" (got {_shown(error.get('input'))})"
    return f"{key}: {message}"


def non_finite_errors(raw: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Every ``inf``/``nan`` (``.inf``, ``.nan`` in YAML) anywhere in ``raw``, named by its dotted key.

    Checked before the sections: an infinite bound passes every ``>``/``<`` check, then each
    individual trains the whole budget long and fails."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return [f"{_dotted(path)}: must be a finite number, got {raw!r}"]
    if isinstance(raw, dict):
        return [e for key, value in raw.items() for e in non_finite_errors(value, (*path, key))]
    if isinstance(raw, list):
        return [e for index, value in enumerate(raw) for e in non_finite_errors(value, (*path, index))]
    return []


def parse_config(raw: Any, source: str = "params.yaml") -> StudyConfig:
    """Validate a loaded ``params.yaml`` mapping; raises ``ConfigError`` naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    errors = non_finite_errors(raw) + table_dataset_errors(raw)
    if errors:
        raise invalid(source, errors)
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise invalid(source, [format_error(e) for e in exc.errors()]) from None
    errors = gene_errors(config.space, config.model.custom) + own_data_errors(config)
    if errors:
        raise invalid(source, errors)
    _check_operators(config, source)
    errors = seed_errors(config) + task_errors(config) + execution_errors(config)
    if errors:
        raise invalid(source, errors)
    if config.space.kind == "architecture":
        _check_architecture(config, source)
    errors = sensitivity_errors(config)
    if errors:
        raise invalid(source, errors)
    return config


def table_dataset_errors(raw: dict) -> list[str]:
    """A benchmark table named in a trained study: it is looked up by a benchmark study instead."""
    data = raw.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    names = dataset if isinstance(dataset, list) else [dataset]
    if not any(is_table_name(name) for name in names):
        return []
    return [f"data.dataset: {_shown(dataset)} names benchmark tables, which are looked up, not trained: run them as a "
            "benchmark study, whose params.yaml has a suite section (see studies/benchmarks/params.yaml; "
            "make benchmarks)"]  # fmt: skip


def execution_errors(config: StudyConfig) -> list[str]:
    """An evaluator asked for that cannot run the study as set, by key."""
    execution = config.execution
    if config.fidelity.enabled and config.fidelity.mode == "asynchronous" and execution.evaluator == "population":
        return ["fidelity.mode: asynchronous hands one candidate at a time to each free worker, and a population "
                "trains a batch at once: use fidelity.mode: synchronous with execution.evaluator: population, or "
                "execution.evaluator: auto or sequential"]  # fmt: skip
    if execution.evaluator != "population":
        return []
    if execution.backend != "local" or execution.workers > 1:
        return ["execution.evaluator: population trains in this process; it needs execution.backend: local and "
                f"execution.workers: 1 (got {execution.backend}, {execution.workers})"]  # fmt: skip
    if config.ga.weights != "none":
        return [f"execution.evaluator: population trains from scratch; ga.weights: {config.ga.weights} needs "
                "execution.evaluator: sequential or auto"]  # fmt: skip
    return []


def seed_errors(config: StudyConfig) -> list[str]:
    """Seeds that a repeat or a sensitivity run would derive out of range (numpy and scikit-learn take
    seeds below 2**32), refused before repeat 0 trains rather than when repeat 1 starts."""
    errors = []
    last_seed = max(config.repeat_seeds())
    if config.study.seeds is None and last_seed > MAX_SEED:
        errors.append(f"seed: the repeats' seeds run up to {last_seed} (seed + study.repeats - 1); every seed "
                      f"must be at most {MAX_SEED}")  # fmt: skip
    last_variant_seed = config.seed + config.sensitivity.repeats - 1
    if config.sensitivity.enabled and last_variant_seed > MAX_SEED:
        errors.append(f"seed: the sensitivity runs' seeds run up to {last_variant_seed} (seed + sensitivity.repeats "
                      f"- 1); every seed must be at most {MAX_SEED}")  # fmt: skip
    return errors


def task_errors(config: StudyConfig) -> list[str]:
    """Settings that do not fit the dataset's task (classification or regression), by key."""
    target = config.ga.termination.target_fitness
    data = config.data
    classification = data.dataset not in REGRESSION_DATASETS and not (
        data.dataset == "csv" and data.task != "classification"
    )
    if classification and target is not None and target > 1:
        return [f"ga.termination.target_fitness: {target} is an accuracy here (data.dataset="
                f"{data.dataset}): at most 1"]  # fmt: skip
    conv = config.space.layers.conv_layers.max
    if data.dataset in TABLE_DATASETS and config.space.kind == "architecture" and conv > 0:
        # A table's features are one row: a convolution has nothing to slide over.
        return [f"space.architecture.conv_layers.max: must be 0 for data.dataset={data.dataset} (a table; "
                f"the network is a multilayer perceptron of fc layers), got {conv}"]  # fmt: skip
    return []


def own_data_errors(config: StudyConfig) -> list[str]:
    """A user's data or builder that params alone show to be wrong, by key (the files themselves are
    read, and refused by key, at prepare and when the searches start)."""
    errors = []
    data, model = config.data, config.model
    if data.dataset in ("csv", "image_folder") and data.root is not None:
        errors.append(f"data.root: the FashionMNIST folder; with data.dataset: {data.dataset} your data is data.path")
    if data.dataset != "csv" and data.task != "auto":
        errors.append(f"data.task: only read with data.dataset: csv (data.dataset is {data.dataset})")
    if model.custom and model.builder.split(":", 1)[0].endswith(".py"):  # type: ignore[union-attr]
        builder_file = Path(model.builder.split(":", 1)[0])  # type: ignore[union-attr]
        source = Path(model.source)
        if source != builder_file and source not in builder_file.parents:
            errors.append(f"model.source: must be the builder's file {builder_file} or a folder holding it, so that "
                          f"editing it reruns the searches (got {model.source})")  # fmt: skip
    return errors


def _check_architecture(config: StudyConfig, source: str) -> None:
    try:
        ArchitectureSpace.from_config(config.space, input_shape(config.data))
    except InfeasibleGenome as exc:
        raise invalid(source, [f"space.architecture.conv_layers.min: {exc}"]) from None


# What the evaluator can train with: (allowed gene types, value check, what it must be).
# Batch size and epochs are capped (sections.MAX_BATCH, MAX_EPOCHS) so a typo cannot train for days.
_GENE_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "learning_rate": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v > 0, "a number > 0"),
    "momentum": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "batch_size": (
        (IntGene, ChoiceGene),
        lambda v: _is_int(v) and 1 <= v <= MAX_BATCH,
        f"an integer >= 1 and <= {MAX_BATCH}",
    ),  # fmt: skip
    "epochs": (
        (IntGene, ChoiceGene),
        lambda v: _is_int(v) and 1 <= v <= MAX_EPOCHS,
        f"an integer >= 1 and <= {MAX_EPOCHS}",
    ),  # fmt: skip
    "noise_level": ((FloatGene, ChoiceGene), lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer": ((ChoiceGene,), lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
}
# Genes the evaluator can do without (a fixed value from `train` stands in).
_OPTIONAL_GENES = {"noise_level", "optimizer", "momentum", "weight_decay"}
TRAINING_GENES = frozenset(_GENE_RULES)  # every other gene of a space is the model builder's


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def gene_errors(space: SpaceConfig, custom_builder: bool = False) -> list[str]:
    """Genes the evaluator cannot train with, each as ``space.genes.<name>[.<field>]: why``. With a
    user's model builder (``custom_builder``), every other gene is the builder's, any name."""
    errors = []
    for name in space.genes:
        if name not in _GENE_RULES and not custom_builder:
            errors.append(f"space.genes.{name}: unknown gene{_did_you_mean(name, _GENE_RULES)}; "
                          f"the evaluator knows {list(_GENE_RULES)} (any other gene needs your own "
                          "model.builder, which receives every gene)")  # fmt: skip
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
                errors.append(f"space.genes.{name}.{field}: must be {wanted}, got {_shown(bad[0])}")
    return errors


def _check_operators(config: StudyConfig, source: str) -> None:
    for role in ("selection", "crossover", "mutation"):
        spec: OperatorConfig = getattr(config.ga, role)
        try:
            own, _ = split_settings(role, spec.settings)
            bind_operator(role, spec.name, own)
        except (KeyError, TypeError, ValueError) as exc:
            message, key = exc.args
            raise invalid(source, [f"ga.{role}.{key}: {message}"]) from None


# Nodes that YAML aliases may stand for in all, once expanded. A params.yaml reusing a few gene specs
# needs tens; an alias bomb ("billion laughs") needs billions, and would exhaust memory and time.
_MAX_ALIAS_NODES = 1000


class _RefusedYaml(yaml.YAMLError):
    """YAML that PyYAML would load but a study must not: the message is one line, without the file's name."""


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def alias_expansion(root: yaml.Node) -> int:
    """How many more nodes the document has once its aliases are expanded (0 without aliases).

    Each distinct node is sized once, so a bomb is measured in time linear in the file, not in its
    expansion. Raises ``_RefusedYaml`` for an alias inside its own anchor (a structure without end)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise _RefusedYaml(f"the alias on line {line} refers to a node that contains it (a recursive alias)")
        open_nodes.add(id(node))
        sizes[id(node)] = 1 + sum(size(child) for child in _node_children(node))
        open_nodes.discard(id(node))
        return sizes[id(node)]

    return size(root) - len(sizes)


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what it would let through silently: duplicate keys (PyYAML keeps
    the last one; DVC rejects the file) and aliases expanding past ``_MAX_ALIAS_NODES`` nodes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._paths: dict[int, tuple[Any, ...]] = {}  # id(node) -> its keys from the top, to name duplicates

    def construct_document(self, node: yaml.Node) -> Any:
        extra = alias_expansion(node)
        if extra > _MAX_ALIAS_NODES:
            raise _RefusedYaml(
                f"YAML aliases expand to {extra} more values, above the {_MAX_ALIAS_NODES} allowed; "
                "write the values out instead"
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            path = self._paths.get(id(node), ())
            lines: dict[Any, int] = {}
            # Before merge keys (<<) are flattened in: a key written here may override a merged one.
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, typing.Hashable):
                    continue  # PyYAML refuses it, naming the line
                if key in lines:
                    line = key_node.start_mark.line + 1
                    raise _RefusedYaml(f"duplicate key {_clip(_dotted((*path, key)))} (line {line})")
                lines[key] = key_node.start_mark.line + 1
                self._paths.setdefault(id(value_node), (*path, key))  # an aliased node: named where anchored
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node: yaml.Node, deep: bool = False) -> list[Any]:
        if isinstance(node, yaml.SequenceNode):
            path = self._paths.get(id(node), ())
            for index, child in enumerate(node.value):
                self._paths.setdefault(id(child), (*path, index))
        return super().construct_sequence(node, deep=deep)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at position {exc.start})") from None


def load_config(path: str | Path = "params.yaml") -> StudyConfig:
    return parse_config(read_params(path), source=str(path))


def read_params(path: str | Path) -> Any:
    """A params file read and parsed as YAML (not yet validated); ``ConfigError`` naming the file
    when it cannot be read or is not YAML."""
    path = Path(path)
    try:
        # Sized before parsing: YAML takes minutes over a file of many megabytes.
        size = path.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ConfigError(
                f"{path}: {size:,} bytes; a params file is at most {MAX_PARAMS_BYTES:,} bytes (is it the right file?)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    text = _decode(data, path)
    try:
        raw = yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except _RefusedYaml as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_clip(str(exc), 1000)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    return raw


# --- the ga_sensitivity stage's variants: the study with one GA setting changed -----------------


def variant_params(config: StudyConfig, setting: str, value: float) -> dict[str, Any]:
    """The study's params with one GA setting changed, ``study.repeats`` from ``sensitivity`` and the
    runs logged to the ``<experiment>-sensitivity`` experiment (the method comparison stays apart)."""
    raw = config.model_dump()
    ga, train, budget = raw["ga"], raw["train"], raw["budget"]
    if setting == "population_size":
        ga["population_size"] = value
    elif setting == "generations":
        ga["termination"]["generations"] = value
        budget["evaluations"] = ga["population_size"] * value  # enough for every generation
    elif setting == "mutation_rate":
        ga["mutation"]["rate"] = value
    elif setting == "noise_level":
        train["noise_level"] = value
    else:
        raise KeyError(f"sensitivity: unknown setting {setting!r}; one of {SENSITIVITY_SETTINGS}")
    raw["study"] = {"repeats": config.sensitivity.repeats, "seeds": None}
    raw["mlflow"]["experiment"] = f"{config.mlflow.experiment}-sensitivity"
    raw["sensitivity"] = {"enabled": False}  # a variant does not vary itself
    return raw


def sensitivity_errors(config: StudyConfig) -> list[str]:
    """Values that would make an invalid study, by key (checked when params.yaml is loaded)."""
    if not config.sensitivity.enabled:
        return []
    errors = []
    for setting in SENSITIVITY_SETTINGS:
        for value in getattr(config.sensitivity, setting):
            if setting == "noise_level" and "noise_level" in config.space.genes:
                errors.append("sensitivity.noise_level: the space has a noise_level gene, which overrides "
                              "train.noise_level; remove the gene or the values")  # fmt: skip
                break
            try:
                parse_config(variant_params(config, setting, value), source="params")
            except ConfigError as exc:  # its lines after the first name the faulty key
                reason = " ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
                errors.append(f"sensitivity.{setting}: {value} makes an invalid study: {reason}")
    return errors
