"""The report's fitness-evaluation time section, on small synthetic results (no training)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap, skew, wilcoxon

from pipeline.study.report import build_report, evaluation_time_groups


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


SEEDS = list(range(1, 11))
# Final best validation accuracy per seed: the GA above random in every seed (so significant even
# after Holm's correction over six pairs), grid level with random.
FINAL = {"ga": [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.80, 0.84, 0.82, 0.81],
         "grid": [0.70, 0.75, 0.72, 0.69, 0.74, 0.73, 0.71, 0.72, 0.70, 0.74],
         "random": [0.71, 0.74, 0.73, 0.70, 0.72, 0.75, 0.70, 0.73, 0.71, 0.72],
         "tpe": [0.78, 0.74, 0.80, 0.77, 0.76, 0.79, 0.75, 0.78, 0.77, 0.76]}  # fmt: skip
TEST = {m: [v - 0.01 for v in values] for m, values in FINAL.items()}


def repeat_records(final: float, seed: int) -> list[dict]:
    """Four evaluations reaching ``final`` at the third; one failure; 1-2 epochs each."""
    return [record(0, 2.0 + seed, final - 0.1, 1), record(1, 3.0, None, 0), record(2, 4.0, final, 2),
            record(3, 1.0, final - 0.05, 1)]  # fmt: skip


def write_study(results: Path, ga_extra: dict | None = None, ga_records: list[dict] | None = None) -> None:
    """Per-repeat summaries and histories of four methods over SEEDS, and the champion's details."""
    retrained = []
    for method, finals in FINAL.items():
        (results / f"{method}_search").mkdir(parents=True, exist_ok=True)
        for repeat, (seed, final) in enumerate(zip(SEEDS, finals)):
            records = ga_records if (method == "ga" and ga_records) else repeat_records(final, seed)
            finished = [r for r in records if r["status"] == "finished"]
            best = max(finished, key=lambda r: r["val_acc"])
            summary = {
                "method": method, "budget": len(records), "evaluations": len(records),
                "failed": len(records) - len(finished), "epochs_trained": sum(len(r["epochs"]) for r in records),
                "total_train_seconds": sum(r["train_seconds"] for r in records), "wall_seconds": 50.0,
                "best_val_acc": best["val_acc"], "best_genome": {"learning_rate": 0.1, "batch_size": 32},
                "best_run_id": f"{method}{seed}best", "evaluations_to_best": best["index"] + 1,
                "train_seconds_to_best": sum(r["train_seconds"] for r in records[: best["index"] + 1]),
                "wall_seconds_to_best": best["elapsed_seconds"], "repeat": repeat, "seed": seed,
                "stage_run_id": f"{method}{seed}stage", **(ga_extra if method == "ga" and ga_extra else {}),
            }  # fmt: skip
            if method == "ga":
                generations = sorted({r["generation"] for r in records if r.get("generation") is not None})
                history = {"evaluations": records, "generations": [
                    {"generation": g, "fitness": [r["val_acc"] for r in records if r.get("generation") == g]}
                    for g in generations]}  # fmt: skip
            else:
                history = {"evaluations": records, "generations": []}
            (results / f"{method}_search" / f"seed-{seed}.json").write_text(json.dumps(summary))
            (results / f"{method}_search" / f"seed-{seed}_history.json").write_text(json.dumps(history))
            retrained.append({"method": method, "repeat": repeat, "seed": seed, "genome": summary["best_genome"],
                              "val_acc": final, "test_acc": TEST[method][repeat], "run_id": f"{method}{seed}champ"})  # fmt: skip
    champion = max(retrained, key=lambda e: e["val_acc"])
    (results / "champion_details.json").write_text(json.dumps({
        "champion": {**champion, "registered_model": "m", "registered_version": "1"}, "retrained": retrained,
        "epochs": 1, "train_size": 400, "test_size": 100}))  # fmt: skip


class Seeds:
    """The part of the study config the report reads."""

    def repeat_seeds(self) -> list[int]:
        return list(SEEDS)


METHODS = ["ga", "grid", "random", "tpe"]


def report_of(tmp_path: Path, **kwargs) -> tuple[Path, str]:
    results = tmp_path / "results"
    write_study(results, **kwargs)
    build_report(results, Seeds(), METHODS, params_text="seed: 1\n", commit="abc123",
                 data_summary={"files": {"train.pt": "f00d"}}, ui_runs_url="http://ui/#/experiments/1/runs")  # fmt: skip
    return results, (results / "report.md").read_text()


def holm(p_values: list[float]) -> list[float]:
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return list(adjusted)


