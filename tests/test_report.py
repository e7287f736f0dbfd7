"""The report's fitness-evaluation time section, on small synthetic results (no training)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import skew

from pipeline.study.report import PLOT_FILES, build_report, evaluation_time_groups


def record(index: int, seconds: float, acc: float | None, epochs: int, init: str | None = None,
           generation: int | None = None) -> dict:  # fmt: skip
    """One evaluation record shaped like <method>_search_history.json's; acc None means it failed."""
    rec = {
        "index": index,
        "generation": generation,
        "genome": {"learning_rate": 0.1, "batch_size": 32},
        "status": "finished" if acc is not None else "failed",
        "val_acc": acc,
        "train_seconds": seconds,
        "elapsed_seconds": 10.0 * (index + 1),
        "epochs": [{"val_acc": acc or 0.0}] * epochs,
    }
    if init is not None:
        rec["init"] = init
    return rec


# GA: generation 0 from scratch, generation 1 merged from parents (one merged child failed).
GA_RECORDS = [
    record(0, 10.0, 0.5, 3, "scratch", 0),
    record(1, 20.0, 0.6, 3, "scratch", 0),
    record(2, 30.0, 0.7, 3, "scratch", 0),
    record(3, 2.0, 0.8, 1, "merge", 1),
    record(4, 4.0, None, 0, "merge", 1),
    record(5, 12.0, 0.75, 2, "merge", 1),
]
# Grid: old records without "init" (scratch); one failure that still cost 20 s.
GRID_RECORDS = [record(0, 5.0, 0.4, 2), record(1, 5.0, 0.55, 2), record(2, 8.0, 0.65, 2), record(3, 20.0, None, 1)]
# Random: two evaluations only, so no skewness (NaN in the table, null in report.json).
RANDOM_RECORDS = [record(0, 3.0, 0.3, 1, "scratch"), record(1, 9.0, 0.45, 2, "scratch")]


def histories_of(ga=GA_RECORDS, grid=GRID_RECORDS, random=RANDOM_RECORDS) -> dict:
    ga_fitness = [[r["val_acc"] for r in ga if r["generation"] == g] for g in sorted({r["generation"] for r in ga})]
    return {
        "ga": {"evaluations": copy.deepcopy(ga),
               "generations": [{"generation": g, "fitness": f} for g, f in enumerate(ga_fitness)]},
        "grid": {"evaluations": copy.deepcopy(grid)},
        "random": {"evaluations": copy.deepcopy(random)},
    }  # fmt: skip


def summary_of(method: str, records: list[dict], **extra) -> dict:
    finished = [r["val_acc"] for r in records if r["status"] == "finished"]
    return {
        "method": method,
        "budget": 6,
        "evaluations": len(records),
        "failed": len(records) - len(finished),
        "total_train_seconds": sum(r["train_seconds"] for r in records),
        "best_val_acc": max(finished),
        "evaluations_to_best": 1,
        "time_to_best_seconds": 10.0,
        **extra,
    }


def write_results(results: Path, histories: dict, ga_extra: dict | None = None) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    ga_extra = {"generations": 2, "stop_reason": "budget of 6 evaluations spent", **(ga_extra or {})}
    for method, history in histories.items():
        extra = ga_extra if method == "ga" else {}
        (results / f"{method}_search.json").write_text(json.dumps(summary_of(method, history["evaluations"], **extra)))
        (results / f"{method}_search_history.json").write_text(json.dumps(history))
    genome = {"learning_rate": 0.1, "batch_size": 32}
    methods = {m: {"genome": genome, "test_acc": acc} for m, acc in (("ga", 0.81), ("grid", 0.7), ("random", 0.5))}
    champion = {
        "champion": {"method": "ga", "genome": genome, "test_acc": 0.81},
        "methods": methods,
        "epochs": 3,
        "train_size": 400,
        "test_size": 100,
    }
    (results / "champion.json").write_text(json.dumps(champion))
    return results


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def row(table, group: str):
    rows = table[table["group"] == group]
    assert len(rows) == 1, f"expected one row for {group!r}, got {len(rows)}"
    return rows.iloc[0]


def test_method_rows_match_numpy_and_scipy():
    table = evaluation_time_groups(histories_of())
    cases = {
        "Genetic algorithm": ([10, 20, 30, 2, 4, 12], [3, 3, 3, 1, 0, 2], [0.5, 0.6, 0.7, 0.8, 0.75]),
        "Grid search": ([5, 5, 8, 20], [2, 2, 2, 1], [0.4, 0.55, 0.65]),
    }
    for group, (times, epochs, accs) in cases.items():
        got = row(table, group)
        assert got["evaluations"] == len(times)
        assert got["mean time (s)"] == pytest.approx(np.mean(times))
        assert got["median time (s)"] == pytest.approx(np.median(times))
        assert got["skewness"] == pytest.approx(skew(np.array(times, dtype=float), bias=False))
        assert got["mean epochs trained"] == pytest.approx(np.mean(epochs))
        assert got["best val acc"] == pytest.approx(max(accs))
        assert got["mean val acc"] == pytest.approx(np.mean(accs))
    # Known numbers, independent of scipy: grid's mean 9.5, median 6.5.
    assert row(table, "Grid search")["mean time (s)"] == pytest.approx(9.5)
    assert row(table, "Grid search")["median time (s)"] == pytest.approx(6.5)
    random = row(table, "Random search")
    assert random["mean time (s)"] == pytest.approx(6.0) and random["median time (s)"] == pytest.approx(6.0)
    assert math.isnan(random["skewness"])  # fewer than 3 evaluations


