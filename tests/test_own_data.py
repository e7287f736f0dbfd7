"""Your data, your model: a CSV table and an image folder prepared like the built-in sets, a model
builder of the user's own, the optimiser and schedule as settings or genes, and every bad input
refused by key before any training."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.config import parse_config
from pipeline.config.sections import DataConfig, TrainConfig
from pipeline.data import PreparedData, prepare_dataset, table_task
from pipeline.errors import ConfigError, DatasetError
from pipeline.space import make_space
from pipeline.study.search_stage import run_search_stage
from pipeline.training.fit import fit_genome
from pipeline.training.lit_module import LitClassifier, training_settings
from pipeline.training.models import BuilderError, BuilderSource, check_builder, network_builder

from tests.conftest import tiny_params


# -- a CSV table ------------------------------------------------------------------------------------------------------


def write_table(path: Path, rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Two numeric features on other scales, a text feature, a text target of three classes."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["red", "green", "blue"], size=rows)
    size = rng.normal(100.0, 20.0, size=rows)
    label = np.where(size > 105, "big", np.where(kind == "red", "red-small", "small"))
    table = pd.DataFrame({"size": size, "weight": rng.normal(0.0, 0.01, size=rows), "colour": kind, "label": label})
    table.to_csv(path, index=False)
    return table


def csv_config(path: Path, **changes) -> DataConfig:
    return DataConfig(**{"dataset": "csv", "path": str(path), "target": "label", "val_size": 24, **changes})


def test_a_csv_table_is_split_stratified_standardised_and_one_hot_encoded_from_the_training_split(tmp_path):
    write_table(tmp_path / "table.csv")
    summary = prepare_dataset(csv_config(tmp_path / "table.csv"), 0, tmp_path / "prepared", tmp_path / "raw")
    assert summary["task"] == "classification" and summary["classes"] == ["big", "red-small", "small"]
    assert summary["feature_names"] == ["size", "weight", "colour=blue", "colour=green", "colour=red"]
    assert summary["sizes"] == {"train": 72, "val": 24, "full_train": 72, "test": 24}  # 20% test, then 24 validation
    counts = summary["class_counts"]
    for split in ("train", "val", "test"):  # stratified: each split holds every class in about its share
        share = np.array(counts[split]) / sum(counts[split])
        assert np.all(np.abs(share - np.array(counts["full_train"]) / 72) < 0.1)
    data = PreparedData.open(tmp_path / "prepared")
    train, val = data.load("train"), data.load("val")
    assert train.images.shape == (72, 1, 1, 5) and train.labels.dtype == torch.int64
    numeric = train.images[:, 0, 0, :2]
    # Standardised with the search-time training split's statistics: exactly mean 0 and std 1 there, not elsewhere.
    assert torch.allclose(numeric.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(numeric.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert not torch.allclose(val.images[:, 0, 0, :2].mean(0), torch.zeros(2), atol=1e-3)
    one_hot = train.images[:, 0, 0, 2:]
    assert torch.equal(one_hot.sum(1), torch.ones(72)) and set(one_hot.unique().tolist()) == {0.0, 1.0}


def test_a_category_unseen_in_training_is_all_zeros_and_a_fixed_test_table_is_used(tmp_path):
    table = write_table(tmp_path / "table.csv", rows=120)
    test = table.head(10).copy()
    test.loc[0, "colour"] = "purple"  # never in the training table
    test.to_csv(tmp_path / "test.csv", index=False)
    config = csv_config(tmp_path / "table.csv", test_path=str(tmp_path / "test.csv"))
    summary = prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    assert summary["sizes"]["test"] == 10 and summary["sizes"]["train"] == 96
    assert str(tmp_path / "test.csv") in summary["sources"]
    first = PreparedData.open(tmp_path / "prepared").load("test").images[0, 0, 0, 2:]
    assert torch.equal(first, torch.zeros(3))


def test_auto_task_reads_the_target():
    assert table_task(pd.Series(["a", "b"]), "auto") == "classification"
    assert table_task(pd.Series([0, 1, 2, 1]), "auto") == "classification"
    assert table_task(pd.Series(np.linspace(0, 1, 50)), "auto") == "regression"
    assert table_task(pd.Series(range(100)), "auto") == "regression"  # integers, too many values for classes
    assert table_task(pd.Series(["a", "b"]), "regression") == "regression"


def test_a_regression_table_standardises_its_target_and_reports_mae(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=80)
    pd.DataFrame({"x": x, "y": 3.0 * x + 50.0}).to_csv(tmp_path / "reg.csv", index=False)
    config = DataConfig(dataset="csv", path=str(tmp_path / "reg.csv"), target="y", val_size=16)
    summary = prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    assert summary["task"] == "regression" and summary["classes"] == []
    train = PreparedData.open(tmp_path / "prepared").load("train")
    assert train.labels.dtype == torch.float32 and abs(float(train.labels.mean())) < 1e-5
    params = tiny_params()
    params["data"] = {"dataset": "csv", "path": str(tmp_path / "reg.csv"), "target": "y", "val_size": 16}
    config = parse_config(params).with_prepared_task(summary)
    assert config.data.task == "regression"


@pytest.mark.parametrize(
    ("case", "changes", "key", "words"),
    [
        ("missing file", {"path": "nowhere.csv"}, "data.path", ["nowhere.csv", "does not exist"]),
        ("missing target", {"target": "labl"}, "data.target", ["'labl'", "size, weight, colour, label"]),
        ("missing feature", {"features": ["size", "hue"]}, "data.features", ["'hue'"]),
        ("one class", {}, "data.target", ["one class"]),
        ("one row", {}, "data.path", ["1 row"]),
        ("text in a number column", {}, "data.features", ["'weight'", "numeric", "line 5", "'n/a!'"]),
        ("empty cell", {}, "data.features", ["'size'", "empty"]),
        ("text regression target", {"task": "regression"}, "data.target", ["regression target must be numbers"]),
        ("not a table", {}, "data.path", ["not a readable CSV"]),
    ],
)
def test_bad_tables_are_refused_by_key(tmp_path, case, changes, key, words):
    path = tmp_path / "table.csv"
    table = write_table(path)
    if case == "one class":
        table.assign(label="same").to_csv(path, index=False)
    elif case == "one row":
        table.head(1).to_csv(path, index=False)
    elif case == "text in a number column":
        table.astype({"weight": object}).assign(weight=lambda t: t["weight"].where(t.index != 3, "n/a!")).to_csv(
            path, index=False)  # fmt: skip
    elif case == "empty cell":
        table.assign(size=table["size"].where(table.index != 7)).to_csv(path, index=False)
    elif case == "not a table":
        path.write_bytes(b"\x00\xff\xfe binary \x00")
    config = csv_config(path, **{k: v for k, v in changes.items() if k != "path"})
    if "path" in changes:
        config = csv_config(tmp_path / changes["path"])
    with pytest.raises(DatasetError) as raised:
        prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    message = str(raised.value)
    assert message.startswith(f"{key}:") and "\n" not in message
    for word in words:
        assert word in message
    assert not (tmp_path / "prepared" / "dataset.json").exists()


# -- an image folder --------------------------------------------------------------------------------------------------


def write_images(root: Path, classes: int = 3, per_class: int = 12, mode: str = "L", size: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 3)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = np.clip(rng.normal(60 * label, 20, size=shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode=mode).save(folder / f"{n}.png")


def test_an_image_folder_is_decoded_resized_and_split_like_the_built_in_images(tmp_path):
    write_images(tmp_path / "images")
    config = DataConfig(dataset="image_folder", path=str(tmp_path / "images"), image_size=[8, 6], val_size=6)
    summary = prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    assert summary["classes"] == ["class0", "class1", "class2"] and summary["image_shape"] == [1, 8, 6]
    assert summary["sizes"] == {"train": 30, "val": 6, "full_train": 30, "test": 9}  # test/ is the test set
    assert summary["class_counts"]["val"] == [2, 2, 2]
    split = PreparedData.open(tmp_path / "prepared").load("train")
    assert split.images.shape == (30, 1, 8, 6)
    assert abs(float(split.images.mean())) < 1e-4  # normalised with the training split's statistics


def test_colour_images_keep_three_channels_and_a_folder_without_test_is_split(tmp_path):
    write_images(tmp_path / "images", mode="RGB")
    for file in (tmp_path / "images" / "test").rglob("*.png"):
        file.unlink()
    for folder in sorted((tmp_path / "images" / "test").iterdir()):
        folder.rmdir()
    (tmp_path / "images" / "test").rmdir()
    config = DataConfig(dataset="image_folder", path=str(tmp_path / "images"), channels=3, image_size=[10, 10],
                        val_size=6, test_size=0.25)  # fmt: skip
    summary = prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    assert summary["image_shape"] == [3, 10, 10] and summary["sizes"]["test"] == 9
    assert PreparedData.open(tmp_path / "prepared").load("val").images.shape == (6, 3, 10, 10)


@pytest.mark.parametrize("case", ["missing", "no train folder", "one class", "unreadable image", "unknown test class"])
def test_bad_image_folders_are_refused_by_key(tmp_path, case):
    root = tmp_path / "images"
    if case != "missing":
        write_images(root, classes=1 if case == "one class" else 2)
    if case == "no train folder":
        (root / "train").rename(root / "training")
    if case == "unreadable image":
        (root / "train" / "class1" / "3.png").write_bytes(b"not a png")
    if case == "unknown test class":
        (root / "test" / "class9").mkdir()
        (root / "test" / "class0" / "0.png").rename(root / "test" / "class9" / "0.png")
    config = DataConfig(dataset="image_folder", path=str(root), image_size=[8, 8], val_size=4)
    with pytest.raises(DatasetError) as raised:
        prepare_dataset(config, 0, tmp_path / "prepared", tmp_path / "raw")
    message = str(raised.value)
    assert message.startswith("data.path:") and "\n" not in message
    expected = {"missing": "does not exist", "no train folder": "has no train/ folder", "one class": "one class",
                "unreadable image": "3.png is not a readable image", "unknown test class": "'class9'"}[case]  # fmt: skip
    assert expected in message


# -- your model -------------------------------------------------------------------------------------------------------

GOOD_BUILDER = """
from torch import nn


