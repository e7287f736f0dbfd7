"""The report on small synthetic studies (no training): a classification study (validation accuracy,
higher is better) and a regression one (validation MAE, lower is better), checked against scipy."""

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

from pipeline.report.build import Repeat, best_so_far, build_report, evaluation_time_groups, generation_scores
from pipeline.task import task_of


def record(index: int, seconds: float, score: float | None, epochs: int, init: str | None = None,
           generation: int | None = None, maximize: bool = True) -> dict:  # fmt: skip
    """One evaluation record shaped like <method>_search_history.json's; score None means it failed."""
    rec = {
        "index": index,
        "generation": generation,
        "genome": {"learning_rate": 0.1, "batch_size": 32},
        "status": "finished" if score is not None else "failed",
        "val_score": score,
        "maximize": maximize,
        "train_seconds": seconds,
        "elapsed_seconds": 10.0 * (index + 1),
        "epochs": [{"val_score": score or 0.0}] * epochs,
    }
    if init is not None:
        rec["init"] = init
    return rec


def legacy(rec: dict) -> dict:
    """A classification record as written before the regression task: the score under ``val_acc``."""
    old = {k: v for k, v in rec.items() if k not in ("val_score", "maximize")}
    return old | {"val_acc": rec["val_score"]}


# GA: generation 0 from scratch, generation 1 merged from parents (one merged child failed).
GA_RECORDS = [
    record(0, 10.0, 0.5, 3, "scratch", 0),
    record(1, 20.0, 0.6, 3, "scratch", 0),
    record(2, 30.0, 0.7, 3, "scratch", 0),
    record(3, 2.0, 0.8, 1, "merge", 1),
    record(4, 4.0, None, 0, "merge", 1),
    record(5, 12.0, 0.75, 2, "merge", 1),
]
# Grid: old records, without "init" (scratch) and with "val_acc"; one failure that still cost 20 s.
GRID_RECORDS = [legacy(r) for r in (record(0, 5.0, 0.4, 2), record(1, 5.0, 0.55, 2), record(2, 8.0, 0.65, 2),
                                    record(3, 20.0, None, 1))]  # fmt: skip
# Random: two evaluations only, so no skewness (NaN in the table, null in report.json).
RANDOM_RECORDS = [record(0, 3.0, 0.3, 1, "scratch"), record(1, 9.0, 0.45, 2, "scratch")]


def histories_of(ga=GA_RECORDS, grid=GRID_RECORDS, random=RANDOM_RECORDS) -> dict:
    ga_fitness = [[r["val_score"] for r in ga if r["generation"] == g] for g in sorted({r["generation"] for r in ga})]
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


@pytest.mark.slow
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
CLASSIFICATION_DATA = {"files": {"train.pt": "f00d"}}
# Final best validation MAE per seed (lower is better): TPE lowest, below the GA in 8 of 10 seeds and
# below grid and random in all; grid and random level with each other, both far above.
FINAL_MAE = {"ga": [45.0, 44.2, 46.1, 44.8, 45.5, 44.0, 45.9, 44.7, 45.2, 46.0],
             "grid": [50.3, 49.1, 51.0, 50.6, 49.8, 50.2, 51.4, 49.5, 50.9, 50.0],
             "random": [49.0, 50.5, 50.1, 49.4, 51.2, 49.9, 50.4, 50.8, 49.6, 51.1],
             "tpe": [42.1, 45.0, 41.5, 42.8, 46.3, 43.3, 42.0, 42.6, 41.7, 42.4]}  # fmt: skip
TEST_MAE = {m: [v + 1.5 for v in values] for m, values in FINAL_MAE.items()}
REGRESSION_DATA = {"task": "regression", "target_std": 77.0, "files": {"train.pt": "beef"}}


