"""The evaluator on tiny data: Lightning training, determinism, and failures recorded, not raised."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import lit_module
from pipeline.config import ModelConfig, TrainConfig
from pipeline.evaluate import EvaluationRequest, Evaluator, fit_genome
from pipeline.space import genome_seed

pytestmark = pytest.mark.slow

GOOD = {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 32, "epochs": 2}
SMALL_MODEL = ModelConfig(conv_channels=[4, 8], hidden_units=16)


@pytest.fixture
def evaluator(prepared_digits):
    return Evaluator(prepared_digits, model_config=SMALL_MODEL, train_config=TrainConfig(), study_seed=0)


def test_training_learns_and_reports_per_epoch(evaluator):
    (result,) = evaluator.evaluate([EvaluationRequest(GOOD, "good")])
    assert result.status == "finished"
    assert len(result.epochs) == GOOD["epochs"]
    assert result.val_acc == result.epochs[-1]["val_acc"]
    assert result.val_acc > 0.3  # 10 classes: chance is 0.1
    assert result.epochs[1]["train_loss"] < result.epochs[0]["train_loss"]
    # StepLR(step_size=1, gamma=0.7): the second epoch trains at 0.7x the rate.
    assert result.epochs[1]["lr"] == pytest.approx(GOOD["learning_rate"] * 0.7)
    assert result.seed == genome_seed(0, GOOD)


def test_same_genome_same_seed_same_fitness_on_cpu(evaluator):
    first, second = evaluator.evaluate([EvaluationRequest(GOOD, "a"), EvaluationRequest(GOOD, "b")])
    assert first.val_acc == second.val_acc
    assert first.epochs == second.epochs
    other_seed = Evaluator(evaluator.data, model_config=SMALL_MODEL, train_config=TrainConfig(), study_seed=1)
    (third,) = other_seed.evaluate([EvaluationRequest(GOOD, "c")])
    assert third.epochs != first.epochs


def test_diverging_individual_is_failed_and_next_one_still_trains(evaluator):
    exploding = {**GOOD, "learning_rate": 1.0e6}
    seen = []
    results = evaluator.evaluate(
        [EvaluationRequest(exploding, "boom"), EvaluationRequest(GOOD, "fine")], on_result=seen.append
    )
    assert [r.status for r in results] == ["failed", "finished"]
    assert "DivergedError" in results[0].failure
    assert results[0].fitness == -math.inf
    assert seen == results


def test_injected_nan_loss_is_caught(evaluator, monkeypatch):
    real_cross_entropy = lit_module.F.cross_entropy
    calls = {"count": 0}

    def nan_after_four_batches(logits, labels):
        calls["count"] += 1
        loss = real_cross_entropy(logits, labels)
        return loss * float("nan") if calls["count"] > 4 else loss

    monkeypatch.setattr(lit_module.F, "cross_entropy", nan_after_four_batches)
    (result,) = evaluator.evaluate([EvaluationRequest(GOOD, "nan")])
    assert result.status == "failed"
    assert "nan" in result.failure
    assert result.val_acc is None


def test_champion_fit_overrides_epochs(prepared_digits):
    outcome = fit_genome(
        GOOD, seed=1, train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
        data=prepared_digits, model_config=SMALL_MODEL, train_config=TrainConfig(), epochs=3,
    )  # fmt: skip
    assert len(outcome.module.epoch_metrics) == 3