def build(genome, input_shape, outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], genome["width"]),
                         nn.ReLU(), nn.Linear(genome["width"], outputs))
"""

BAD_BUILDERS = {
    "cannot import": ("import not_a_module_anywhere\n", "cannot import", "ModuleNotFoundError", 1),
    "syntax error": ("def build(genome, input_shape, outputs)\n    return None\n", "cannot import", "SyntaxError", 1),
    "raises": ("def build(genome, input_shape, outputs):\n    x = 1\n    raise ValueError('no such width')\n",
               "failed: ", "ValueError: no such width", 3),
    "wrong output shape": ("from torch import nn\ndef build(genome, input_shape, outputs):\n"
                           "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(outputs + 1))\n",
                           "outputs of shape (2, 4)", "the task needs (2, 3)", None),
    "not a module": ("def build(genome, input_shape, outputs):\n    return 'a network'\n", "returned str", "", None),
    "no such function": ("def make(genome, input_shape, outputs):\n    pass\n", "has no function 'build'", "", None),
}  # fmt: skip


def builder_at(folder: Path, code: str) -> BuilderSource:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(code)
    params = tiny_params()
    params["model"] |= {"builder": f"{folder / 'net.py'}:build", "source": str(folder / "net.py")}
    params["space"]["genes"]["width"] = {"type": "choice", "values": [4, 8]}
    return BuilderSource.for_study(parse_config(params))


def test_a_users_builder_gets_every_gene_and_the_data_shape(tmp_path):
    source = builder_at(tmp_path, GOOD_BUILDER)
    network = network_builder(source, parse_config(tiny_params()).model, (1, 8, 8), 10)({"width": 8, "epochs": 1})
    assert network(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert network[1].out_features == 8
    check_builder(source, parse_config(tiny_params()).model, {"width": 4}, (1, 8, 8), 10)  # passes


@pytest.mark.parametrize("case", list(BAD_BUILDERS))
def test_a_broken_builder_is_one_line_naming_the_key_and_the_users_line(tmp_path, case):
    code, first, second, line = BAD_BUILDERS[case]
    source = builder_at(tmp_path, code)
    with pytest.raises(BuilderError) as raised:
        check_builder(source, parse_config(tiny_params()).model, {"width": 4}, (1, 4, 4), 3)
    message = str(raised.value)
    assert message.startswith("model.builder:") and "\n" not in message
    assert first in message and second in message
    if line is not None:
        assert f"{tmp_path / 'net.py'}:{line}" in message


def test_a_missing_builder_file_is_refused_by_key(tmp_path):
    params = tiny_params()
    params["model"] |= {"builder": f"{tmp_path / 'gone.py'}:build", "source": str(tmp_path / "gone.py")}
    with pytest.raises(ConfigError, match=r"^model.builder: cannot read .*gone.py"):
        BuilderSource.for_study(parse_config(params))


@pytest.mark.slow
def test_a_failing_builder_stops_the_search_before_anything_trains(tmp_path, monkeypatch, prepared_digits):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "net.py").write_text(BAD_BUILDERS["raises"][0])
    params = tiny_params()
    params["model"] |= {"builder": f"{tmp_path / 'net.py'}:build", "source": str(tmp_path / "net.py")}
    with pytest.raises(BuilderError, match=re.escape(f"{tmp_path / 'net.py'}:3: ValueError")):
        run_search_stage(
            "random", parse_config(params), prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt"
        )
    assert not list((tmp_path / "ckpt").rglob("*.jsonl"))  # no checkpoint: nothing was trained or logged


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("data", "dataset"), "csv", ["data", "needs target"]),
        (("data", "target"), "label", ["target", "only with dataset: csv"]),
        (("data", "task"), "regression", ["data.task", "only read with data.dataset: csv"]),
        (("model", "builder"), "not a reference", ["model.builder", "pattern"]),
        (("model", "builder"), "examples/images/model.py:build", ["model.source", "examples/images/model.py"]),
        (("space", "genes", "width"), {"type": "choice", "values": [4, 8]}, ["space.genes.width", "model.builder"]),
        (
            ("space", "genes", "optimizer"),
            {"type": "choice", "values": ["sgd", "lbfgs"]},
            ["space.genes.optimizer.values", "sgd, adam, adamw", "'lbfgs'"],
        ),
        (("train", "optimizer"), "rmsprop", ["train.optimizer", "'sgd', 'adam' or 'adamw'"]),
        (("train", "lr_schedule"), "linear", ["train.lr_schedule", "'step', 'cosine' or 'none'"]),
        (("data", "channels"), 2, ["data.channels"]),
    ],
)
def test_bad_own_data_and_model_params_are_refused_by_key(path, value, words):
    params = copy.deepcopy(tiny_params())
    node = params
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as raised:
        parse_config(params)
    for word in words:
        assert word in str(raised.value)


def test_genes_of_the_users_builder_are_accepted_with_a_builder():
    params = tiny_params()
    params["model"] |= {"builder": "my_models.nets:build", "source": "my_models"}
    params["space"]["genes"] |= {"width": {"type": "choice", "values": [4, 8]}, "dropout": {"type": "float", "low": 0.0,
                                                                                        "high": 0.5}}  # fmt: skip
    del params["space"]["genes"]["momentum"], params["space"]["genes"]["weight_decay"]  # train's values stand in
    config = parse_config(params)
    assert config.model.custom and set(config.space.genes) >= {"width", "dropout"}


# -- the optimiser and the schedule -----------------------------------------------------------------------------------


def optimiser_of(genome: dict, **train) -> tuple[torch.optim.Optimizer, object]:
    settings = training_settings(genome, TrainConfig(**train))
    module = LitClassifier(torch.nn.Linear(3, 2), **settings)
    configured = module.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None
    return configured["optimizer"], configured["lr_scheduler"]["scheduler"]


GENOME = {"learning_rate": 0.1, "momentum": 0.5, "weight_decay": 0.01, "batch_size": 8, "epochs": 4}


def test_the_optimiser_and_schedule_come_from_train_or_the_optimizer_gene():
    optimiser, scheduler = optimiser_of(GENOME)
    assert type(optimiser) is torch.optim.SGD and optimiser.defaults["momentum"] == 0.5
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR  # the studies' default
    optimiser, scheduler = optimiser_of(GENOME, optimizer="adam", lr_schedule="cosine")
    assert type(optimiser) is torch.optim.Adam and type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert scheduler.T_max == 4  # annealed over the genome's epochs
    optimiser, scheduler = optimiser_of(GENOME | {"optimizer": "adamw"}, optimizer="adam", lr_schedule="none")
    assert type(optimiser) is torch.optim.AdamW and scheduler is None  # the gene overrides train.optimizer
    optimiser, _ = optimiser_of({k: v for k, v in GENOME.items() if k != "momentum"}, momentum=0.3)
    assert optimiser.defaults["momentum"] == 0.3  # no momentum gene: train.momentum


@pytest.mark.slow
def test_cosine_annealing_trains_with_the_rates_it_promises(prepared_digits):
    config = parse_config(tiny_params() | {"train": {"optimizer": "adam", "lr_schedule": "cosine"}})
    genome = {**GENOME, "epochs": 3, "batch_size": 64}
    outcome = fit_genome(genome, seed=0, build_network=network_builder("hyperparameters", config.model, (1, 8, 8), 10),
                         train_split=prepared_digits.load("train"), val_split=prepared_digits.load("val"),
                         train_config=config.train)  # fmt: skip
    rates = [epoch["lr"] for epoch in outcome.module.epoch_metrics]
    expected = [0.1 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)]
    assert np.allclose(rates, expected)


def test_a_file_builder_travels_as_code_to_where_the_file_is_not(tmp_path):
    """Worker processes and Ray nodes receive the builder's code with each evaluation: they build it
    without the file (a remote node has none)."""
    source = builder_at(tmp_path / "driver", GOOD_BUILDER)
    received = pickle.loads(pickle.dumps(source))  # as a worker receives it
    (tmp_path / "driver" / "net.py").unlink()
    network = network_builder(received, parse_config(tiny_params()).model, (1, 4, 4), 3)({"width": 4})
    assert network(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


@pytest.mark.slow
def test_a_builder_failing_on_one_genome_mid_study_records_it_failed_with_the_users_line(tmp_path, monkeypatch,
                                                                                       prepared_digits):  # fmt: skip
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = tiny_params()
    params["space"]["genes"]["width"] = {"type": "choice", "values": [4, 8]}
    params["model"] |= {"builder": f"{tmp_path / 'net.py'}:build", "source": str(tmp_path / "net.py")}
    config = parse_config(params)
    # The width the start-up check's genome does not have fails: the search starts, then meets it.
    checked = make_space(config.space, (1, 8, 8)).sample(np.random.default_rng(config.seed))["width"]
    failing = 12 - checked
    (tmp_path / "net.py").write_text(
        GOOD_BUILDER.replace(
            "def build(genome, input_shape, outputs):\n",
            (
                "def build(genome, input_shape, outputs):\n"
                f"    if genome['width'] == {failing}:\n        raise RuntimeError('width {failing} is not built')\n"
            ),
        )
    )
    summaries = run_search_stage("random", config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt")
    history = json.loads((tmp_path / "results" / "random_search" / "seed-42_history.json").read_text())
    failed = [e for e in history["evaluations"] if e["genome"]["width"] == failing]
    assert failed and all(e["status"] == "failed" for e in failed)
    line = (tmp_path / "net.py").read_text().splitlines().index(
        f"        raise RuntimeError('width {failing} is not built')"
    ) + 1
    assert all(f"{tmp_path / 'net.py'}:{line}: RuntimeError: width {failing}" in e["failure"] for e in failed)
    assert all(e["status"] == "finished" for e in history["evaluations"] if e["genome"]["width"] == checked)
    assert summaries[0]["best_genome"]["width"] == checked  # the search went on and kept its results
