"""The suite report: how the methods compare across benchmark tasks, as HPO papers report it.

Per task: each method's normalised regret (mean and 95% t-interval over seeds) at the report's
evaluation counts, and regret curves against evaluations and simulated training time. Across
tasks: each method's average rank (1 = lowest mean final regret on a task), a Friedman test of
the ranks and a critical-difference diagram (Nemenyi), and per pair of methods the Bayesian
signed-rank test over tasks with a region of practical equivalence (``suite.rope``), in one sentence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from pipeline.benchmarks.config import SuiteConfig  # noqa: E402
from pipeline.benchmarks.regret import at_evaluations, at_times  # noqa: E402
from pipeline.benchmarks.suite import TUNED_GA, suite_methods, task_slug  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.report.content import Block, Bullets, Code, Heading, Image, Paragraph, Table  # noqa: E402
from pipeline.report.content import to_html, to_markdown  # noqa: E402
from pipeline.report.statistics import bayesian_signed_rank, holm, verdict_sentence  # noqa: E402

LABELS = {"ga": "GA", TUNED_GA: "GA (tuned)", "grid": "Grid", "random": "Random", "tpe": "TPE"}
ALPHA = 0.05


def label(method: str) -> str:
    return LABELS.get(method, method)


def load_cells(results_dir: Path, methods: list[str], tasks: list[str]) -> dict[str, dict[str, list[dict]]]:
    """``{method: {task: [cell, ...]}}`` from the search stages' files, cells in seed order."""
    loaded: dict[str, dict[str, list[dict]]] = {}
    for method in methods:
        loaded[method] = {}
        for task in tasks:
            payload = json.loads((results_dir / f"{method}_suite" / f"{task_slug(task)}.json").read_text())
            loaded[method][task] = sorted(payload["cells"], key=lambda c: c["seed"])
    return loaded


def regret_at(cells: list[dict], points: list[int]) -> np.ndarray:
    """[seeds, points] normalised regret of each seed's search after each number of evaluations."""
    return np.array([at_evaluations(np.asarray(c["regret"]), points) for c in cells])


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (NaN half-width for one value)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def average_ranks(matrix: np.ndarray) -> np.ndarray:
    """[methods] mean rank over tasks of ``matrix[task, method]`` (lower regret: rank 1; ties share)."""
    return stats.rankdata(matrix, axis=1).mean(axis=0)


