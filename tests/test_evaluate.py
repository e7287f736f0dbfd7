"""The evaluator on tiny data: Lightning training, determinism, and failures recorded, not raised."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.evaluation import Proposal
from pipeline.space import genome_seed
from pipeline.training.evaluator import SequentialEvaluator, TrainingContext
from pipeline.training.fit import fit_genome
from pipeline.training.models import network_builder

pytestmark = pytest.mark.slow

GOOD = {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 32, "epochs": 2}
SMALL_MODEL = ModelConfig(conv_channels=[4, 8], hidden_units=16)


def make_evaluator(data, kind="hyperparameters", train_config=None, study_seed=0, weights="none", weight_store=None):
    context = TrainingContext(kind, SMALL_MODEL, train_config or TrainConfig(), study_seed, data.image_shape,
                              data.num_classes, weights)  # fmt: skip
    return SequentialEvaluator(data, context, weight_store)


def request(genome: dict, name: str, weight_parents=(), freeze_conv: int = 0) -> Proposal:
    return Proposal(genome, name, {}, tuple(weight_parents), freeze_conv)


def evaluate(evaluator: SequentialEvaluator, proposals: list[Proposal]) -> list:
    """The records, in proposal order."""
    finished = dict(evaluator.evaluate(proposals))
    return [finished[i] for i in range(len(proposals))]


def build(genome: dict, data):
    """A genome's freshly initialised network (its own layers when it has any)."""
    kind = "architecture" if "conv" in genome else "hyperparameters"
    return network_builder(kind, SMALL_MODEL, data.image_shape, data.num_classes)(genome)


@pytest.fixture
def evaluator(prepared_digits):
    return make_evaluator(prepared_digits)


def test_training_learns_and_reports_per_epoch(evaluator):
    (result,) = evaluate(evaluator, [request(GOOD, "good")])
    assert result.status == "finished"
    assert len(result.epochs) == GOOD["epochs"]
    assert result.val_score == result.epochs[-1]["val_acc"]
    assert result.val_score > 0.3  # 10 classes: chance is 0.1
    assert result.epochs[1]["train_loss"] < result.epochs[0]["train_loss"]
    # StepLR(step_size=1, gamma=0.7): the second epoch trains at 0.7x the rate.
    assert result.epochs[1]["lr"] == pytest.approx(GOOD["learning_rate"] * 0.7)
    assert result.seed == genome_seed(0, GOOD)


def test_same_genome_same_seed_same_fitness_on_cpu(evaluator, prepared_digits):
    first, second = evaluate(evaluator, [request(GOOD, "a"), request(GOOD, "b")])
    assert first.val_score == second.val_score
    assert first.epochs == second.epochs
    other_seed = make_evaluator(prepared_digits, study_seed=1)
    (third,) = evaluate(other_seed, [request(GOOD, "c")])
    assert third.epochs != first.epochs


def test_diverging_individual_is_failed_and_next_one_still_trains(evaluator):
    exploding = {**GOOD, "learning_rate": 1.0e6}
    yielded = list(evaluator.evaluate([request(exploding, "boom"), request(GOOD, "fine")]))
    assert [position for position, _ in yielded] == [0, 1]  # one after another, in order
    results = [record for _, record in yielded]
    assert [r.status for r in results] == ["failed", "finished"]
    assert "DivergedError" in results[0].failure
    assert results[0].fitness == -math.inf


def test_injected_nan_loss_is_caught(evaluator, monkeypatch):
    real_cross_entropy = torch.nn.functional.cross_entropy
    calls = {"count": 0}

    def nan_after_four_batches(logits, labels):
        calls["count"] += 1
        loss = real_cross_entropy(logits, labels)
        return loss * float("nan") if calls["count"] > 4 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_after_four_batches)
    (result,) = evaluate(evaluator, [request(GOOD, "nan")])
    assert result.status == "failed"
    assert "nan" in result.failure
    assert result.val_score is None