def repeat_records(final: float, seed: int, maximize: bool = True) -> list[dict]:
    """Four evaluations reaching ``final`` at the third (the others worse in the task's direction);
    one failure; 1-2 epochs each."""
    worse = -1.0 if maximize else 1.0
    return [record(0, 2.0 + seed, final + worse * 0.1, 1, maximize=maximize), record(1, 3.0, None, 0),
            record(2, 4.0, final, 2, maximize=maximize),
            record(3, 1.0, final + worse * 0.05, 1, maximize=maximize)]  # fmt: skip


def write_study(results: Path, ga_extra: dict | None = None, ga_records: list[dict] | None = None,
                final: dict = FINAL, test: dict = TEST, maximize: bool = True,
                legacy_methods: tuple[str, ...] = ("grid",)) -> None:  # fmt: skip
    """Per-repeat summaries and histories of four methods over SEEDS, and the champion's details, with
    the keys of accuracy (``maximize``) or of MAE. The histories of ``legacy_methods`` are written as
    before the regression task (``val_acc``, no ``val_score``)."""
    metric = "acc" if maximize else "mae"
    fitness = (lambda score: score) if maximize else (lambda score: -score)  # what the GA's generations hold
    retrained = []
    for method, finals in final.items():
        (results / f"{method}_search").mkdir(parents=True, exist_ok=True)
        for repeat, (seed, best_score) in enumerate(zip(SEEDS, finals)):
            records = ga_records if (method == "ga" and ga_records) else repeat_records(best_score, seed, maximize)
            finished = [r for r in records if r["status"] == "finished"]
            best = max(finished, key=lambda r: fitness(r["val_score"]))
            summary = {
                "method": method, "budget": len(records), "evaluations": len(records),
                "failed": len(records) - len(finished), "epochs_trained": sum(len(r["epochs"]) for r in records),
                "total_train_seconds": sum(r["train_seconds"] for r in records), "wall_seconds": 50.0,
                f"best_val_{metric}": best["val_score"], "best_genome": {"learning_rate": 0.1, "batch_size": 32},
                "best_run_id": f"{method}{seed}best", "evaluations_to_best": best["index"] + 1,
                "train_seconds_to_best": sum(r["train_seconds"] for r in records[: best["index"] + 1]),
                "wall_seconds_to_best": best["elapsed_seconds"], "repeat": repeat, "seed": seed,
                "stage_run_id": f"{method}{seed}stage", **(ga_extra if method == "ga" and ga_extra else {}),
            }  # fmt: skip
            if method == "ga":
                generations = sorted({r["generation"] for r in records if r.get("generation") is not None})
                history = {"evaluations": records, "generations": [
                    {"generation": g, "fitness": [None if r["val_score"] is None else fitness(r["val_score"])
                                                  for r in records if r.get("generation") == g]}
                    for g in generations]}  # fmt: skip
            else:
                history = {"evaluations": records, "generations": []}
            if method in legacy_methods:
                history["evaluations"] = [legacy(r) for r in history["evaluations"]]
            (results / f"{method}_search" / f"seed-{seed}.json").write_text(json.dumps(summary))
            (results / f"{method}_search" / f"seed-{seed}_history.json").write_text(json.dumps(history))
            retrained.append({"method": method, "repeat": repeat, "seed": seed, "genome": summary["best_genome"],
                              f"val_{metric}": best_score, f"test_{metric}": test[method][repeat],
                              "run_id": f"{method}{seed}champ"})  # fmt: skip
    champion = max(retrained, key=lambda e: fitness(e[f"val_{metric}"]))
    (results / "champion_details.json").write_text(json.dumps({
        "champion": {**champion, "registered_model": "m", "registered_version": "1"}, "retrained": retrained,
        "epochs": 1, "train_size": 400, "test_size": 100, "chosen_by": f"val_{metric}"}))  # fmt: skip


class Seeds:
    """The part of the study config the report reads."""

    def repeat_seeds(self) -> list[int]:
        return list(SEEDS)


METHODS = ["ga", "grid", "random", "tpe"]


