"""params.yaml validation: the committed file loads, and every kind of mistake is named by its dotted key."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pipeline.config import loading
from pipeline.config import (
    ChoiceGene,
    ConfigError,
    FloatGene,
    IntGene,
    load_config,
    parse_config,
)
from pipeline.config.sections import MAX_BATCH, MAX_EPOCHS, MAX_EVALUATIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_PATH = REPO_ROOT / "params.yaml"
RAW_PARAMS: dict[str, Any] = yaml.safe_load(PARAMS_PATH.read_text())


def fresh_params() -> dict[str, Any]:
    """The committed params with the GA's sizes the variants below were written for."""
    params = copy.deepcopy(RAW_PARAMS)
    params["ga"]["population_size"], params["budget"]["evaluations"] = 6, 16
    return params


def error_lines(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines()]


def assert_names_key(message: str, key: str) -> None:
    """The message has a line that starts with ``<key>:``, i.e. the dotted key is the culprit named."""
    pattern = re.compile(rf"^{re.escape(key)}:")
    assert any(pattern.match(line) for line in error_lines(message)), f"no line of the error names {key!r}:\n{message}"


# ----------------------------------------------------------------------------------------------------------------------
# The committed params.yaml


TRAINED_STUDY_PARAMS = [PARAMS_PATH] + sorted(
    path for path in (REPO_ROOT / "studies").glob("*/params.yaml") if "suite" not in path.read_text()
)


@pytest.mark.parametrize("path", TRAINED_STUDY_PARAMS, ids=lambda path: path.parent.name)
def test_every_committed_study_loads_with_one_seed_per_repeat(path):
    """The project's and the committed studies' params load as they are; each repeat gets its own
    seed and the study's settings (what a repeat's search reads)."""
    config = load_config(path)
    seeds = config.repeat_seeds()
    assert len(seeds) == config.study.repeats == len(set(seeds))
    repeat = config.for_repeat(seeds[-1])
    assert repeat.seed == seeds[-1] and repeat.ga == config.ga and repeat.space == config.space


def test_committed_params_yaml_space_gene_types():
    genes = load_config(PARAMS_PATH).space.genes
    assert list(genes) == ["learning_rate", "momentum", "weight_decay", "batch_size", "epochs"]
    lr = genes["learning_rate"]
    assert isinstance(lr, FloatGene) and lr.log is True
    assert (lr.low, lr.high) == (1.0e-4, 1.0)
    assert isinstance(genes["momentum"], FloatGene) and genes["momentum"].log is False
    assert (genes["momentum"].low, genes["momentum"].high) == (0.0, 0.9)
    assert isinstance(genes["weight_decay"], FloatGene)
    assert isinstance(genes["batch_size"], ChoiceGene)
    assert genes["batch_size"].values == [32, 64, 128, 256]
    assert isinstance(genes["epochs"], IntGene)
    assert (genes["epochs"].low, genes["epochs"].high) == (1, 3)


def test_parse_config_of_unmodified_dict_equals_load_config():
    assert parse_config(copy.deepcopy(RAW_PARAMS)) == load_config(PARAMS_PATH)


def test_config_is_frozen():
    config = parse_config(fresh_params())
    with pytest.raises(Exception):
        config.ga.population_size = 100  # type: ignore[misc]
    assert config.ga.population_size == 6


# ----------------------------------------------------------------------------------------------------------------------
# One mistake at a time