def test_channels_last_trains_the_network_in_that_layout_only_when_asked(prepared_digits):
    layouts = {}
    for channels_last in (False, True):
        outcome = fit_genome(
            GOOD, seed=1, build_network=lambda genome: build(genome, prepared_digits),
            train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
            train_config=TrainConfig(channels_last=channels_last),
        )  # fmt: skip
        weight = outcome.module.network.state_dict()["features.2.weight"]  # the second conv: 4 input channels
        layouts[channels_last] = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        assert len(outcome.module.epoch_metrics) == GOOD["epochs"] and torch.isfinite(weight).all()
    assert layouts == {False: False, True: True}


def test_champion_fit_overrides_epochs(prepared_digits):
    outcome = fit_genome(
        GOOD, seed=1, build_network=lambda genome: build(genome, prepared_digits), train_split=prepared_digits.load("train"),
        val_split=prepared_digits.load("val"), train_config=TrainConfig(), epochs=3,
    )  # fmt: skip
    assert len(outcome.module.epoch_metrics) == 3


# ----------------------------------------------------------------------------------------------------------------------
# weight inheritance and merge, frozen transferred layers, input noise, early stopping

import lightning.pytorch as pl  # noqa: E402

from pipeline.config import EarlyStoppingConfig  # noqa: E402
from pipeline.space import genome_hash  # noqa: E402
from pipeline.training.weights import WeightStore, inherit_weights, merge_weights  # noqa: E402


def conv_gene(filters: int, **changes) -> dict:
    gene = {"filters": filters, "kernel_size": 3, "stride": 1, "padding": 1, "pool_size": None, "pool_type": "max",
            "activation": "relu", "batch_norm": False, "skip": False}  # fmt: skip
    return gene | changes


def arch_genome(conv: list[dict], units: int, **genes) -> dict:
    return {**GOOD, "epochs": 1, **genes, "conv": conv, "fc": [{"units": units, "activation": "relu", "dropout": 0.1}]}


def weight_evaluator(prepared_digits, tmp_path, rule: str, kind: str = "architecture") -> SequentialEvaluator:
    return make_evaluator(prepared_digits, kind, weights=rule, weight_store=WeightStore(tmp_path / "weights"))


def capture_initial_weights(evaluator: SequentialEvaluator, monkeypatch) -> dict:
    """Spy on the evaluator: the child's state dict right after its initialisation rule ran."""
    from pipeline.training import evaluator as evaluator_module

    captured: dict = {}
    original = evaluator_module._initialise

    def spy(network, request, rule, parents):
        info = original(network, request, rule, parents)
        captured[request.name] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return info

    monkeypatch.setattr(evaluator_module, "_initialise", spy)
    return captured


def fresh_state(genome: dict, data, study_seed: int = 0) -> dict:
    pl.seed_everything(genome_seed(study_seed, genome), workers=False, verbose=False)
    return build(genome, data).state_dict()


def test_inherited_child_starts_from_its_parents_trained_weights(prepared_digits, tmp_path, monkeypatch):
    evaluator = weight_evaluator(prepared_digits, tmp_path, "inherit", kind="hyperparameters")
    captured = capture_initial_weights(evaluator, monkeypatch)
    parent = {**GOOD, "epochs": 1}
    child = {**parent, "learning_rate": 0.01}
    (parent_result,) = evaluate(evaluator, [request(parent, "parent")])
    assert parent_result.init == "scratch"
    trained_parent = evaluator.weight_store.load(genome_hash(parent))
    (child_result,) = evaluate(evaluator, [request(child, "child", weight_parents=(genome_hash(parent),))])
    assert child_result.init == "inherit" and child_result.transferred_fraction == 1.0
    for key, tensor in captured["child"].items():
        assert torch.equal(tensor, trained_parent[key]), key
    # same network, untrained: the parent's own start differs from its trained weights
    assert not torch.equal(captured["parent"]["features.0.weight"], trained_parent["features.0.weight"])