def test_failed_evaluations_count_in_time_but_not_in_accuracy():
    grid = row(evaluation_time_groups(histories_of()), "Grid search")
    assert grid["evaluations"] == 4
    assert grid["mean time (s)"] == pytest.approx((5 + 5 + 8 + 20) / 4)  # the failure's 20 s included
    assert grid["mean val acc"] == pytest.approx((0.4 + 0.55 + 0.65) / 3)  # the failure left out
    only_failures = [record(0, 7.0, None, 0), record(1, 9.0, None, 0)]
    failed = row(evaluation_time_groups(histories_of(random=only_failures)), "Random search")
    assert failed["mean time (s)"] == pytest.approx(8.0)
    assert math.isnan(failed["best val acc"]) and math.isnan(failed["mean val acc"])


def test_ga_init_rows_appear_only_with_more_than_one_kind():
    table = evaluation_time_groups(histories_of())
    assert list(table["group"]) == ["Genetic algorithm", "Grid search", "Random search",
                                    "Genetic algorithm: scratch", "Genetic algorithm: merge"]  # fmt: skip
    merge = row(table, "Genetic algorithm: merge")
    assert merge["evaluations"] == 3
    assert merge["mean time (s)"] == pytest.approx(6.0) and merge["median time (s)"] == pytest.approx(4.0)
    assert merge["skewness"] == pytest.approx(skew([2.0, 4.0, 12.0], bias=False))
    assert merge["mean val acc"] == pytest.approx(0.775)
    scratch = row(table, "Genetic algorithm: scratch")
    assert scratch["mean time (s)"] == pytest.approx(20.0) and scratch["skewness"] == pytest.approx(0.0)

    all_scratch = [{**r, "init": "scratch"} for r in GA_RECORDS]
    assert list(evaluation_time_groups(histories_of(ga=all_scratch))["group"]) == [
        "Genetic algorithm", "Grid search", "Random search"]  # fmt: skip


def test_records_without_init_are_scratch():
    # Missing "init" next to explicit "scratch": still one kind, so no per-kind rows.
    mixed = [{k: v for k, v in r.items() if k != "init"} if i % 2 else {**r, "init": "scratch"}
             for i, r in enumerate(GA_RECORDS)]  # fmt: skip
    assert "init" not in mixed[1]
    assert len(evaluation_time_groups(histories_of(ga=mixed))) == 3
    # Missing "init" next to "merge": the old records land in the scratch row.
    old = [{k: v for k, v in r.items() if k != "init"} if r["init"] == "scratch" else r for r in GA_RECORDS]
    scratch = row(evaluation_time_groups(histories_of(ga=old)), "Genetic algorithm: scratch")
    assert scratch["evaluations"] == 3 and scratch["mean time (s)"] == pytest.approx(20.0)


def test_build_report_writes_time_section_plots_and_valid_json(tmp_path):
    ga_extra = {"operators": {"selection": "tournament", "weights": "merge"},
                "phase_reasons": ["phase 0: its share spent", "stagnation"], "rejected": 2}  # fmt: skip
    results = write_results(tmp_path / "results", histories_of(), ga_extra)
    build_report(results, "tiny study")

    for name in PLOT_FILES.values():
        png = results / "plots" / name
        assert png.is_file() and png.stat().st_size > 0, name
    assert PLOT_FILES["evaluation_time"] == "evaluation_time_histogram.png"
    assert (results / "plots" / "evaluation_time_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    markdown = (results / "report.md").read_text()
    assert "## Fitness-evaluation time" in markdown
    assert "by the merge rule" in markdown
    assert "| Genetic algorithm: merge" in markdown
    assert "mean time (s)" in markdown and "skewness" in markdown and "mean epochs trained" in markdown
    grid_line = next(line for line in markdown.splitlines() if line.startswith("| Grid search") and "9.5" in line)
    assert "6.5" in grid_line
    assert "![Fitness-evaluation time distribution](plots/evaluation_time_histogram.png)" in markdown
    assert "GA phases: phase 0: its share spent; stagnation." in markdown and "2 candidate(s) rejected" in markdown

    page = (results / "report.html").read_text()
    assert "<h2>Fitness-evaluation time</h2>" in page and "Genetic algorithm: merge" in page
    assert "evaluation_time_histogram.png" in page

    metrics = strict_json((results / "report.json").read_text())
    assert metrics["grid_mean_train_seconds"] == pytest.approx(9.5)
    assert metrics["ga_mean_train_seconds"] == pytest.approx(13.0)
    assert metrics["ga_train_seconds_skewness"] == pytest.approx(skew([10, 20, 30, 2, 4, 12], bias=False))
    assert metrics["random_mean_train_seconds"] == pytest.approx(6.0)
    assert metrics["random_train_seconds_skewness"] is None  # NaN written as null


def test_report_without_operators_says_no_weight_rule(tmp_path):
    scratch_only = [{k: v for k, v in r.items() if k != "init"} for r in GA_RECORDS]
    results = write_results(tmp_path / "results", histories_of(ga=scratch_only))
    build_report(results)
    markdown = (results / "report.md").read_text()
    assert "The GA trained every child from scratch" in markdown
    assert "Genetic algorithm: scratch" not in markdown
    assert "rejected" not in markdown
    strict_json((results / "report.json").read_text())


def test_one_phase_and_no_rejections_add_no_notes(tmp_path):
    ga_extra = {"operators": {"weights": "none"}, "phase_reasons": ["budget spent"], "rejected": 0}
    results = write_results(tmp_path / "results", histories_of(), ga_extra)
    build_report(results, "tiny study")
    markdown = (results / "report.md").read_text()
    assert "GA phases" not in markdown and "rejected" not in markdown
