"""The regression task (scikit-learn's diabetes data; fitness: validation MAE, lower is better) runs
through the same strategies, stages and report as classification: a direction, not a second path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from pipeline.config import ConfigError, GAConfig, parse_config
from pipeline.data import PreparedData, prepare_dataset
from pipeline.evaluation import EvaluationRecord, FunctionEvaluator
from pipeline.search.ga import GeneticSearch
from pipeline.search.registry import method_names
from pipeline.search.tpe import TPESearch
from pipeline.space import SearchSpace
from pipeline.study.champion import run_champion_stage
from pipeline.study.report_stage import run_report_stage
from pipeline.study.runner import run_strategy
from pipeline.study.search_stage import run_search_stage
from pipeline.task import CLASSIFICATION, task_of, task_of_dataset
from pipeline.training.models import build_network
from tests.conftest import tiny_params


def diabetes_params(kind: str = "architecture") -> dict:
    params = tiny_params()
    params["data"] = {"dataset": "diabetes", "root": None, "train_size": None, "val_size": 88, "test_size": 0.2}
    params["space"]["kind"] = kind
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 2, "high": 6}
    params["space"]["genes"]["batch_size"] = {"type": "choice", "values": [16, 32]}
    params["space"]["genes"]["weight_decay"] = {"type": "float", "low": 0.0, "high": 0.01}
    if kind == "architecture":
        params["space"]["architecture"] = {
            "conv_layers": {"min": 0, "max": 0}, "fc_layers": {"min": 1, "max": 2},
            "fc": {"units": [8, 16, 32], "activation": ["relu", "swish"], "dropout": [0.0, 0.1]},
        }  # fmt: skip
    params["champion"] = {"epochs": 4, "train_size": None, "registered_model": "diabetes-champion"}
    params["study"] = {"repeats": 2, "seeds": None}
    return params


# --- the task and the record -------------------------------------------------------------------


def test_fitness_is_the_score_or_the_negated_error():
    regression = task_of({"task": "regression", "target_std": 77.0})
    assert (CLASSIFICATION.fitness(0.8), regression.fitness(40.0)) == (0.8, -40.0)
    assert regression.fitness(30.0) > regression.fitness(40.0)
    assert regression.fitness(None) == regression.fitness(math.nan) == -math.inf
    assert regression.best([40.0, 30.0, 35.0]) == 30.0 and CLASSIFICATION.best([0.4, 0.6]) == 0.6
    assert (regression.val_key, regression.test_key, regression.target_scale) == ("val_mae", "test_mae", 77.0)
    assert task_of_dataset("diabetes").maximize is False and task_of_dataset("digits") is CLASSIFICATION


def test_a_record_ranks_by_its_direction_and_reads_the_old_name():
    error = EvaluationRecord({"a": 1}, "h", 0, "finished", 30.0, None, None, 0.0, [], maximize=False)
    worse = EvaluationRecord({"a": 2}, "g", 0, "finished", 40.0, None, None, 0.0, [], maximize=False)
    assert error.fitness > worse.fitness
    # A checkpoint or history line written before the regression task: the score was "val_acc".
    stored = {k: v for k, v in error.to_dict().items() if k not in ("val_score", "maximize")} | {"val_acc": 0.7}
    legacy = EvaluationRecord.from_dict(stored)
    assert legacy.val_score == 0.7 and legacy.fitness == 0.7


# --- data and params ---------------------------------------------------------------------------


def test_diabetes_is_split_without_strata_and_standardised_with_training_statistics(tmp_path):
    config = parse_config(diabetes_params())
    summary = prepare_dataset(config.data, config.seed, out_dir=tmp_path, download_dir=tmp_path / "raw")
    assert summary["task"] == "regression" and summary["image_shape"] == [1, 1, 10] and summary["classes"] == []
    assert summary["sizes"] == {"train": 265, "val": 88, "full_train": 265, "test": 89}
    data = PreparedData.open(tmp_path)
    train, test = data.load("train"), data.load("test")
    assert train.images.shape == (265, 1, 1, 10) and train.labels.dtype == torch.float32
    features = train.images.reshape(265, 10).double()
    assert features.mean(0).abs().max() < 1e-5 and (features.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert abs(float(train.labels.mean())) < 1e-5
    # The test targets come back in the data's own units with the training split's statistics.
    restored = test.labels.double() * summary["target_std"] + summary["target_mean"]
    assert set(np.round(restored.numpy(), 3)) <= set(np.round(load_diabetes().target, 3))


def test_a_convolution_over_a_table_is_refused_by_key():
    params = diabetes_params()
    params["space"]["architecture"]["conv_layers"] = {"min": 0, "max": 2}
    with pytest.raises(
        ConfigError, match=r"space\.architecture\.conv_layers\.max: must be 0 for data\.dataset=diabetes"
    ):
        parse_config(params)


# --- strategies: minimising an error walks the same path as maximising its negation ------------


def error_of(genome: dict) -> float:
    return abs(math.log10(genome["learning_rate"] / 0.03)) / 3 + abs(genome["momentum"] - 0.9) / 2


@pytest.mark.parametrize("build", [
    lambda space: GeneticSearch(space, GAConfig(population_size=4), budget=16, seed=3),
    lambda space: TPESearch(space, 12, seed=3, startup_trials=4),
], ids=["ga", "tpe"])  # fmt: skip
def test_a_search_minimising_an_error_proposes_what_it_proposes_maximising_its_negation(build):
    space = SearchSpace.from_config(parse_config(tiny_params()).space)
    by_error = run_strategy(build(space), FunctionEvaluator(error_of, maximize=False), 16)
    by_score = run_strategy(build(space), FunctionEvaluator(lambda g: -error_of(g)), 16)
    assert [r.genome for r in by_error] == [r.genome for r in by_score]
    assert [r.fitness for r in by_error] == [r.fitness for r in by_score]


def test_the_ga_target_is_an_error_to_get_down_to():
    space = SearchSpace.from_config(parse_config(tiny_params()).space)
    config = GAConfig(population_size=4, termination={"target_fitness": 0.5})
    search = GeneticSearch(space, config, budget=40, seed=3, maximize=False)
    records = run_strategy(search, FunctionEvaluator(error_of, maximize=False), 40)
    assert "target fitness 0.5 reached" in search.stop_reason
    assert min(r.val_score for r in records) <= 0.5 and len(records) < 40


# --- every stage on the diabetes data ------------------------------------------------------------


@pytest.mark.slow
def test_every_method_the_champion_and_the_report_run_on_diabetes(tmp_path, mlflow_store):
    config = parse_config(diabetes_params())
    prepared, results, checkpoints = tmp_path / "prepared", tmp_path / "results", tmp_path / "ckpt"
    prepare_dataset(config.data, config.seed, out_dir=prepared, download_dir=prepared / "raw")
    for method in method_names():
        summaries = run_search_stage(method, config, prepared, results, checkpoints)
        for summary in summaries:
            history = json.loads((results / f"{method}_search" / f"seed-{summary['seed']}_history.json").read_text())
            finished = [r["val_score"] for r in history["evaluations"] if r["status"] == "finished"]
            assert all(r["maximize"] is False for r in history["evaluations"])
            assert summary["best_val_mae"] == min(finished)  # the lowest error, not the highest
        metrics = json.loads((results / f"{method}_search.json").read_text())
        assert "best_val_mae_mean" in metrics and not any("acc" in key for key in metrics)
    details = run_champion_stage(config, prepared, results, tmp_path / "models" / "champion.pt", checkpoints)
    retrained = [e for e in details["retrained"] if "test_mae" in e]
    assert len(retrained) == 2 * len(method_names())
    assert details["champion"]["val_mae"] == min(e["val_mae"] for e in retrained)
    assert "lower is better" in details["chosen_by"]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(diabetes_params()))
    report = run_report_stage(config, results, params_file, prepared)
    assert {f"{m}_best_val_mae_mean" for m in method_names()} <= report.keys()
    answer = (results / "report.md").read_text().split("\n## ")[0]
    assert "validation MAE" in answer and "accuracy" not in answer


@pytest.mark.slow
def test_the_hyperparameter_space_trains_a_fixed_perceptron_on_a_table(tmp_path, mlflow_store):
    """``space.kind: hyperparameters`` on a table: the network is one hidden layer of
    ``model.hidden_units`` (the studies' CNN needs images)."""
    params = diabetes_params("hyperparameters")
    params["study"] = {"repeats": 1, "seeds": None}
    config = parse_config(params)
    prepared = tmp_path / "prepared"
    prepare_dataset(config.data, config.seed, out_dir=prepared, download_dir=prepared / "raw")
    (summary,) = run_search_stage("random", config, prepared, tmp_path / "results", tmp_path / "ckpt")
    assert summary["failed"] == 0 and 0 < summary["best_val_mae"] < 200  # targets span 25-346
    network = build_network(config.model, (1, 1, 10), 1)
    assert [type(m).__name__ for m in network.modules()].count("Linear") == 2
    assert network(torch.zeros(3, 1, 1, 10)).shape == (3, 1)