def test_inheritance_takes_only_layers_whose_shapes_match(prepared_digits, tmp_path, monkeypatch):
    evaluator = weight_evaluator(prepared_digits, tmp_path, "inherit")
    captured = capture_initial_weights(evaluator, monkeypatch)
    parent = arch_genome([conv_gene(4), conv_gene(8)], units=16)
    child = arch_genome([conv_gene(4), conv_gene(6)], units=16, learning_rate=0.02)
    evaluate(evaluator, [request(parent, "parent")])
    (result,) = evaluate(evaluator, [request(child, "child", weight_parents=(genome_hash(parent),))])
    expected, taken = inherit_weights(
        fresh_state(child, prepared_digits), evaluator.weight_store.load(genome_hash(parent))
    )
    assert "conv.0.conv.weight" in taken and "conv.1.conv.weight" not in taken
    assert 0 < result.transferred_fraction < 1
    for key, tensor in captured["child"].items():
        assert torch.equal(tensor, expected[key]), key


def test_merged_child_starts_from_the_cropped_padded_average(prepared_digits, tmp_path, monkeypatch):
    evaluator = weight_evaluator(prepared_digits, tmp_path, "merge")
    captured = capture_initial_weights(evaluator, monkeypatch)
    parent_a = arch_genome([conv_gene(4)], units=16)
    parent_b = arch_genome([conv_gene(8), conv_gene(4)], units=8, momentum=0.5)
    child = arch_genome([conv_gene(6)], units=12, learning_rate=0.02)
    evaluate(evaluator, [request(parent_a, "a"), request(parent_b, "b")])
    hashes = (genome_hash(parent_a), genome_hash(parent_b))
    (result,) = evaluate(evaluator, [request(child, "child", weight_parents=hashes)])
    assert result.init == "merge" and result.status == "finished"
    expected, _ = merge_weights(fresh_state(child, prepared_digits), [evaluator.weight_store.load(h) for h in hashes])
    for key, tensor in captured["child"].items():
        assert torch.equal(tensor, expected[key]), key
    a = evaluator.weight_store.load(hashes[0])["conv.0.conv.weight"]  # 4 filters
    b = evaluator.weight_store.load(hashes[1])["conv.0.conv.weight"]  # 8 filters
    merged = captured["child"]["conv.0.conv.weight"]  # 6 filters
    assert torch.allclose(merged[:4], (a + b[:4]) / 2) and torch.allclose(merged[4:], b[4:6] / 2)


def test_frozen_transferred_layers_do_not_train(prepared_digits, tmp_path):
    evaluator = weight_evaluator(prepared_digits, tmp_path, "inherit")
    best = arch_genome([conv_gene(4)], units=16)
    grown = arch_genome([conv_gene(4), conv_gene(8)], units=16)
    evaluate(evaluator, [request(best, "best")])
    transferred = evaluator.weight_store.load(genome_hash(best))
    (result,) = evaluate(evaluator, [request(grown, "grown", weight_parents=(genome_hash(best),), freeze_conv=1)])
    trained = evaluator.weight_store.load(genome_hash(grown))
    assert result.status == "finished"
    assert torch.equal(trained["conv.0.conv.weight"], transferred["conv.0.conv.weight"])
    assert not torch.equal(trained["fc.0.linear.weight"], fresh_state(grown, prepared_digits)["fc.0.linear.weight"])


def test_weights_rule_without_parent_weights_trains_from_scratch(prepared_digits, tmp_path):
    evaluator = weight_evaluator(prepared_digits, tmp_path, "merge", kind="hyperparameters")
    (result,) = evaluate(evaluator, [request({**GOOD, "epochs": 1}, "orphan", weight_parents=("0" * 16,))])
    assert result.status == "finished" and result.init == "scratch"


def test_input_noise_changes_training_and_the_gene_overrides_the_default(prepared_digits):
    genome = {**GOOD, "epochs": 1}
    with_gene = {**genome, "noise_level": 0.0}
    base = make_evaluator(prepared_digits)
    noisy = make_evaluator(prepared_digits, train_config=TrainConfig(noise_level=0.5))
    plain, plain_gene = evaluate(base, [request(genome, "plain"), request(with_gene, "plain-gene")])
    noised, noised_gene = evaluate(noisy, [request(genome, "noised"), request(with_gene, "gene")])
    assert noised.epochs[0]["train_loss"] != plain.epochs[0]["train_loss"]  # train.noise_level applied
    assert noised_gene.epochs == plain_gene.epochs  # the gene (0.0) overrides train.noise_level