def report_of(tmp_path: Path, data_summary: dict = CLASSIFICATION_DATA, **kwargs) -> tuple[Path, str]:
    results = tmp_path / "results"
    write_study(results, **kwargs)
    build_report(results, Seeds(), METHODS, params_text="seed: 1\n", commit="abc123",
                 data_summary=data_summary, ui_runs_url="http://ui/#/experiments/1/runs")  # fmt: skip
    return results, (results / "report.md").read_text()


def regression_report_of(tmp_path: Path) -> tuple[Path, str]:
    return report_of(tmp_path, data_summary=REGRESSION_DATA, final=FINAL_MAE, test=TEST_MAE, maximize=False,
                     legacy_methods=())  # fmt: skip


def holm(p_values: list[float]) -> list[float]:
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return list(adjusted)


@pytest.mark.slow
def test_the_answer_comes_first_and_its_statistics_match_scipy(tmp_path):
    results, markdown = report_of(tmp_path)
    first = markdown.split("\n\n")[1]  # after the title
    # The GA is ahead of every other method in every seed: a winner, named in bold.
    assert first.startswith("**Genetic algorithm** is the best method here: mean final validation accuracy")
    assert f"{np.mean(FINAL['ga']):.4f}" in first and "10 repeat(s)" in first
    pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1 :]]
    raw = [wilcoxon(FINAL[a], FINAL[b]).pvalue for a, b in pairs]
    adjusted = dict(zip(pairs, holm(raw)))
    ga_vs_random = next(line for line in markdown.splitlines() if "Genetic algorithm beat Random search" in line)
    assert "in 10 of 10 seeds" in ga_vs_random
    assert f"p = {adjusted[('ga', 'random')]:.2g}" in ga_vs_random
    a12 = np.mean([(x > y) + 0.5 * (x == y) for x in FINAL["ga"] for y in FINAL["random"]])
    assert f"A12 = {a12:.2f}" in ga_vs_random
    # Pairs that do not differ stay in the matrix (rows beat columns), not in a sentence of their own.
    assert not any("Grid search" in line and "Random search" in line and "no evidence" in line
                   for line in markdown.splitlines())  # fmt: skip
    grid_row = next(line for line in markdown.splitlines() if line.startswith("| Grid search ") and "A12" in line)
    assert f"p = {adjusted[('grid', 'random')]:.2g}" in grid_row.split("|")[4]  # the Random search column
    # Bootstrap CI of the GA's mean, as scipy computes it.
    ci = bootstrap((np.array(FINAL["ga"]),), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert f"95% CI {ci.low:.4f}-{ci.high:.4f}" in first
    metrics = strict_json((results / "report.json").read_text())
    assert metrics["ga_best_val_acc_mean"] == pytest.approx(np.mean(FINAL["ga"]))
    assert metrics["tpe_test_acc_mean"] == pytest.approx(np.mean(TEST["tpe"]))
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.slow
def test_champion_is_chosen_by_validation_and_every_number_links_to_its_run(tmp_path):
    _, markdown = report_of(tmp_path)
    assert "chosen by validation accuracy after retraining (never by test accuracy)" in markdown
    assert "Genetic algorithm's best of seed 4" in markdown and "retrained for 1 epoch on" in markdown
    assert "[ga4stage](http://ui/#/experiments/1/runs/ga4stage)" in markdown
    assert "[tpe6cham](http://ui/#/experiments/1/runs/tpe6champ)" in markdown
    assert "Git commit: abc123" in markdown and "train.pt: sha256 f00d" in markdown and "seed: 1" in markdown


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_html_page_is_self_contained(tmp_path):
    results, _ = report_of(tmp_path)
    page = (results / "report.html").read_text()
    sources = re.findall(r"""src=["']([^"']+)""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in ("best_so_far_vs_evaluations.png", "best_so_far_vs_epochs.png", "best_so_far_vs_time.png"):
        assert (results / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<a href="http://ui/#/experiments/1/runs/ga4stage">' in page


@pytest.mark.slow
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


# --- the regression study: validation MAE, lower is better ---------------------------------------


def test_best_so_far_runs_in_the_tasks_direction_and_reads_legacy_records():
    scores = [None, 5.0, 7.0, 4.0, None, 4.5]
    records = [record(i, 1.0, s, 1) for i, s in enumerate(scores)]
    regression, classification = task_of(REGRESSION_DATA), task_of(CLASSIFICATION_DATA)
    np.testing.assert_array_equal(best_so_far(records, regression), [np.nan, 5.0, 5.0, 4.0, 4.0, 4.0])
    np.testing.assert_array_equal(best_so_far(records, classification), [np.nan, 5.0, 7.0, 7.0, 7.0, 7.0])
    old = [legacy(r) for r in records]
    assert "val_score" not in old[1] and old[1]["val_acc"] == 5.0
    np.testing.assert_array_equal(best_so_far(old, classification), best_so_far(records, classification))


def test_ga_generations_are_shown_as_the_metric_not_the_fitness():
    history = {"evaluations": [], "generations": [{"generation": 0, "fitness": [-45.0, None, -41.5]},
                                                  {"generation": 1, "fitness": [-40.0]}]}  # fmt: skip
    repeat = Repeat({"seed": 1}, history)
    assert generation_scores([repeat], task_of(REGRESSION_DATA)) == {0: [45.0, 41.5], 1: [40.0]}
    assert generation_scores([repeat], task_of(CLASSIFICATION_DATA)) == {0: [-45.0, -41.5], 1: [-40.0]}


def test_evaluation_time_table_takes_the_lowest_mae_as_best():
    regression = [record(i, 1.0 + i, s, 1, maximize=False) for i, s in enumerate([50.0, None, 42.0, 47.0])]
    table = evaluation_time_groups(histories_of(ga=GA_RECORDS, random=regression), task_of(REGRESSION_DATA))
    random = row(table, "Random search")
    assert random["best val MAE"] == pytest.approx(42.0) and random["mean val MAE"] == pytest.approx(139.0 / 3)
    assert not any("acc" in column for column in table.columns)


@pytest.mark.slow
def test_regression_answer_names_the_lowest_mean_mae_and_its_statistics_match_scipy(tmp_path):
    results, markdown = regression_report_of(tmp_path)
    leader = min(FINAL_MAE, key=lambda m: np.mean(FINAL_MAE[m]))
    assert leader == "tpe"  # the study is built so; the highest means (grid, random) must not lead
    first = markdown.split("\n\n")[1]  # after the title
    from pipeline.report.statistics import bayesian_signed_rank

    # Lower MAE is better: TPE's errors are lower than every other method's by far more than the ROPE.
    verdicts = [bayesian_signed_rank(FINAL_MAE["tpe"], FINAL_MAE[m], 0.005, higher_is_better=False)
                for m in ("ga", "grid", "random")]  # fmt: skip
    assert [v["verdict"] for v in verdicts] == ["better"] * 3
    assert first.startswith("**TPE (Bayesian optimisation)** is the best method here: mean final validation MAE ")
    assert f"probability at least {min(v['p_better'] for v in verdicts):.2f}" in first
    assert f"{np.mean(FINAL_MAE['tpe']):.4f}" in first and "10 repeat(s)" in first
    ci = bootstrap((np.array(FINAL_MAE["tpe"]),), np.mean, confidence_level=0.95, n_resamples=9999,
                   method="percentile", rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert f"95% CI {ci.low:.4f}-{ci.high:.4f}" in first
    assert "accuracy" not in markdown and "MAE" in first

    pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1 :]]
    adjusted = dict(zip(pairs, holm([wilcoxon(FINAL_MAE[a], FINAL_MAE[b]).pvalue for a, b in pairs])))
    tpe, ga = np.array(FINAL_MAE["tpe"]), np.array(FINAL_MAE["ga"])
    # scipy's one-sided tests on the paired differences: TPE's errors are the lower ones.
    assert wilcoxon(tpe - ga, alternative="less").pvalue < 0.05 < wilcoxon(tpe - ga, alternative="greater").pvalue
    wins = int((tpe < ga).sum())
    a12 = np.mean([(x < y) + 0.5 * (x == y) for x in tpe for y in ga])  # > 0.5: the first is better (lower)
    assert wins == 8 and a12 > 0.5
    tpe_row = next(
        line for line in markdown.splitlines() if line.startswith("| TPE (Bayesian optimisation) ") and "A12" in line
    )  # the matrix's row
    tpe_vs_ga = tpe_row.split("|")[2]  # the Genetic algorithm column
    assert (
        tpe_vs_ga.strip() == f"{wins}/10, {np.median(ga - tpe):+.3g}, p = {adjusted[('ga', 'tpe')]:.2g}, A12 {a12:.2f}"
    )
    assert "Genetic algorithm beat Grid search in 10 of 10 seeds" in markdown  # significant: a sentence

    metrics = strict_json((results / "report.json").read_text())
    assert metrics["tpe_best_val_mae_mean"] == pytest.approx(np.mean(FINAL_MAE["tpe"]))
    assert metrics["ga_test_mae_mean"] == pytest.approx(np.mean(TEST_MAE["ga"]))
    assert not any("acc" in key for key in metrics)


@pytest.mark.slow
def test_regression_champion_is_the_lowest_validation_mae_in_words_of_mae(tmp_path):
    results, markdown = regression_report_of(tmp_path)
    method, repeat = min(((m, i) for m in FINAL_MAE for i in range(len(SEEDS))),
                         key=lambda pair: FINAL_MAE[pair[0]][pair[1]])  # fmt: skip
    assert (method, SEEDS[repeat]) == ("tpe", 3)
    assert "chosen by validation MAE after retraining (never by test MAE)" in markdown
    assert "TPE (Bayesian optimisation)'s best of seed 3" in markdown
    assert f"validation MAE {FINAL_MAE['tpe'][repeat]:.4f}, test MAE **{TEST_MAE['tpe'][repeat]:.4f}**" in markdown
    assert "on 100 held-out examples" in markdown
    header_lines = [line for line in markdown.splitlines() if line.startswith("| method")]
    headers = {cell.strip() for line in header_lines for cell in line.split("|")}
    assert {"final best val MAE, mean (95% CI)", "best val MAE", "test MAE (retrained)"} <= headers
    metrics = strict_json((results / "report.json").read_text())
    assert metrics["champion_test_mae"] == pytest.approx(TEST_MAE["tpe"][repeat])


@pytest.mark.slow
def test_regression_best_so_far_curves_never_rise(tmp_path):
    results, markdown = regression_report_of(tmp_path)
    for name in ("best_so_far_by_evaluations.csv", "best_so_far_by_epochs.csv", "best_so_far_by_time.csv"):
        curve = pd.read_csv(results / "curves" / name)
        for method in METHODS:
            values = curve[method].dropna().to_numpy()
            assert values.size and np.all(np.diff(values) <= 0), (name, method, values)
    by_evaluations = pd.read_csv(results / "curves" / "best_so_far_by_evaluations.csv")
    assert by_evaluations["tpe"][0] == pytest.approx(np.median(FINAL_MAE["tpe"]) + 0.1)  # first: final + 0.1
    assert by_evaluations["tpe"][3] == pytest.approx(np.median(FINAL_MAE["tpe"]))
    budget_lines = [line for line in markdown.splitlines() if line.startswith(("| 4 evaluations", "| 4 training epochs",
                                                                                "| 40 s of wall time"))]  # fmt: skip
    assert len(budget_lines) == 3
    for line in budget_lines:
        assert all(f"{np.mean(FINAL_MAE[m]):.4f}" in line for m in METHODS)


@pytest.mark.slow
def test_the_sensitivity_section_appears_when_the_stage_ran_enabled(tmp_path):
    from pipeline.report.sensitivity_table import plot_sensitivity

    _, without = report_of(tmp_path / "off")
    assert "GA sensitivity" not in without
    results = tmp_path / "on" / "results"
    rows = [{"setting": "mutation_rate", "value": v, "folder": f"mutation_rate-{v:g}", "final_best": [m, m],
             "seeds": [1, 2], "evaluations": 6.0, "generations": 2.0, "n": 2, "mean": m, "std": 0.01,
             "ci_low": m - 0.01, "ci_high": m + 0.01} for v, m in ((0.1, 0.61), (0.5, 0.58))]  # fmt: skip
    (results / "sensitivity").mkdir(parents=True)
    (results / "sensitivity" / "summary.json").write_text(json.dumps({"enabled": True, "repeats": 2, "rows": rows}))
    plot_sensitivity(rows, "accuracy", results / "sensitivity" / "sensitivity.png")
    _, text = report_of(tmp_path / "on")
    section = text.split("## GA sensitivity to its own settings")[1].split("\n## ")[0]
    assert "| mutation rate | 0.1 " in section and "0.6100 (0.6000-0.6200)" in section and "0.5800" in section
    assert "sensitivity.png" in section
    page = (results / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(re.findall(r"<img ", page))  # the plot embedded too


def test_the_method_table_counts_evaluations_stopped_early_only_when_fidelity_ran():
    from pipeline.report.build import Repeat, method_table
    from pipeline.task import CLASSIFICATION

    def summary(stopped=None):
        base = {"seed": 1, "evaluations": 6, "failed": 0, "epochs_trained": 9, "total_train_seconds": 3.0}
        return base if stopped is None else base | {"stopped_early": stopped}

    stats = {"n": 0, "std": float("nan")}
    plain = {"ga": [Repeat(summary(), {}), Repeat(summary(), {})]}
    assert "stopped early per repeat" not in method_table(plain, {"ga": stats}, {"ga": stats}, CLASSIFICATION)
    mixed = {"ga": [Repeat(summary(4), {}), Repeat(summary(2), {})], "random": [Repeat(summary(), {})]}
    table = method_table(mixed, {"ga": stats, "random": stats}, {"ga": stats, "random": stats}, CLASSIFICATION)
    assert list(table["stopped early per repeat"]) == ["3.0", "0.0"]


@pytest.mark.slow
def test_the_bayesian_verdict_says_equivalent_for_level_methods_and_better_for_a_clear_gap(tmp_path):
    """The report quotes the Bayesian probabilities of each pair (grid and random lie close in FINAL); the
    GA, far above random in every seed, is better with certainty."""
    from pipeline.report.statistics import bayesian_signed_rank

    _, markdown = report_of(tmp_path)
    assert "Bayesian signed-rank test (baycomp)" in markdown
    level = bayesian_signed_rank(FINAL["grid"], FINAL["random"], 0.005, nsamples=20_000)
    if level["verdict"] == "undecided":
        assert "Grid search vs Random search" in next(x for x in markdown.splitlines() if "Undecided at" in x)
    else:
        assert f"P(equivalent within 0.005 accuracy) {level['p_equivalent']:.2f}" in markdown
    clear = next(x for x in markdown.splitlines() if x.startswith("- Genetic algorithm is better than Random search"))
    assert "with probability 1.00" in clear


@pytest.mark.slow
def test_two_equal_methods_are_reported_tied_not_crowned(tmp_path):
    """A fitness that makes two methods equal in every seed: the headline says they are practically
    equivalent and names no winner."""
    equal = {"ga": FINAL["tpe"], "grid": FINAL["grid"], "random": FINAL["random"], "tpe": FINAL["tpe"]}
    _, markdown = report_of(tmp_path, final=equal, test=TEST)
    first = markdown.split("\n\n")[1]
    assert first.startswith("No method is decidedly best at this budget:")
    assert "**" not in first
    assert "practically equivalent (within 0.005 accuracy) to" in first
    assert (
        "Genetic algorithm is practically equivalent to TPE (Bayesian optimisation) with probability 1.00" in markdown
    )
