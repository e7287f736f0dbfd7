"""The ga_sensitivity stage: each GA setting varied alone, each distinct variant searched once over
repeats, its final best summarised (mean, bootstrap CI) in a table and a plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, parse_config
from pipeline.config.loading import variant_params
from pipeline.study.sensitivity import run_sensitivity_stage, variants
from pipeline.report.statistics import summarise
from pipeline.tracking.store import Tracker
from tests.conftest import tiny_params


def params_with(**sensitivity) -> dict:
    params = tiny_params()
    params["sensitivity"] = {"enabled": True, "repeats": 2, **sensitivity}
    return params


def test_a_variant_changes_its_one_setting_and_logs_apart():
    config = parse_config(params_with(population_size=[4]))
    base = config.model_dump()
    for setting, value, changed in [
        ("population_size", 4, {("ga", "population_size"): 4}),
        ("generations", 4, {("ga", "termination", "generations"): 4, ("budget", "evaluations"): 12}),  # 3 x 4
        ("mutation_rate", 0.5, {("ga", "mutation", "rate"): 0.5}),
        ("noise_level", 0.3, {("train", "noise_level"): 0.3}),
    ]:
        raw = variant_params(config, setting, value)
        for path, expected in changed.items():
            node = raw
            for key in path:
                node = node[key]
            assert node == expected, (setting, path)
        untouched = {
            k: v for k, v in raw.items() if k not in ("ga", "budget", "train", "study", "mlflow", "sensitivity")
        }
        assert untouched == {k: v for k, v in base.items() if k in untouched}
        assert raw["study"] == {"repeats": 2, "seeds": None} and raw["mlflow"]["experiment"] == "tiny-sensitivity"


def test_the_base_value_under_two_settings_is_one_search():
    config = parse_config(params_with(population_size=[3, 4], mutation_rate=[0.2, 0.5]))  # base: 3 and 0.2
    keys = {v.name: v.key for v in variants(config)}
    assert keys["population_size-3"] == keys["mutation_rate-0.2"]
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("sensitivity, key", [
    ({"population_size": [7]}, "sensitivity.population_size: 7 makes an invalid study"),  # above the budget of 6
    ({"mutation_rate": [1.5]}, "sensitivity.mutation_rate"),
    ({"population_size": [4, 4]}, "sensitivity"),
    ({}, "sensitivity"),  # enabled with nothing to vary
])  # fmt: skip
def test_bad_sensitivity_values_are_named_when_params_load(sensitivity, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(params_with(**sensitivity))


def test_noise_values_beside_a_noise_gene_are_refused():
    params = params_with(noise_level=[0.1])
    params["space"]["genes"]["noise_level"] = {"type": "float", "low": 0.0, "high": 0.3}
    with pytest.raises(ConfigError, match=r"sensitivity\.noise_level: the space has a noise_level gene"):
        parse_config(params)


def test_off_it_trains_nothing(tmp_path, prepared_digits):
    config = parse_config(tiny_params())
    assert run_sensitivity_stage(config, prepared_digits.folder, tmp_path / "results", tmp_path / "ckpt") == {
        "enabled": False
    }
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["summary.json"]


@pytest.mark.slow
def test_each_value_is_summarised_over_its_repeats(tmp_path, prepared_digits, mlflow_store):
    config = parse_config(params_with(population_size=[3, 4], mutation_rate=[0.2, 0.5]))
    results = tmp_path / "results"
    summary = run_sensitivity_stage(config, prepared_digits.folder, results, tmp_path / "ckpt")
    rows = {(r["setting"], r["value"]): r for r in summary["rows"]}
    assert list(rows) == [
        ("population_size", 3),
        ("population_size", 4),
        ("mutation_rate", 0.2),
        ("mutation_rate", 0.5),
    ]
    assert rows[("mutation_rate", 0.2)]["folder"] == "population_size-3"  # searched once
    assert len(list(results.glob("*/ga_search.json"))) == 3
    for row in rows.values():
        finals = [json.loads((results / row["folder"] / "ga_search" / f"seed-{s}.json").read_text())["best_val_acc"]
                  for s in (42, 43)]  # fmt: skip
        assert row["final_best"] == finals and row["n"] == 2
        expected = summarise(finals)
        assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(
            (np.mean(finals), expected["ci_low"], expected["ci_high"])
        )
    assert rows[("population_size", 3)]["generations"] > rows[("population_size", 4)]["generations"]
    table = (results / "sensitivity.md").read_text()
    assert table.count("\n| population size") == 2 and "mutation rate" in table
    with Image.open(results / "sensitivity.png") as image:
        assert image.size[0] > 400
    # Every repeat's stage run carries its variant, in the sensitivity experiment.
    tracker = Tracker("tiny-sensitivity")
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.sensitivity_setting = 'mutation_rate'")
    assert {r.data.tags["sensitivity_value"] for r in runs} == {"0.5"}
    # A rerun reuses every finished search.
    again = run_sensitivity_stage(config, prepared_digits.folder, results, tmp_path / "ckpt")
    assert again["rows"] == summary["rows"]