def test_the_answer_comes_first_and_its_statistics_match_scipy(tmp_path):
    results, markdown = report_of(tmp_path)
    first = markdown.split("\n\n")[1]  # after the title
    assert first.startswith("**Genetic algorithm** reached the best mean final validation accuracy")
    assert f"{np.mean(FINAL['ga']):.4f}" in first and "10 repeat(s)" in first
    pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1:]]
    raw = [wilcoxon(FINAL[a], FINAL[b]).pvalue for a, b in pairs]
    adjusted = dict(zip(pairs, holm(raw)))
    ga_vs_random = next(line for line in markdown.splitlines() if "Genetic algorithm beat Random search" in line)
    assert "in 10 of 10 seeds" in ga_vs_random
    assert f"p = {adjusted[('ga', 'random')]:.2g}" in ga_vs_random
    a12 = np.mean([(x > y) + 0.5 * (x == y) for x in FINAL["ga"] for y in FINAL["random"]])
    assert f"A12 = {a12:.2f}" in ga_vs_random
    grid_random = [line for line in markdown.splitlines() if "Grid search" in line and "Random search" in line
                   and "no evidence of a difference" in line]  # fmt: skip
    assert grid_random, "grid and random are level: the report must say there is no evidence of a difference"
    # Bootstrap CI of the GA's mean, as scipy computes it.
    ci = bootstrap((np.array(FINAL["ga"]),), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert f"95% CI {ci.low:.4f}-{ci.high:.4f}" in first
    metrics = strict_json((results / "report.json").read_text())
    assert metrics["ga_best_val_acc_mean"] == pytest.approx(np.mean(FINAL["ga"]))
    assert metrics["tpe_test_acc_mean"] == pytest.approx(np.mean(TEST["tpe"]))
    assert all(isinstance(v, float) for v in metrics.values())


def test_champion_is_chosen_by_validation_and_every_number_links_to_its_run(tmp_path):
    _, markdown = report_of(tmp_path)
    assert "chosen by validation accuracy after retraining (never by test accuracy)" in markdown
    assert "Genetic algorithm's best of seed 4" in markdown and "retrained for 1 epoch on" in markdown
    assert "[ga4stage](http://ui/#/experiments/1/runs/ga4stage)" in markdown
    assert "[tpe6cham](http://ui/#/experiments/1/runs/tpe6champ)" in markdown
    assert "Git commit: abc123" in markdown and "train.pt: sha256 f00d" in markdown and "seed: 1" in markdown


def test_equal_budget_rows_and_curve_data(tmp_path):
    results, markdown = report_of(tmp_path)
    # Every repeat spends 4 evaluations and 4 epochs: at equal budgets each method's mean final best.
    budget_lines = [line for line in markdown.splitlines() if line.startswith(("| 4 evaluations", "| 4 training epochs",
                                                                                "| 40 s of wall time"))]  # fmt: skip
    assert len(budget_lines) == 3
    for line in budget_lines:
        assert f"{np.mean(FINAL['tpe']):.4f}" in line and f"{np.mean(FINAL['grid']):.4f}" in line
    curve = pd.read_csv(results / "curves" / "best_so_far_by_evaluations.csv")
    assert list(curve.columns) == ["evaluations", *METHODS]
    assert list(curve["evaluations"]) == [1, 2, 3, 4]
    assert curve["ga"][0] == pytest.approx(np.median(FINAL["ga"]) - 0.1)  # first evaluation: final - 0.1
    assert curve["ga"][3] == pytest.approx(np.median(FINAL["ga"]))


def test_the_html_page_is_self_contained(tmp_path):
    results, _ = report_of(tmp_path)
    page = (results / "report.html").read_text()
    sources = re.findall(r"""src=["']([^"']+)""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in ("best_so_far_vs_evaluations.png", "best_so_far_vs_epochs.png", "best_so_far_vs_time.png"):
        assert (results / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<a href="http://ui/#/experiments/1/runs/ga4stage">' in page


def test_time_section_and_ga_notes(tmp_path):
    ga_extra = {"operators": {"selection": "tournament", "weights": "merge"},
                "phase_reasons": ["phase 0: its share spent", "stagnation"], "rejected": 2}  # fmt: skip
    _, markdown = report_of(tmp_path, ga_extra=ga_extra, ga_records=GA_RECORDS)
    assert "## Fitness-evaluation time" in markdown and "by the merge rule" in markdown
    assert "| Genetic algorithm: merge" in markdown
    assert "GA phases: phase 0: its share spent; stagnation" in markdown
    assert "20 candidate(s) rejected" in markdown  # 2 per repeat, 10 repeats
    plain, plain_md = report_of(tmp_path / "plain")
    assert "The GA trained every child from scratch" in plain_md and "GA phases" not in plain_md
    assert "rejected" not in plain_md