def friedman(matrix: np.ndarray) -> dict[str, float]:
    """Friedman's test that all methods rank alike over the tasks (rows)."""
    if matrix.shape[1] < 3 or matrix.shape[0] < 2:
        return {"statistic": math.nan, "p_value": math.nan}
    result = stats.friedmanchisquare(*matrix.T)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def nemenyi_cd(methods: int, tasks: int, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference of average ranks (Demsar 2006): q_alpha sqrt(k(k+1) / 6N),
    q_alpha the studentised range quantile over sqrt(2)."""
    q = stats.studentized_range.ppf(1 - alpha, methods, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(methods * (methods + 1) / (6 * tasks)))


def plot_cd(ranks: dict[str, float], cd: float, out: Path) -> None:
    """A critical-difference diagram: methods on the average-rank axis (best at the left), joined by
    a bar where their ranks differ by less than the critical difference."""
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    k = len(ordered)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * k))
    ax.set_xlim(1, k)
    ax.set_ylim(-(k + 1), 1.5)
    ax.hlines(0, 1, k, color="black")
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.15, color="black")
        ax.text(r, 0.3, str(r), ha="center")
    ax.hlines(1.1, 1, 1 + cd, color="red", linewidth=2)
    ax.text(1 + cd / 2, 1.25, f"CD = {cd:.2f}", ha="center", color="red", fontsize=8)
    for i, (method, rank) in enumerate(ordered):
        y = -(i + 1) * 0.8
        ax.vlines(rank, y, 0, color="gray", linewidth=0.8)
        ax.text(rank + 0.03, y, f"{label(method)} ({rank:.2f})", va="center", fontsize=9)
    # Cliques: maximal runs of methods whose ranks lie within the critical difference.
    level = 0
    for i in range(k):
        j = max(j for j in range(i, k) if ordered[j][1] - ordered[i][1] < cd)
        if j > i and (i == 0 or ordered[j][1] - ordered[i - 1][1] >= cd):
            level += 1
            ax.hlines(-0.25 * level, ordered[i][1], ordered[j][1], color="black", linewidth=3)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_task_curves(cells: dict[str, dict[str, list[dict]]], tasks: list[str], axis: str, out: Path) -> None:
    """One panel per task: mean normalised regret over seeds (log scale) against evaluations or
    simulated training seconds, each method's curve ending where its searches ended."""
    cols = min(5, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for method, by_task in cells.items():
            task_cells = by_task[task]
            if axis == "evaluations":
                used = min(c["evaluations"] for c in task_cells)
                x = np.arange(1, used + 1)
                y = np.mean([np.asarray(c["regret"][:used]) for c in task_cells], axis=0)
            else:
                end = min(float(np.sum(c["seconds"])) for c in task_cells)
                start = max(float(c["seconds"][0]) for c in task_cells)
                x = np.geomspace(max(start, 1e-3), max(end, start * 1.01, 1e-3), 60)
                y = np.nanmean([at_times(np.asarray(c["regret"]), np.asarray(c["seconds"]), x) for c in task_cells],
                               axis=0)  # fmt: skip
            ax.plot(x, np.maximum(y, 1e-6), label=label(method))
        ax.set_yscale("log")
        if axis == "time":
            ax.set_xscale("log")
        ax.set_title(task, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("evaluations" if axis == "evaluations" else "simulated training seconds (log)")
    fig.supylabel("normalised regret (mean over seeds, log)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _fmt_ci(mean: float, low: float, high: float) -> str:
    if not np.isfinite(low):
        return f"{mean:.4f}"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def build_suite_report(config: SuiteConfig, results_dir: Path, params_text: str = "", commit: str | None = None,
                       ui_runs_url: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``suite_report.md``/``.html``, its plots and ``suite_report.json`` under ``results_dir``;
    returns the report's numbers."""
    methods, tasks = suite_methods(config), config.tasks
    cells = load_cells(results_dir, methods, tasks)
    points = sorted({min(p, config.budget.evaluations) for p in config.suite.report_at})
    final = points[-1]
    plots = results_dir / "suite_plots"
    plots.mkdir(parents=True, exist_ok=True)
    seeds = len(config.repeat_seeds())

    # [task, method] mean regret over seeds at each report point
    means = {p: np.array([[regret_at(cells[m][t], [p])[:, 0].mean() for m in methods] for t in tasks]) for p in points}
    ranks_at = {p: average_ranks(means[p]) for p in points}
    final_matrix = means[final]
    ranks = dict(zip(methods, ranks_at[final]))
    test = friedman(final_matrix)
    cd = nemenyi_cd(len(methods), len(tasks))
    plot_cd(ranks, cd, plots / "critical_difference.png")
    for axis in ("evaluations", "time"):
        plot_task_curves(cells, tasks, axis, plots / f"regret_by_{axis}.png")

    rope = config.suite.rope
    verdicts = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            result = bayesian_signed_rank(final_matrix[:, i], final_matrix[:, methods.index(b)], rope,
                                          higher_is_better=False)  # fmt: skip
            verdicts.append({"first": a, "second": b, **result,
                             "sentence": verdict_sentence(label(a), label(b), result, "regret")})  # fmt: skip

    leader = min(ranks, key=ranks.get)
    first_sentence = _headline(leader, ranks, test, cd, verdicts, len(tasks), seeds, final)
    rank_table = pd.DataFrame({"method": [label(m) for m in methods],
                               **{f"rank @{p}": [f"{r:.2f}" for r in ranks_at[p]] for p in points},
                               f"mean regret @{final}": [f"{v:.4f}" for v in final_matrix.mean(axis=0)]})  # fmt: skip
    finals = {m: {t: regret_at(cells[m][t], [final])[:, 0] for t in tasks} for m in methods}
    per_task_rows = [{"task": task, **{label(m): _fmt_ci(*mean_ci(finals[m][task])) for m in methods}}
                     for task in tasks]  # fmt: skip
    ga_lines = _ga_where(methods, tasks, finals)
    blocks: list[Block] = [
        Heading(f"Benchmark suite: {' vs '.join(label(m) for m in methods)}", 1),
        Paragraph(first_sentence),
        Heading("Average ranks across tasks"),
        Paragraph(f"Rank 1 = lowest mean normalised regret on a task (mean over {seeds} seeds), averaged over "
                  f"{len(tasks)} tasks, after {', '.join(map(str, points))} evaluations. Friedman test at {final}: "
                  f"chi2 = {test['statistic']:.2f}, p = {test['p_value']:.3g}. Nemenyi critical difference "
                  f"(alpha {ALPHA}): {cd:.2f}; methods joined by a bar do not differ significantly."),
        Table(rank_table),
        Image(plots / "critical_difference.png", "Critical-difference diagram"),
        Heading("Pairwise Bayesian verdicts"),
        Paragraph(f"Bayesian signed-rank test (baycomp) over the {len(tasks)} tasks' mean final regret, region of "
                  f"practical equivalence {rope:g} normalised regret (`suite.rope`); a verdict is stated at "
                  "probability 0.95, else undecided."),
        Bullets(tuple(v["sentence"] for v in verdicts)),
        Heading("Where the GA wins or loses"),
        Paragraph(f"Per task, the GA's final regret over the {seeds} seeds against the best other method's (the "
                  f"tuned GA aside), a win or a loss only where a Mann-Whitney U test finds a difference at "
                  f"alpha {ALPHA} after Holm's correction over the {len(tasks)} tasks."),
        Bullets(tuple(ga_lines) or ("No GA, or no other method to compare it with.",)),
        Heading(f"Final regret per task (after {final} evaluations)"),
        Paragraph("Normalised regret of the incumbent valued at its mean over the table's stored runs (0: the "
                  "table's best configuration, 1: its worst; HPOLib on log10 of the loss); mean [95% t-interval] "
                  "over seeds."),
        Table(pd.DataFrame(per_task_rows)),
        Image(plots / "regret_by_evaluations.png", "Regret against evaluations"),
        Image(plots / "regret_by_time.png", "Regret against simulated training time"),
        Heading("Reproduce"),
        Bullets((f"Git commit: {commit or 'unknown'}",
                 f"MLflow: {ui_runs_url or 'make ui'} (one run per task, method and seed)",
                 "Rebuild: `make benchmarks` (or `cd studies/benchmarks && dvc repro`) with these params:")),  # fmt: skip
        Code(params_text),
    ]  # fmt: skip
    if TUNED_GA in methods:
        blocks[-4:-4] = _sensitivity_blocks(results_dir)
    (results_dir / "suite_report.md").write_text(to_markdown(blocks, results_dir))
    (results_dir / "suite_report.html").write_text(to_html(blocks, "Benchmark suite"))
    summary = {
        "headline": first_sentence, "leader": leader, "average_rank": {m: float(r) for m, r in ranks.items()},
        "average_rank_at": {str(p): dict(zip(methods, map(float, ranks_at[p]))) for p in points},
        "friedman": test, "critical_difference": cd, "verdicts": verdicts, "tasks": tasks, "seeds": seeds,
        "mean_final_regret": dict(zip(methods, map(float, final_matrix.mean(axis=0)))),
    }  # fmt: skip
    write_json(results_dir / "suite_report.json", summary)
    return summary


def _headline(leader: str, ranks: dict[str, float], test: dict[str, float], cd: float, verdicts: list[dict],
              tasks: int, seeds: int, final: int) -> str:  # fmt: skip
    """The first sentence: the best-ranked method and how sure; a winner only when the evidence says so."""
    ordered = sorted(ranks, key=ranks.get)
    runner_up = ordered[1] if len(ordered) > 1 else None
    text = (f"Over {tasks} tasks x {seeds} seeds at {final} evaluations, **{label(leader)}** has the best average "
            f"rank ({ranks[leader]:.2f}")  # fmt: skip
    if runner_up is None:
        return text + ")."
    text += f"; next {label(runner_up)} at {ranks[runner_up]:.2f}). "
    pair = next(v for v in verdicts if {v["first"], v["second"]} == {leader, runner_up})
    verdict = pair["verdict"] if pair["first"] == leader else {"better": "worse", "worse": "better"}.get(
        pair["verdict"], pair["verdict"])  # fmt: skip
    p_lead = pair["p_better"] if pair["first"] == leader else pair["p_worse"]
    if verdict == "better":
        text += f"It is better than {label(runner_up)} with probability {p_lead:.2f} (Bayesian signed-rank test)"
    elif verdict == "equivalent":
        text += (f"It and {label(runner_up)} are practically equivalent (within {pair['rope']:g} regret) with "
                 f"probability {pair['p_equivalent']:.2f}")  # fmt: skip
    else:
        text += (f"It is not decidedly better than {label(runner_up)} (probability {p_lead:.2f}; equivalent "
                 f"{pair['p_equivalent']:.2f}): more tasks would settle it")  # fmt: skip
    significant = ranks[runner_up] - ranks[leader] >= cd
    text += (f"; the rank gap {ranks[runner_up] - ranks[leader]:.2f} is {'beyond' if significant else 'within'} "
             f"the Nemenyi critical difference {cd:.2f} (Friedman p = {test['p_value']:.3g}).")  # fmt: skip
    return text


def _ga_where(methods: list[str], tasks: list[str], finals: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Per task: the GA against the best other method (not its tuned twin) by mean final regret,
    called a win or a loss only where a Mann-Whitney U test over the seeds says so after Holm's
    correction over the tasks; else no clear difference. ``finals[method][task]``: final regret per seed."""
    if "ga" not in methods:
        return []
    others = [m for m in methods if m not in ("ga", TUNED_GA)]
    if not others:
        return []
    rivals, p_values = [], []
    for task in tasks:
        rival = min(others, key=lambda m: finals[m][task].mean())
        ga_values, rival_values = finals["ga"][task], finals[rival][task]
        same = np.array_equal(np.sort(ga_values), np.sort(rival_values))
        p_values.append(1.0 if same else float(stats.mannwhitneyu(ga_values, rival_values).pvalue))
        rivals.append(rival)
    lines = []
    for task, rival, p in zip(tasks, rivals, holm(p_values)):
        ga_mean, rival_mean = finals["ga"][task].mean(), finals[rival][task].mean()
        if p < ALPHA:
            word = "better than" if ga_mean < rival_mean else "worse than"
        else:
            word = "no clear difference from"
        lines.append(f"{task}: GA {word} {label(rival)}, the best other method here (mean final regret "
                     f"{ga_mean:.4f} vs {rival_mean:.4f}; Mann-Whitney U over seeds, Holm p = {p:.2g})")  # fmt: skip
    return lines


def _sensitivity_blocks(results_dir: Path) -> list[Block]:
    table = json.loads((results_dir / "suite_sensitivity" / "table.json").read_text())
    frame = pd.DataFrame([{"setting": r["setting"], "value": r["value"], "mean rank": f"{r['mean_rank']:.2f}",
                           "mean final regret": f"{r['mean_final_regret']:.4f}", "chosen": "yes" if r["chosen"] else ""}
                          for r in table["variants"]])  # fmt: skip
    return [
        Heading("The tuned GA"),
        Paragraph(f"Each GA setting varied alone around `ga` on the same tasks over {len(table['seeds'])} seeds of "
                  f"their own ({table['seeds'][0]}-{table['seeds'][-1]}, none used in the comparison); the value "
                  "with the best mean rank of final regret per setting makes `ga_tuned`."),
        Table(frame),
    ]  # fmt: skip