def _set(path: str, value: Any) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def change(params: dict) -> None:
        node = params
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _chain(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        for each in changes:
            each(params)

    return change


def _delete(path: str) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def change(params: dict) -> None:
        node = params
        for part in parents:
            node = node[part]
        del node[last]

    return change


def _architecture(section: dict) -> Callable[[dict], None]:
    """An architecture space with ``section`` as its ``space.architecture``."""
    return _set("space", {**RAW_PARAMS["space"], "kind": "architecture", "architecture": section})


def _rename_gene(old: str, new: str) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        genes = params["space"]["genes"]
        genes[new] = genes.pop(old)

    return change


# (id, change, dotted key the message must name, further fragments the message must contain)
BAD_VARIANTS = [
    # unknown keys
    ("unknown-top-level-key", _set("sed", 1), "sed", ["unknown key", "did you mean 'seed'"]),
    ("unknown-top-level-section", _set("optimizer", {"name": "sgd"}), "optimizer", ["unknown key"]),
    (
        "unknown-nested-key-near-miss",
        _set("ga.populaton_size", 6),
        "ga.populaton_size",
        ["unknown key", "did you mean 'population_size'"],
    ),
    ("unknown-data-key-near-miss", _set("data.val_sise", 10), "data.val_sise", ["did you mean 'val_size'"]),
    (
        "unknown-gene-setting",
        _set("space.genes.learning_rate.lg", True),
        "space.genes.learning_rate.lg",
        ["unknown key"],
    ),
    # wrong types
    ("string-for-int", _set("ga.population_size", "6"), "ga.population_size", ["valid integer", "'6'"]),
    ("list-for-float", _set("data.test_size", [0.2]), "data.test_size", ["[0.2]"]),
    ("bool-for-int", _set("budget.evaluations", True), "budget.evaluations", ["valid integer", "True"]),
    ("float-for-int", _set("champion.epochs", 2.5), "champion.epochs", ["2.5"]),
    ("bool-for-float-gene-bound", _set("space.genes.momentum.low", True), "space.genes.momentum.low", ["True"]),
    (
        "string-for-float-gene-bound",
        _set("space.genes.learning_rate.low", "1e-4"),
        "space.genes.learning_rate.low",
        ["'1e-4'"],
    ),
    ("section-not-a-mapping", _set("ga", 5), "ga", ["5"]),
    ("operator-name-not-string", _set("ga.selection.name", 3), "ga.selection.name", ["valid string"]),
    # out of range
    ("budget-zero", _set("budget.evaluations", 0), "budget.evaluations", ["greater than 0"]),
    ("budget-negative", _set("budget.evaluations", -5), "budget.evaluations", ["-5"]),
    ("seed-negative", _set("seed", -1), "seed", ["-1"]),
    ("population-size-one", _set("ga.population_size", 1), "ga.population_size", ["2"]),
    ("elites-negative", _set("ga.elites", -1), "ga.elites", ["-1"]),
    ("val-size-zero", _set("data.val_size", 0), "data.val_size", ["greater than 0"]),
    ("test-size-one", _set("data.test_size", 1.0), "data.test_size", ["less than 1"]),
    ("champion-epochs-zero", _set("champion.epochs", 0), "champion.epochs", ["greater than 0"]),
    ("repeats-zero", _set("study.repeats", 0), "study.repeats", ["greater than or equal to 1"]),
    ("seeds-not-one-per-repeat", _set("study.seeds", [1, 2]), "study", ["seeds lists 2 seed(s) but repeats is 3"]),
    ("seeds-repeated", _set("study.seeds", [1, 2, 1]), "study", ["repeat a seed"]),
    ("seed-in-list-negative", _set("study.seeds", [1, -2, 3]), "study.seeds.1", ["-2"]),
    ("methods-empty", _set("study.methods", []), "study.methods", ["empty: name at least one search method"]),
    ("methods-twice", _set("study.methods", ["ga", "tpe", "ga"]), "study.methods", ["lists a method twice"]),
    ("tpe-startup-zero", _set("tpe.startup_trials", 0), "tpe.startup_trials", ["greater than or equal to 1"]),
    ("tpe-key-near-miss", _set("tpe.startup_trails", 3), "tpe.startup_trails", ["did you mean 'startup_trials'"]),
    ("lr-gamma-zero", _set("train.lr_gamma", 0.0), "train.lr_gamma", ["greater than 0"]),
    ("conv-channels-one-layer", _set("model.conv_channels", [32]), "model.conv_channels", ["at least 2"]),
    ("mlflow-experiment-empty", _set("mlflow.experiment", ""), "mlflow.experiment", ["at least 1"]),
    ("dataset-not-allowed", _set("data.dataset", "mnist"), "data.dataset", ["'fashion_mnist'", "'digits'", "mnist"]),
    # genes
    ("empty-choice-list", _set("space.genes.batch_size.values", []), "space.genes.batch_size.values", ["at least 1"]),
    (
        "duplicate-choice-values",
        _set("space.genes.batch_size.values", [32, 64, 32]),
        "space.genes.batch_size",
        ["distinct"],
    ),
    (
        "float-low-above-high",
        _set("space.genes.momentum", {"type": "float", "low": 0.9, "high": 0.1}),
        "space.genes.momentum",
        ["low (0.9) must be below high (0.1)"],
    ),
    (
        "float-low-equals-high",
        _set("space.genes.weight_decay", {"type": "float", "low": 0.1, "high": 0.1}),
        "space.genes.weight_decay",
        ["must be below high"],
    ),
    (
        "int-low-above-high",
        _set("space.genes.epochs", {"type": "int", "low": 3, "high": 1}),
        "space.genes.epochs",
        ["low (3) must not exceed high (1)"],
    ),
    (
        "float-log-low-zero",
        _set("space.genes.learning_rate.low", 0.0),
        "space.genes.learning_rate",
        ["log-scaled", "low > 0"],
    ),
    (
        "float-log-low-negative",
        _set("space.genes.momentum", {"type": "float", "low": -1.0, "high": 1.0, "log": True}),
        "space.genes.momentum",
        ["low > 0"],
    ),
    (
        "int-log-low-zero",
        _set("space.genes.epochs", {"type": "int", "low": 0, "high": 3, "log": True}),
        "space.genes.epochs",
        ["low > 0"],
    ),
    ("int-gene-float-bound", _set("space.genes.epochs.high", 3.5), "space.genes.epochs.high", ["3.5"]),
    ("unknown-gene-type", _set("space.genes.learning_rate.type", "floatt"), "space.genes.learning_rate", ["'floatt'"]),
    ("gene-type-missing", _delete("space.genes.epochs.type"), "space.genes.epochs", ["type"]),
    (
        "unknown-gene-name",
        _set("space.genes.dropout", {"type": "float", "low": 0.0, "high": 0.5}),
        "space.genes.dropout",
        ["unknown gene"],
    ),
    (
        "misspelt-gene-name",
        _rename_gene("learning_rate", "learning_rat"),
        "space.genes.learning_rat",
        ["unknown gene", "did you mean 'learning_rate'"],
    ),
    ("missing-gene", _delete("space.genes.epochs"), "space.genes.epochs", ["missing"]),
    ("epochs-zero", _set("space.genes.epochs.low", 0), "space.genes.epochs.low", ["integer >= 1", "got 0"]),
    (
        "batch-size-zero-choice",
        _set("space.genes.batch_size.values", [0, 32]),
        "space.genes.batch_size.values",
        ["integer >= 1", "got 0"],
    ),
    (
        "batch-size-float-gene",
        _set("space.genes.batch_size", {"type": "float", "low": 16.0, "high": 64.0}),
        "space.genes.batch_size.type",
        ["int or choice", "'float'"],
    ),
    (
        "negative-weight-decay",
        _set("space.genes.weight_decay.low", -0.1),
        "space.genes.weight_decay.low",
        [">= 0", "-0.1"],
    ),
    ("momentum-one", _set("space.genes.momentum.high", 1.0), "space.genes.momentum.high", ["[0, 1)"]),
    # cross-field
    ("elites-equal-population", _set("ga.elites", 6), "ga", ["population_size (6) must be at least elites (6) + 2"]),
    ("elites-leave-one-parent", _set("ga.elites", 5), "ga", ["population_size (6)", "elites (5) + 2"]),
    ("elites-above-population", _set("ga.elites", 9), "ga", ["elites (9)", "population_size (6)"]),
    (
        "population-exceeds-budget",
        _set("ga.population_size", 20),
        "<top level>",
        ["ga.population_size (20) exceeds budget.evaluations (16)"],
    ),
    # operators
    (
        "unknown-selection-operator",
        _set("ga.selection", {"name": "best"}),
        "ga.selection.name",
        ["unknown selection operator 'best'", "'roulette'", "'tournament'", "'truncation'", "'rank'"],
    ),
    (
        "unknown-crossover-operator",
        _set("ga.crossover", {"name": "three_point"}),
        "ga.crossover.name",
        ["unknown crossover operator 'three_point'", "'two_point'"],
    ),
    (
        "unknown-mutation-operator",
        _set("ga.mutation.name", "flip"),
        "ga.mutation.name",
        ["unknown mutation operator 'flip'", "'gaussian'"],
    ),
    (
        "unknown-operator-setting",
        _set("ga.selection", {"name": "truncation", "fractio": 0.5}),
        "ga.selection.fractio",
        ["unknown setting 'fractio'", "fraction"],
    ),
    (
        "setting-for-settingless-operator",
        _set("ga.selection", {"name": "roulette", "fraction": 0.5}),
        "ga.selection.fraction",
        ["roulette", "unknown setting 'fraction'"],
    ),
    (
        "setting-of-other-operator",
        _set("ga.crossover", {"name": "uniform", "alpha": 0.5}),
        "ga.crossover.alpha",
        ["unknown setting 'alpha'", "swap_prob"],
    ),
    (
        "mutation-rate-above-one",
        _set("ga.mutation", {"name": "resample", "rate": 1.5}),
        "ga.mutation.rate",
        ["resample.rate", "[0, 1]", "1.5"],
    ),
    (
        "tournament-size-one",
        _set("ga.selection", {"name": "tournament", "size": 1}),
        "ga.selection.size",
        ["tournament.size", ">= 2"],
    ),
    (
        "tournament-size-fractional",
        _set("ga.selection", {"name": "tournament", "size": 2.5}),
        "ga.selection.size",
        ["tournament.size", "2.5"],
    ),
    (
        "truncation-fraction-zero",
        _set("ga.selection", {"name": "truncation", "fraction": 0}),
        "ga.selection.fraction",
        ["truncation.fraction", "(0, 1]"],
    ),
    (
        "gaussian-sigma-zero",
        _set("ga.mutation", {"name": "gaussian", "sigma": 0.0}),
        "ga.mutation.sigma",
        ["gaussian.sigma", "> 0"],
    ),
    (
        "blend-alpha-negative",
        _set("ga.crossover", {"name": "blend", "alpha": -0.1}),
        "ga.crossover.alpha",
        ["blend.alpha", ">= 0"],
    ),
    (
        "setting-not-a-number",
        _set("ga.crossover", {"name": "uniform", "swap_prob": "half"}),
        "ga.crossover.swap_prob",
        ["uniform.swap_prob", "expected a number", "'half'"],
    ),
    (
        "setting-bool",
        _set("ga.mutation", {"name": "resample", "rate": True}),
        "ga.mutation.rate",
        ["resample.rate", "expected a number"],
    ),
    ("operator-name-missing", _set("ga.crossover", {"swap_prob": 0.5}), "ga.crossover.name", ["Field required"]),
    # loop settings beside an operator, adaptive mutation
    (
        "crossover-probability-above-one",
        _set("ga.crossover.probability", 1.5),
        "ga.crossover.probability",
        ["probability must be a number in [0, 1]", "1.5"],
    ),
    (
        "layer-crossover-unknown",
        _set("ga.crossover.layers", "splice"),
        "ga.crossover.layers",
        ["'mix' or 'cut_splice'", "'splice'"],
    ),
    (
        "adaptive-max-rate-below-rate",
        _set("ga.mutation", {"name": "adaptive", "rate": 0.5, "max_rate": 0.3}),
        "ga.mutation.max_rate",
        ["adaptive.max_rate (0.3) must be at least rate (0.5)"],
    ),
    (
        "adaptive-target-diversity-zero",
        _set("ga.mutation", {"name": "adaptive", "target_diversity": 0}),
        "ga.mutation.target_diversity",
        ["(0, 1]"],
    ),
    # survival, termination, weights, training extras
    ("survival-fraction-above-one", _set("ga.survival.fraction", 1.5), "ga.survival.fraction", ["1.5"]),
    ("immigrants-negative", _set("ga.survival.immigrants", -1), "ga.survival.immigrants", ["-1"]),
    (
        "no-room-for-children",
        _set("ga.survival", {"fraction": 1.0, "immigrants": 0}),
        "ga",
        ["random survivors (5, survival.fraction)", "leave no room for a child"],
    ),
    ("immigrants-fill-population", _set("ga.survival.immigrants", 5), "ga", ["survival.immigrants (5)"]),
    (
        "unknown-termination-key",
        _set("ga.termination.generation", 3),
        "ga.termination.generation",
        ["did you mean 'generations'"],
    ),
    ("termination-generations-zero", _set("ga.termination.generations", 0), "ga.termination.generations", ["0"]),
    ("target-fitness-above-one", _set("ga.termination.target_fitness", 1.2), "ga.termination.target_fitness", ["1.2"]),
    (
        "wall-clock-negative",
        _set("ga.termination.wall_clock_seconds", -5),
        "ga.termination.wall_clock_seconds",
        ["greater than 0"],
    ),
    ("weights-unknown", _set("ga.weights", "average"), "ga.weights", ["'inherit'", "'merge'", "'average'"]),
    ("noise-level-negative", _set("train.noise_level", -0.1), "train.noise_level", ["-0.1"]),
    (
        "early-stopping-patience-zero",
        _set("train.early_stopping", {"patience": 0}),
        "train.early_stopping.patience",
        ["0"],
    ),
    (
        "noise-gene-negative",
        _set("space.genes.noise_level", {"type": "float", "low": -0.1, "high": 0.2}),
        "space.genes.noise_level.low",
        [">= 0"],
    ),
    # architecture space
    (
        "architecture-section-with-hyperparameters",
        _set("space.architecture", {}),
        "space",
        ["only read with kind: architecture"],
    ),
    ("space-kind-unknown", _set("space.kind", "network"), "space.kind", ["'architecture'", "'network'"]),
    (
        "architecture-unknown-key",
        _set(
            "space",
            {**RAW_PARAMS["space"], "kind": "architecture", "architecture": {"conv_layer": {"min": 1, "max": 2}}},
        ),
        "space.architecture.conv_layer",
        ["did you mean 'conv_layers'"],
    ),
    (
        "architecture-lengths-inverted",
        _set(
            "space",
            {**RAW_PARAMS["space"], "kind": "architecture", "architecture": {"fc_layers": {"min": 3, "max": 1}}},
        ),
        "space.architecture.fc_layers",
        ["min (3) must not exceed max (1)"],
    ),
    (
        "architecture-unknown-activation",
        _set(
            "space",
            {**RAW_PARAMS["space"], "kind": "architecture", "architecture": {"conv": {"activation": ["relu", "gelu"]}}},
        ),
        "space.architecture.conv.activation.1",
        ["'gelu'"],
    ),
    (
        "architecture-pool-size-one",
        _set("space", {**RAW_PARAMS["space"], "kind": "architecture", "architecture": {"conv": {"pool_size": [1]}}}),
        "space.architecture.conv.pool_size.0",
        ["greater than or equal to 2"],
    ),
    (
        "architecture-cannot-fit-images",
        _set(
            "space",
            {
                **RAW_PARAMS["space"],
                "kind": "architecture",
                "architecture": {"conv_layers": {"min": 4, "max": 4}, "conv": {"stride": [2], "padding": [0]}},
            },
        ),
        "space.architecture.conv_layers.min",
        ["no network of this space fits 28x28 images"],
    ),
    (
        "phases-exceed-budget",
        _set("space", {**RAW_PARAMS["space"], "kind": "architecture", "architecture": {"phases": {"count": 3}}}),
        "<top level>",
        ["space.architecture.phases.count (3) x ga.population_size (6) exceeds budget.evaluations (16)"],
    ),
    # inf and nan, wherever a number goes
    (
        "gene-bound-inf",
        _set("space.genes.learning_rate.high", math.inf),
        "space.genes.learning_rate.high",
        ["must be a finite number, got inf"],
    ),
    (
        "gene-bound-nan",
        _set("space.genes.momentum.low", math.nan),
        "space.genes.momentum.low",
        ["must be a finite number, got nan"],
    ),
    (
        "choice-value-minus-inf",
        _set("space.genes.batch_size.values", [32, -math.inf]),
        "space.genes.batch_size.values.1",
        ["got -inf"],
    ),
    ("noise-level-inf", _set("train.noise_level", math.inf), "train.noise_level", ["finite"]),
    ("lr-gamma-nan", _set("train.lr_gamma", math.nan), "train.lr_gamma", ["finite"]),
    (
        "wall-clock-inf",
        _set("ga.termination.wall_clock_seconds", math.inf),
        "ga.termination.wall_clock_seconds",
        ["finite"],
    ),
    ("operator-setting-nan", _set("ga.mutation.rate", math.nan), "ga.mutation.rate", ["finite", "nan"]),
    ("test-size-nan", _set("data.test_size", math.nan), "data.test_size", ["finite"]),
    # upper bounds: a typo refused before any training
    (
        "budget-huge",
        _set("budget.evaluations", 1_000_000_000),
        "budget.evaluations",
        ["less than or equal to 100000", "1000000000"],
    ),
    (
        "gene-epochs-huge",
        _set("space.genes.epochs.high", 5000),
        "space.genes.epochs.high",
        [f"<= {MAX_EPOCHS}", "got 5000"],
    ),
    (
        "gene-epochs-choice-huge",
        _set("space.genes.epochs", {"type": "choice", "values": [1, 10**6]}),
        "space.genes.epochs.values",
        [f"<= {MAX_EPOCHS}", "1000000"],
    ),
    (
        "gene-batch-size-huge",
        _set("space.genes.batch_size.values", [32, 10**7]),
        "space.genes.batch_size.values",
        [f"<= {MAX_BATCH}", "10000000"],
    ),
    (
        "gene-batch-size-int-huge",
        _set("space.genes.batch_size", {"type": "int", "low": 32, "high": 10**7}),
        "space.genes.batch_size.high",
        [f"<= {MAX_BATCH}"],
    ),
    ("champion-epochs-huge", _set("champion.epochs", 10**6), "champion.epochs", ["less than or equal to 1000"]),
    ("champion-train-size-huge", _set("champion.train_size", 10**9), "champion.train_size", ["less than or equal"]),
    ("eval-batch-size-huge", _set("train.eval_batch_size", 10**8), "train.eval_batch_size", ["less than or equal"]),
    ("lr-step-size-huge", _set("train.lr_step_size", 10**6), "train.lr_step_size", ["less than or equal to 1000"]),
    (
        "patience-huge",
        _set("train.early_stopping", {"patience": 10**6}),
        "train.early_stopping.patience",
        ["less than or equal to 1000"],
    ),
    ("hidden-units-huge", _set("model.hidden_units", 10**7), "model.hidden_units", ["less than or equal"]),
    ("conv-channels-huge", _set("model.conv_channels", [32, 10**6]), "model.conv_channels.1", ["less than or equal"]),
    ("train-size-huge", _set("data.train_size", 10**9), "data.train_size", ["less than or equal to 1000000"]),
    ("val-size-huge", _set("data.val_size", 10**9), "data.val_size", ["less than or equal to 1000000"]),
    ("population-huge", _set("ga.population_size", 10**6), "ga.population_size", ["less than or equal to 10000"]),
    ("immigrants-huge", _set("ga.survival.immigrants", 10**6), "ga.survival.immigrants", ["less than or equal"]),
    (
        "generations-huge",
        _set("ga.termination.generations", 10**9),
        "ga.termination.generations",
        ["less than or equal to 100000"],
    ),
    (
        "architecture-filters-huge",
        _architecture({"conv": {"filters": [8, 10**6]}}),
        "space.architecture.conv.filters.1",
        ["less than or equal to 4096"],
    ),
    (
        "architecture-units-huge",
        _architecture({"fc": {"units": [10**6]}}),
        "space.architecture.fc.units.0",
        ["less than or equal"],
    ),
    (
        "architecture-kernel-huge",
        _architecture({"conv": {"kernel_size": [3, 999]}}),
        "space.architecture.conv.kernel_size.1",
        ["less than or equal to 32"],
    ),
    (
        "architecture-stride-huge",
        _architecture({"conv": {"stride": [999]}}),
        "space.architecture.conv.stride.0",
        ["less than or equal"],
    ),
    (
        "architecture-padding-huge",
        _architecture({"conv": {"padding": [0, 10**4]}}),
        "space.architecture.conv.padding.1",
        ["less than or equal"],
    ),
    (
        "architecture-pool-size-huge",
        _architecture({"conv": {"pool_size": [None, 999]}}),
        "space.architecture.conv.pool_size.1",
        ["less than or equal"],
    ),
    (
        "architecture-conv-layers-huge",
        _architecture({"conv_layers": {"min": 1, "max": 1000}}),
        "space.architecture.conv_layers.max",
        ["less than or equal to 32"],
    ),
    (
        "architecture-fc-layers-huge",
        _architecture({"fc_layers": {"min": 1, "max": 1000}}),
        "space.architecture.fc_layers.max",
        ["less than or equal"],
    ),
    (
        "phases-count-huge",
        _architecture({"phases": {"count": 10**4}}),
        "space.architecture.phases.count",
        ["less than or equal to 100"],
    ),
    (
        "phases-new-conv-layers-huge",
        _architecture({"phases": {"new_conv_layers": 1000}}),
        "space.architecture.phases.new_conv_layers",
        ["less than or equal"],
    ),
    # seeds: numpy and scikit-learn take seeds below 2**32, so every seed a repeat derives must be
    ("seed-2-to-the-70", _set("seed", 2**70), "seed", ["less than or equal to 4294967295"]),
    ("seed-2-to-the-64", _set("seed", 2**64), "seed", ["less than or equal to 4294967295"]),
    (
        "repeat-seed-past-2-to-the-32",
        _chain(_set("seed", 2**32 - 1), _set("study.repeats", 2)),
        "seed",
        ["run up to 4294967296", "seed + study.repeats - 1"],
    ),
    (
        "listed-seed-past-2-to-the-32",
        _chain(_set("study.repeats", 2), _set("study.seeds", [1, 2**32])),
        "study.seeds.1",
        ["less than or equal to 4294967295"],
    ),
    (
        "sensitivity-seed-past-2-to-the-32",
        _chain(_set("seed", 2**32 - 2), _set("sensitivity.enabled", True), _set("sensitivity.repeats", 3)),
        "seed",
        ["sensitivity.repeats - 1"],
    ),
    # names the tracking store would refuse only after the work is done
    ("registered-model-empty", _set("champion.registered_model", ""), "champion.registered_model", ["not be empty"]),
    ("registered-model-blank", _set("champion.registered_model", "   "), "champion.registered_model", ["not be empty"]),
    (
        "registered-model-slash",
        _set("champion.registered_model", "team/model"),
        "champion.registered_model",
        ["'/' or ':'"],
    ),
    ("experiment-10-MB", _set("mlflow.experiment", "x" * 10_000_000), "mlflow.experiment", ["at most 256 characters"]),
    # missing sections
    ("missing-section-ga", _delete("ga"), "ga", ["Field required"]),
    ("missing-section-space", _delete("space"), "space", ["Field required"]),
    ("missing-section-budget", _delete("budget"), "budget", ["Field required"]),
    ("missing-budget-evaluations", _delete("budget.evaluations"), "budget.evaluations", ["Field required"]),
]


@pytest.mark.parametrize(
    ("change", "key", "fragments"), [v[1:] for v in BAD_VARIANTS], ids=[v[0] for v in BAD_VARIANTS]
)
def test_bad_params_variant_names_its_key(change, key, fragments):
    params = fresh_params()
    change(params)
    with pytest.raises(ConfigError) as info:
        parse_config(params, source="my-params.yaml")
    message = str(info.value)
    assert message.startswith("my-params.yaml"), message
    assert_names_key(message, key)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_variants_do_not_touch_the_shared_dict():
    assert RAW_PARAMS == yaml.safe_load(PARAMS_PATH.read_text())


def test_did_you_mean_absent_for_unrelated_key():
    params = fresh_params()
    params["ga"]["zzzzzz"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(params)
    assert_names_key(str(info.value), "ga.zzzzzz")
    assert "did you mean" not in str(info.value)


def test_every_bad_key_is_named_when_several_are_wrong():
    params = fresh_params()
    params["budget"]["evaluations"] = 0
    params["data"]["val_size"] = -3
    params["champion"]["epochs"] = "three"
    with pytest.raises(ConfigError) as info:
        parse_config(params)
    message = str(info.value)
    for key in ("budget.evaluations", "data.val_size", "champion.epochs"):
        assert_names_key(message, key)


@pytest.mark.parametrize("raw", [None, [1, 2], "seed: 42", 42], ids=["none", "list", "string", "int"])
def test_top_level_not_a_mapping(raw):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="weird.yaml")
    message = str(info.value)
    assert message.startswith("weird.yaml:")
    assert "mapping" in message
    assert type(raw).__name__ in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_upper_bounds_themselves_are_allowed():
    params = fresh_params()
    params["budget"]["evaluations"] = MAX_EVALUATIONS
    params["champion"]["epochs"] = MAX_EPOCHS
    params["space"]["genes"]["epochs"]["high"] = MAX_EPOCHS
    params["space"]["genes"]["batch_size"]["values"] = [32, MAX_BATCH]
    config = parse_config(params)
    assert config.budget.evaluations == MAX_EVALUATIONS and config.space.genes["epochs"].high == MAX_EPOCHS


HUGE_STRING = "x" * 100_000
HUGE_INPUTS = [
    ("huge-list-for-string", _set("mlflow.experiment", [HUGE_STRING] * 1000), "mlflow.experiment"),
    ("huge-string-for-int", _set("seed", HUGE_STRING), "seed"),
    ("huge-duplicate-choices", _set("space.genes.batch_size.values", [32] * 100_000), "space.genes.batch_size"),
    (
        "huge-bad-gene-value",
        _set("space.genes.learning_rate", {"type": "choice", "values": [HUGE_STRING, -1]}),
        "space.genes.learning_rate.values",
    ),
    ("huge-unknown-key", _set(f"ga.{HUGE_STRING}", 1), "ga.xxx"),
    (
        "huge-operator-setting",
        _set("ga.selection", {"name": "truncation", "fraction": HUGE_STRING}),
        "ga.selection.fraction",
    ),
    ("many-bad-items", _set("model.conv_channels", ["a"] * 10_000), "model.conv_channels"),
]


@pytest.mark.parametrize(("change", "key"), [v[1:] for v in HUGE_INPUTS], ids=[v[0] for v in HUGE_INPUTS])
def test_error_messages_stay_short_whatever_the_input(change, key):
    params = fresh_params()
    change(params)
    with pytest.raises(ConfigError) as info:
        parse_config(params)
    message = str(info.value)
    assert len(message) < 2000, f"{len(message)} characters"
    assert any(line.startswith(key) for line in error_lines(message)), message


# ----------------------------------------------------------------------------------------------------------------------
# load_config on files


def test_load_config_missing_file_names_it(tmp_path: Path):
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "cannot read" in message


def test_load_config_invalid_yaml_names_it(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: 42\nga: {population_size: [6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML" in message


def test_load_config_empty_file_names_it(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:")


def test_load_config_bad_content_names_file_and_key(tmp_path: Path):
    params = fresh_params()
    params["ga"]["mutation"] = {"name": "resample", "rate": 1.5}
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert_names_key(message, "ga.mutation.rate")


def test_load_config_round_trips_a_dumped_copy(tmp_path: Path):
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(RAW_PARAMS)))
    assert load_config(path) == load_config(PARAMS_PATH)


def _params_text_with(old: str, new: str) -> str:
    text = PARAMS_PATH.read_text()
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _line_of(text: str, fragment: str) -> int:
    """The 1-based line of the last line that holds ``fragment``."""
    return max(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


DUPLICATE_KEYS = [
    ("top-level", lambda: PARAMS_PATH.read_text() + "seed: 7\n", "seed", "seed: 7"),
    (
        "nested",
        lambda: _params_text_with("  population_size: 4\n", "  population_size: 4\n  population_size: 8\n"),
        "ga.population_size",
        "population_size: 8",
    ),
    ("section", lambda: PARAMS_PATH.read_text() + "budget:\n  evaluations: 30\n", "budget", "budget:"),
    (
        "flow-mapping",
        lambda: _params_text_with("{type: int, low: 1, high: 3}", "{type: int, low: 1, high: 3, low: 2}"),
        "space.genes.epochs.low",
        "low: 2",
    ),
    ("inside-a-list", lambda: PARAMS_PATH.read_text() + "extra: [{a: 1}, {b: 1, b: 2}]\n", "extra.1.b", "b: 2"),
]


@pytest.mark.parametrize(("make_text", "key", "line_fragment"), [v[1:] for v in DUPLICATE_KEYS],
                         ids=[v[0] for v in DUPLICATE_KEYS])  # fmt: skip
def test_load_config_duplicate_key_names_key_and_line(tmp_path: Path, make_text, key, line_fragment):
    text = make_text()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: duplicate key {key} (line {_line_of(text, line_fragment)})"


def test_load_config_merge_key_may_be_overridden(tmp_path: Path):
    # `<<` merges a mapping whose keys the mapping's own keys override: not a duplicate.
    path = tmp_path / "params.yaml"
    path.write_text(_params_text_with("selection: {name: truncation, fraction: 0.5}",
                                      "selection: {<<: {name: truncation, fraction: 0.9}, fraction: 0.5}"))  # fmt: skip
    assert load_config(path) == load_config(PARAMS_PATH)


def test_load_config_accepts_a_few_aliases(tmp_path: Path):
    path = tmp_path / "params.yaml"
    text = _params_text_with("registered_model: evohpo-champion", "registered_model: &name evohpo-champion")
    path.write_text(text.replace("experiment: evohpo", "experiment: *name"))
    assert load_config(path).mlflow.experiment == "evohpo-champion"


@pytest.mark.parametrize(
    ("written", "shown"), [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), (".Inf", "inf"), ("1.0e+999", "inf")]
)
def test_load_config_non_finite_number_names_key(tmp_path: Path, written, shown):
    path = tmp_path / "params.yaml"
    path.write_text(_params_text_with("high: 1.0, log: true", f"high: {written}, log: true"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert f"space.genes.learning_rate.high: must be a finite number, got {shown}" in error_lines(message)


def test_load_config_not_utf8_names_byte_and_position(tmp_path: Path):
    data = PARAMS_PATH.read_bytes().replace(b"experiment: evohpo", b"experiment: evohp\xe9", 1)
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    position = data.index(b"\xe9")
    assert str(info.value) == f"{path}: not valid UTF-8 (byte 0xe9 at position {position})"


def _billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 9) + "]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [_billion_laughs(), PARAMS_PATH.read_text() + "bomb:\n  " + _billion_laughs().replace("\n", "\n  ")],
    ids=["alone", "inside-params"],
)
def test_load_config_refuses_an_alias_bomb_with_a_short_message(tmp_path: Path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: YAML aliases expand to") and "allowed" in message
    assert len(message) < 300


def test_load_config_refuses_a_recursive_alias(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_PATH.read_text() + "loop: &loop {again: *loop}\n")
    with pytest.raises(ConfigError, match="recursive alias"):
        load_config(path)


def test_load_config_deep_nesting_is_an_error_not_a_crash(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_a_params_file_of_megabytes_is_refused_before_parsing(tmp_path: Path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(RAW_PARAMS) + "# " + "x" * 10_000_000 + "\n")

    def parser_reached(*args, **kwargs):
        raise AssertionError("the YAML parser ran: it takes over a minute on 10 MB")

    monkeypatch.setattr(loading.yaml, "load", parser_reached)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "at most 1,000,000 bytes" in message, message
    assert len(message) < 300


def test_load_config_huge_budget_fails_at_load_time(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(_params_text_with("evaluations: 10 ", "evaluations: 1000000000 "))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_names_key(str(info.value), "budget.evaluations")
    assert "less than or equal to 100000" in str(info.value)