def test_early_stopping_ends_a_flat_individual_early(prepared_digits):
    config = TrainConfig(early_stopping=EarlyStoppingConfig(patience=1))
    evaluator = make_evaluator(prepared_digits, train_config=config)
    (flat,) = evaluate(evaluator, [request({**GOOD, "learning_rate": 1e-12, "epochs": 5}, "flat")])
    assert flat.status == "finished" and len(flat.epochs) == 2  # epoch 2 brought no improvement


def test_in_memory_batches_learn_exactly_like_the_dataloader_path(prepared_digits):
    """Same seed, same batches, same metrics: the tensor data path changes speed, not learning."""
    from lightning.pytorch import seed_everything

    from pipeline.training.fit import make_trainer
    from pipeline.training.lit_module import LitClassifier
    from tests.test_data import dataloader_path

    genome = {**GOOD, "epochs": 2}
    train, val = prepared_digits.load("train"), prepared_digits.load("val")
    ours = fit_genome(genome, seed=5, build_network=lambda g: build(g, prepared_digits), train_split=train,
                      val_split=val, train_config=TrainConfig())  # fmt: skip

    seed_everything(5, workers=False, verbose=False)
    network = build(genome, prepared_digits)
    module = LitClassifier(network, learning_rate=genome["learning_rate"], momentum=genome["momentum"],
                           weight_decay=genome["weight_decay"])  # fmt: skip
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val.images, val.labels), batch_size=1000,
                                             generator=torch.Generator())  # fmt: skip
    make_trainer(genome["epochs"]).fit(module, dataloader_path(train, genome["batch_size"], seed=5), val_loader)
    assert module.epoch_metrics == ours.module.epoch_metrics


def test_a_fit_with_its_own_thread_count_leaves_the_process_as_it_was(prepared_digits):
    """A later fit in the same process must not depend on an earlier one's threads."""
    before = torch.get_num_threads()
    context = TrainingContext("hyperparameters", SMALL_MODEL, TrainConfig(), 0, prepared_digits.image_shape,
                              prepared_digits.num_classes, threads=1 if before > 1 else 2)  # fmt: skip
    (record,) = evaluate(SequentialEvaluator(prepared_digits, context), [request({**GOOD, "epochs": 1}, "t")])
    assert record.status == "finished" and torch.get_num_threads() == before


def test_the_champions_retraining_is_the_evaluations_fit_then_its_test_score(prepared_digits):
    """retrain_and_test trains as an evaluation of the same context trains (same validation curve for
    the same genome, seed and epochs), scores the returned network on the test split, and leaves the
    process's torch threads as they were."""
    from pipeline.data import TensorBatches
    from pipeline.training.evaluator import retrain_and_test

    context = TrainingContext("hyperparameters", SMALL_MODEL, TrainConfig(), 0, prepared_digits.image_shape,
                              prepared_digits.num_classes, threads=1)  # fmt: skip
    splits = {name: prepared_digits.load(name) for name in ("train", "val", "test")}
    threads = torch.get_num_threads()
    retrained = retrain_and_test(GOOD, genome_seed(0, GOOD), context, splits, epochs=GOOD["epochs"])
    assert torch.get_num_threads() == threads
    (record,) = evaluate(SequentialEvaluator(prepared_digits, context), [request(GOOD, "good")])
    assert [e["val_acc"] for e in retrained.epoch_metrics] == [e["val_acc"] for e in record.epochs]
    assert retrained.scores["val_acc"] == record.val_score and retrained.scores["epochs"] == GOOD["epochs"]
    network = retrained.network.eval()
    with torch.no_grad():
        right = sum(
            int((network(x).argmax(1) == y).sum()) for x, y in TensorBatches(splits["test"], 256, shuffle=False)
        )
    assert retrained.scores["test_acc"] == pytest.approx(right / len(splits["test"]), abs=1e-6)
