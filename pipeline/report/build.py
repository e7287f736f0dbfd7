"""The study's report: which method, by how much, and how sure, over every repeat; then tables,
anytime curves with bands, the GA's generations, evaluation times, and what reproduces it. Written
as Markdown (beside its plots) and as one self-contained HTML page; the curves also as DVC plot data.

Every number and word about the validation and test metric comes from the dataset's task
(:mod:`pipeline.task`): accuracy, higher is better, or MAE, lower is better; one code path for both."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import skew  # noqa: E402

from pipeline.jsonio import write_json  # noqa: E402
from pipeline.search.registry import get_method  # noqa: E402
from pipeline.space.dimensions import SearchSpace  # noqa: E402
from pipeline.study.layout import repeat_files  # noqa: E402
from pipeline.report.content import Block, Bullets, Code, Heading, Image, Paragraph, Table  # noqa: E402
from pipeline.report.content import to_html, to_markdown  # noqa: E402
from pipeline.report.sensitivity_table import load_sensitivity, sensitivity_frame  # noqa: E402
from pipeline.report.statistics import ALPHA, pairwise_comparisons, smallest_wilcoxon_p, summarise  # noqa: E402
from pipeline.report.statistics import bayesian_verdicts, format_p  # noqa: E402
from pipeline.report import search_space_views as views  # noqa: E402
from pipeline.task import CLASSIFICATION, Task, task_of  # noqa: E402


def method_label(method: str) -> str:
    """The report's name of a method (``Genetic algorithm``), from the registry."""
    return get_method(method).label


def metric_short(task: Task) -> str:
    """The metric's name in a table header: an acronym as written (``MAE``), else its short name (``acc``)."""
    return task.label if task.label.isupper() else task.metric


# What the held-out examples are, in the champion's sentence.
EXAMPLE_WORDS = {"classification": "images", "regression": "examples"}


PLOT_FILES = {
    "evaluations": "best_so_far_vs_evaluations.png",
    "epochs": "best_so_far_vs_epochs.png",
    "time": "best_so_far_vs_time.png",
    "generations": "ga_fitness_by_generation.png",
    "evaluation_time": "evaluation_time_histogram.png",
}
# The three equal budgets: axis label, DVC plot data file, and how an amount of it reads.
AXES = {
    "evaluations": ("evaluations", "best_so_far_by_evaluations.csv", "{:.0f} evaluations"),
    "epochs": ("training epochs (all individuals summed)", "best_so_far_by_epochs.csv", "{:.0f} training epochs"),
    "time": ("wall time of the search (s)", "best_so_far_by_time.csv", "{:.0f} s of wall time"),
}
CURVE_POINTS = 100  # grid points of the epochs and time axes
INIT_KINDS = ("scratch", "inherit", "merge")  # where an individual's initial weights came from
WEIGHT_RULE_SENTENCES = {
    "none": "The GA trained every child from scratch (no weight inheritance), like the other methods.",
    "inherit": "The GA started children from their parents' weights by the inherit rule; "
    "the other methods train every individual from scratch.",
    "merge": "The GA started children from their parents' weights by the merge rule; "
    "the other methods train every individual from scratch.",
}


@dataclass(frozen=True)
class Repeat:
    """One search of one method: its summary and its history (every evaluation, the GA's generations)."""

    summary: dict[str, Any]
    history: dict[str, Any]

    @property
    def seed(self) -> int:
        return self.summary["seed"]

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.history["evaluations"]


def load_results(results_dir: Path, methods: list[str], seeds: list[int]) -> tuple[dict[str, list[Repeat]], dict]:
    """Each method's repeats (in seed order) and the champion stage's details."""
    runs: dict[str, list[Repeat]] = {}
    for method in methods:
        runs[method] = []
        for seed in seeds:
            summary_file, history_file = repeat_files(results_dir, method, seed)
            runs[method].append(Repeat(json.loads(summary_file.read_text()), json.loads(history_file.read_text())))
    champion = json.loads((results_dir / "champion_details.json").read_text())
    return runs, champion


# --- anytime curves -------------------------------------------------------------------------


def record_score(record: dict) -> float | None:
    """A finished evaluation's validation score (``val_score``; ``val_acc`` in histories written before
    the regression task); None for a failed one."""
    if record["status"] != "finished":
        return None
    return record.get("val_score", record.get("val_acc"))


def finished_scores(records: list[dict]) -> np.ndarray:
    """The validation scores of the finished evaluations, in order."""
    return np.array([s for s in map(record_score, records) if s is not None], dtype=float)


def best_so_far(records: list[dict], task: Task) -> np.ndarray:
    """Best validation score after each evaluation, in the task's direction (the running maximum of
    accuracy, the running minimum of an error); NaN until the first finished one."""
    scores = np.array([np.nan if (s := record_score(r)) is None else s for r in records], dtype=float)
    running_best = np.fmax if task.maximize else np.fmin  # both skip NaN once a value is seen
    return running_best.accumulate(scores) if scores.size else scores


def budget_spent(records: list[dict], axis: str) -> np.ndarray:
    """How much of a budget was spent when each evaluation finished: its number, the epochs
    trained so far, or the wall time on the search's clock."""
    if axis == "evaluations":
        return np.arange(1, len(records) + 1, dtype=float)
    if axis == "epochs":
        return np.cumsum([len(r.get("epochs") or []) for r in records], dtype=float)
    return np.array([r["elapsed_seconds"] for r in records], dtype=float)


def curve_at(spent: np.ndarray, best: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The best-so-far step curve read at each grid point (NaN before the first evaluation)."""
    positions = np.searchsorted(spent, grid, side="right") - 1
    values = np.full(grid.shape, np.nan)
    inside = positions >= 0
    values[inside] = best[positions[inside]]
    return values


def budget_totals(runs: dict[str, list[Repeat]], axis: str) -> list[float]:
    """What each repeat of each method spent in all, on one budget axis."""
    return [budget_spent(r.records, axis)[-1] for repeats in runs.values() for r in repeats if r.records]


def curve_grid(runs: dict[str, list[Repeat]], axis: str) -> np.ndarray:
    top = max(budget_totals(runs, axis), default=1.0)
    if axis == "evaluations":
        return np.arange(1, int(top) + 1, dtype=float)
    return np.linspace(0.0, top, CURVE_POINTS)


def band(runs: dict[str, list[Repeat]], axis: str, task: Task) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The grid and, per method, the repeats' curves on it (one row per repeat)."""
    grid = curve_grid(runs, axis)
    curves = {
        method: np.array([curve_at(budget_spent(r.records, axis), best_so_far(r.records, task), grid)
                          for r in repeats])
        for method, repeats in runs.items()
    }  # fmt: skip
    return grid, curves


def _nan_stat(function: Any, curves: np.ndarray) -> np.ndarray:
    out = np.full(curves.shape[1], np.nan)
    some = ~np.all(np.isnan(curves), axis=0)
    out[some] = function(curves[:, some], axis=0)
    return out


def plot_curves(grid: np.ndarray, curves: dict[str, np.ndarray], axis: str, task: Task, out: Path) -> None:
    """Median best-so-far over repeats, with the range over repeats as a band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for method, values in curves.items():
        median = _nan_stat(np.median, values)
        (line,) = ax.step(grid, median, where="post", label=f"{method_label(method)} (median of {len(values)})")
        ax.fill_between(grid, _nan_stat(np.min, values), _nan_stat(np.max, values), step="post",
                        alpha=0.15, color=line.get_color())  # fmt: skip
    ax.set_xlabel(AXES[axis][0])
    ax.set_ylabel(f"best validation {task.label} so far")
    ax.set_title(f"Best so far against {AXES[axis][0].split(' (')[0]} (band: range over repeats)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_curve_data(grid: np.ndarray, curves: dict[str, np.ndarray], axis: str, out: Path) -> None:
    """The median curves as a wide CSV (x, one column per method): DVC plot data, so that
    ``dvc plots diff`` overlays experiments."""
    frame = pd.DataFrame({axis: grid, **{m: _nan_stat(np.median, v) for m, v in curves.items()}})
    frame.to_csv(out, index=False, float_format="%.6g")


def equal_budget_rows(runs: dict[str, list[Repeat]], task: Task) -> pd.DataFrame:
    """Each method's mean best-so-far when every repeat of every method has spent the same
    budget: the smallest total any of them spent, in evaluations, epochs and wall time."""
    rows = []
    for axis in AXES:
        common = min(budget_totals(runs, axis), default=0.0)
        row: dict[str, Any] = {"equal budget": AXES[axis][2].format(common)}
        for method, repeats in runs.items():
            values = [curve_at(budget_spent(r.records, axis), best_so_far(r.records, task), np.array([common]))[0]
                      for r in repeats]  # fmt: skip
            finite = [v for v in values if np.isfinite(v)]
            row[method_label(method)] = f"{np.mean(finite):.4f}" if finite else "-"
        rows.append(row)
    return pd.DataFrame(rows)


# --- GA generations and evaluation times ------------------------------------------------------


def generation_scores(repeats: list[Repeat], task: Task) -> dict[int, list[float]]:
    """Every repeat's population per generation, pooled, as validation scores: the history holds
    fitness (higher is better), which for an error is the score negated."""
    by_generation: dict[int, list[float]] = {}
    for repeat in repeats:
        for g in repeat.history.get("generations") or []:
            scores = (f if task.maximize else -f for f in g["fitness"] if f is not None and np.isfinite(f))
            by_generation.setdefault(g["generation"], []).extend(scores)
    return by_generation


def plot_ga_generations(repeats: list[Repeat], task: Task, out: Path) -> None:
    """Every repeat's population score per generation, pooled."""
    by_generation = generation_scores(repeats, task)
    generations = sorted(by_generation)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if generations:
        ax.boxplot([by_generation[g] for g in generations], positions=generations, widths=0.6)
        for g in generations:
            ax.scatter(np.full(len(by_generation[g]), g), by_generation[g], s=8, alpha=0.5, color="tab:blue")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"validation {task.label} (population)")
    ax.set_title(f"GA fitness per generation, {len(repeats)} repeat(s) pooled")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _init_kind(record: dict) -> str:
    """Where the record's initial weights came from; records written before the field are scratch."""
    return record.get("init") or "scratch"


def score_columns(task: Task) -> tuple[str, str]:
    """The evaluation-time table's columns of the validation score: its best and its mean."""
    return f"best val {metric_short(task)}", f"mean val {metric_short(task)}"


def _time_row(records: list[dict], task: Task) -> dict[str, Any]:
    """Time columns over every evaluation (a failure costs time too); the score over finished ones."""
    times = np.array([float(r["train_seconds"]) for r in records if r.get("train_seconds") is not None], dtype=float)
    epochs = np.array([len(r.get("epochs") or []) for r in records], dtype=float)
    scores = finished_scores(records)
    best_column, mean_column = score_columns(task)
    return {
        "evaluations": len(records),
        "mean time (s)": float(times.mean()) if times.size else np.nan,
        "median time (s)": float(np.median(times)) if times.size else np.nan,
        "skewness": float(skew(times, bias=False)) if times.size >= 3 else np.nan,
        "mean epochs trained": float(epochs.mean()) if epochs.size else np.nan,
        best_column: float(task.best(scores)) if scores.size else np.nan,
        mean_column: float(scores.mean()) if scores.size else np.nan,
    }


def _time_groups(histories: dict) -> list[tuple[str, list[dict]]]:
    """(label, records) per method, then per init kind of each method that used more than one."""
    groups = [(method_label(m), h["evaluations"]) for m, h in histories.items()]
    for method, history in histories.items():
        records = history["evaluations"]
        kinds = sorted({_init_kind(r) for r in records}, key=lambda k: ((INIT_KINDS + (k,)).index(k), k))
        if len(kinds) > 1:
            groups += [(f"{method_label(method)}: {k}", [r for r in records if _init_kind(r) == k]) for k in kinds]
    return groups


def pooled_histories(runs: dict[str, list[Repeat]]) -> dict[str, dict[str, list[dict]]]:
    """Each method's evaluations over all its repeats, as one history."""
    return {m: {"evaluations": [rec for r in repeats for rec in r.records]} for m, repeats in runs.items()}


def evaluation_time_groups(histories: dict, task: Task = CLASSIFICATION) -> pd.DataFrame:
    """Fitness-evaluation time (mean, median, skewness) and validation score per method and, when the
    GA started children from more than one kind of initial weights, per GA init kind (study 004)."""
    rows = [{"group": label, **_time_row(records, task)} for label, records in _time_groups(histories)]
    return pd.DataFrame(rows)


def shown_time_table(times: pd.DataFrame, task: Task) -> pd.DataFrame:
    """The evaluation-time table as text: scores to 4 decimals, times and counts to 2."""

    def shown(column: pd.Series) -> pd.Series:
        digits = 4 if column.name in score_columns(task) else 2
        return column.map(lambda v: _fmt(v, digits) if isinstance(v, float) else str(v))

    return times.astype(object).apply(shown)


def plot_evaluation_times(histories: dict, out: Path) -> None:
    """Step histograms of train_seconds per group on shared bins; dashed line at each group's mean."""
    groups = [(label, np.array([float(r["train_seconds"]) for r in records if r.get("train_seconds") is not None]))
              for label, records in _time_groups(histories)]  # fmt: skip
    everything = np.concatenate([t for _, t in groups]) if groups else np.array([])
    bins = np.histogram_bin_edges(everything, bins=min(20, max(5, everything.size // 3))) if everything.size else 10
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, times) in enumerate(groups):
        if not times.size:
            continue
        colour = colours[i % len(colours)]
        skewness = skew(times, bias=False) if times.size >= 3 else np.nan
        shown_skew = "n/a" if np.isnan(skewness) else f"{skewness:.2f}"
        per_kind = ": " in label  # an init-kind subset of a method: dotted
        ax.hist(times, bins=bins, histtype="stepfilled", alpha=0.08, color=colour)
        ax.hist(times, bins=bins, histtype="step", linewidth=1.6 if per_kind else 2.2, color=colour,
                linestyle=":" if per_kind else "-", label=f"{label} (mean {times.mean():.1f}s, skew {shown_skew})")  # fmt: skip
        ax.axvline(times.mean(), color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("training time per evaluation (s)")
    ax.set_ylabel("evaluations")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title("Fitness-evaluation time distribution")
    ax.grid(alpha=0.3)
    if any(t.size for _, t in groups):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def weight_rule_sentence(ga_summary: dict) -> str:
    rule = (ga_summary.get("operators") or {}).get("weights") or "none"
    return WEIGHT_RULE_SENTENCES.get(
        rule, f"The GA used the weight rule {rule!r}; the other methods train every individual from scratch."
    )


# --- statistics in words ---------------------------------------------------------------------


def final_scores(runs: dict[str, list[Repeat]], task: Task) -> dict[str, dict[int, float]]:
    """Each method's final best validation score per seed (NaN: every individual failed)."""
    key = f"best_{task.val_key}"
    return {m: {r.seed: r.summary.get(key, np.nan) for r in repeats} for m, repeats in runs.items()}


def retrained_test_scores(champion: dict, methods: list[str], task: Task) -> dict[str, dict[int, float]]:
    """Each method's retrained best's test score per seed (NaN: the retraining failed)."""
    scores: dict[str, dict[int, float]] = {m: {} for m in methods}
    for entry in champion["retrained"]:
        scores.setdefault(entry["method"], {})[entry["seed"]] = entry.get(task.test_key, np.nan)
    return scores


def _ci_text(stats: dict[str, Any]) -> str:
    if stats["n"] < 2 or not np.isfinite(stats["ci_low"]):
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} (95% CI {stats['ci_low']:.4f}-{stats['ci_high']:.4f})"


def answer(val_stats: dict[str, dict], verdicts: list[dict], repeats: int, task: Task) -> str:
    """The report's first sentence. A winner is named (in bold) only when the Bayesian signed-rank
    test finds the method with the best mean better than every other one (probability 0.95, beyond
    the region of practical equivalence); otherwise the sentence says which methods are practically
    equivalent or undecided at this budget, and what would settle it."""
    ranked = sorted((m for m in val_stats if val_stats[m]["n"]), key=lambda m: val_stats[m]["mean"],
                    reverse=task.maximize)  # fmt: skip
    if not ranked:
        return "Every search failed: no method found a configuration."
    leader = ranked[0]
    against = {}
    for v in verdicts:
        if leader in (v["method_a"], v["method_b"]):
            other = v["method_b"] if v["method_a"] == leader else v["method_a"]
            flipped = v["method_a"] != leader
            p_better = v["p_worse"] if flipped else v["p_better"]
            verdict = (
                {"better": "worse", "worse": "better"}.get(v["verdict"], v["verdict"]) if flipped else v["verdict"]
            )
            against[other] = (verdict, p_better, v["p_equivalent"], v["rope"])
    others = [m for m in ranked[1:] if m in against]
    mean = f"mean final validation {task.label} {_ci_text(val_stats[leader])} over {repeats} repeat(s)"
    if others and all(against[m][0] == "better" for m in others):
        least = min(against[m][1] for m in others)
        return (f"**{method_label(leader)}** is the best method here: {mean}, better than every other method "
                f"with probability at least {least:.2f} (Bayesian signed-rank test, region of practical "
                f"equivalence {against[others[0]][3]:g}).")  # fmt: skip
    if not others:
        return f"{method_label(leader)}: {mean}."
    equivalent = [m for m in others if against[m][0] == "equivalent"]
    beaten = [m for m in others if against[m][0] == "better"]
    undecided = [m for m in others if against[m][0] not in ("equivalent", "better")]
    rope = against[others[0]][3]
    clauses = [f"No method is decidedly best at this budget: {method_label(leader)} has the best {mean}"]
    if equivalent:
        names = ", ".join(method_label(m) for m in equivalent)
        least = min(against[m][2] for m in equivalent)
        clauses.append(f"it is practically equivalent (within {rope:g} {task.label}) to {names} "
                       f"(probability at least {least:.2f})")  # fmt: skip
    if beaten:
        clauses.append(f"better than {', '.join(method_label(m) for m in beaten)}")
    if undecided:
        details = ", ".join(f"{method_label(m)} (P(better) {against[m][1]:.2f}, P(equivalent) {against[m][2]:.2f})"
                            for m in undecided)  # fmt: skip
        clauses.append(f"undecided against {details}; more repeats (study.repeats) or a larger budget would settle it")
    return "; ".join(clauses) + "."


def verdict_lines(verdicts: list[dict]) -> tuple[str, ...]:
    """A sentence per decided pair; the undecided ones named together in one line."""
    decided = [v["sentence"] for v in verdicts if v["verdict"] != "undecided"]
    open_pairs = [f"{method_label(v['method_a'])} vs {method_label(v['method_b'])}" for v in verdicts
                  if v["verdict"] == "undecided"]  # fmt: skip
    if open_pairs:
        decided.append(f"Undecided at this budget: {', '.join(open_pairs)}.")
    return tuple(decided) or ("Fewer than two methods.",)


def pairwise_matrix(comparisons: list[dict], methods: list[str]) -> pd.DataFrame:
    """Rows beat columns: seeds won, median gain, Holm-corrected p and A12 of the row's method
    against the column's."""
    cells = {m: {n: "" for n in methods} for m in methods}
    for pair in comparisons:
        for row, col, flip in ((pair["method_a"], pair["method_b"], False), (pair["method_b"], pair["method_a"], True)):
            wins = pair.get("losses" if flip else "wins")
            gain = -pair["median_difference"] if flip else pair["median_difference"]
            effect = 1.0 - pair["a12"] if flip else pair["a12"]
            won = f"{wins}/{pair['n']}, " if pair["paired"] else ""
            p = "p -" if math.isnan(pair["p_adjusted"]) else format_p(pair["p_adjusted"])
            cells[row][col] = f"{won}{gain:+.3g}, {p}, A12 {effect:.2f}"
    frame = pd.DataFrame({method_label(c): [cells[r][c] or "-" for r in methods] for c in methods})
    frame.insert(0, "row beats column", [method_label(r) for r in methods])
    return frame


def power_note(repeats: int, methods: int) -> str:
    """Said when the repeats are too few for any pair to reach significance after correction."""
    pairs = methods * (methods - 1) // 2
    best = min(1.0, smallest_wilcoxon_p(repeats) * pairs)
    if best < ALPHA:
        return ""
    return (
        f" With {repeats} repeats the smallest possible p is {smallest_wilcoxon_p(repeats):.2g} before and "
        f"{best:.2g} after correcting for {pairs} pairs: no difference can be significant at {ALPHA}, "
        "so read the effect sizes and intervals, and raise study.repeats (10 or more) for a verdict."
    )


# --- the report ------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def method_table(runs: dict[str, list[Repeat]], val_stats: dict, test_stats: dict, task: Task) -> pd.DataFrame:
    short = metric_short(task)
    fidelity = any("stopped_early" in r.summary for repeats in runs.values() for r in repeats)
    rows = []
    for method, repeats in runs.items():
        summaries = [r.summary for r in repeats]
        val, test = val_stats[method], test_stats[method]
        rows.append({
            "method": method_label(method),
            "repeats": len(repeats),
            f"final best val {short}, mean (95% CI)": _ci_text(val) if val["n"] else "-",
            "sd": _fmt(val["std"]),
            f"test {short} of retrained best, mean (95% CI)": _ci_text(test) if test["n"] else "-",
            "evaluations per repeat": _fmt(float(np.mean([s["evaluations"] for s in summaries])), 1),
            "failed": str(sum(s["failed"] for s in summaries)),
            "epochs trained per repeat": _fmt(float(np.mean([s["epochs_trained"] for s in summaries])), 1),
            "training time per repeat (s)": _fmt(float(np.mean([s["total_train_seconds"] for s in summaries])), 1),
            "training time to final best (s)": _fmt(float(np.nanmean(
                [s.get("train_seconds_to_best", np.nan) for s in summaries])), 1),
            "evaluations to final best": _fmt(float(np.nanmean(
                [s.get("evaluations_to_best", np.nan) for s in summaries])), 1),
        })  # fmt: skip
        if fidelity:  # multi-fidelity: evaluations successive halving stopped before their full epochs
            rows[-1]["stopped early per repeat"] = _fmt(
                float(np.mean([s.get("stopped_early", 0) for s in summaries])), 1
            )
    return pd.DataFrame(rows)


def run_link(run_id: str | None, ui: str | None) -> str:
    if not run_id:
        return "-"
    return f"[{run_id[:8]}]({ui}/{run_id})" if ui else run_id


def repeat_table(runs: dict[str, list[Repeat]], champion: dict, ui: str | None, task: Task) -> pd.DataFrame:
    """Every repeat's result, each number linked to the MLflow run it comes from."""
    retrained = {(e["method"], e["seed"]): e for e in champion["retrained"]}
    short = metric_short(task)
    rows = []
    for method, repeats in runs.items():
        for r in repeats:
            entry = retrained.get((method, r.seed), {})
            rows.append({
                "method": method_label(method), "seed": str(r.seed),
                f"best val {short}": _fmt(r.summary.get(f"best_{task.val_key}")),
                f"test {short} (retrained)": _fmt(entry.get(task.test_key)),
                "search run": run_link(r.summary.get("stage_run_id"), ui),
                "best individual's run": run_link(r.summary.get("best_run_id"), ui),
                "retraining run": run_link(entry.get("run_id"), ui),
            })  # fmt: skip
    return pd.DataFrame(rows)


def method_notes(runs: dict[str, list[Repeat]]) -> list[str]:
    """The budget, then what each method said of its own runs (grid size, GA stops)."""
    first = {m: repeats[0].summary for m, repeats in runs.items() if repeats}
    budget = next(iter(first.values()))["budget"]
    notes = [f"Budget: {budget} evaluations per method and repeat."]
    if "grid" in first and "grid_points" in first["grid"]:
        notes[0] += f" Grid search used {first['grid']['evaluations']} (the largest even grid that fits)."
    if "ga" in runs:
        reasons = sorted({r.summary.get("stop_reason", "") for r in runs["ga"]})
        generations = [r.summary.get("generations") for r in runs["ga"]]
        notes.append(f"GA: {', '.join(str(g) for g in generations)} generations; " + "; ".join(reasons) + ".")
        phases = [r.summary.get("phase_reasons") or [] for r in runs["ga"]]
        if any(len(p) > 1 for p in phases):  # one phase: its reason is the stop reason above
            notes.append("GA phases: " + " | ".join("; ".join(str(x).rstrip(".") for x in p) for p in phases) + ".")
        rejected = sum(r.summary.get("rejected") or 0 for r in runs["ga"])
        if rejected:
            notes.append(f"GA: {rejected} candidate(s) rejected before training, over all repeats.")
    if "pbt" in runs:
        notes.append(pbt_note(runs))
    return notes


def pbt_note(runs: dict[str, list[Repeat]]) -> str:
    """What PBT's budget bought, beside the GA's: its intervals and epochs, and where to compare them."""
    pbt = [r.summary for r in runs["pbt"]]
    intervals = ", ".join(str(s.get("intervals_trained", "?")) for s in pbt)
    reasons = "; ".join(sorted({str(s.get("stop_reason", "")) for s in pbt}))
    text = (f"PBT: {intervals} intervals per repeat ({reasons}); each member's interval is one evaluation, so "
            f"its {np.mean([s['epochs_trained'] for s in pbt]):.1f} training epochs per repeat")  # fmt: skip
    if "ga" in runs:
        ga = [r.summary for r in runs["ga"]]
        rule = (ga[0].get("operators") or {}).get("weights") or "none"
        text += (f" compare with the GA's {np.mean([s['epochs_trained'] for s in ga]):.1f} (`ga.weights: {rule}`) "
                 "in the equal-budget table below, at equal training epochs and wall time")  # fmt: skip
    return (
        text + ". Its result is a schedule (the best member's genes per interval, and whose weights it copied); "
        "the champion replays that schedule from scratch."
    )


EVALUATIONS_FILE = "evaluations.csv"


def search_space_section(
    results_dir: Path, runs: dict[str, list[Repeat]], config: Any, task: Task, plots: Path
) -> tuple[list[Block], dict[str, float]]:
    """Write ``evaluations.csv`` (every evaluation of every method and repeat), then read it back for
    the report's view of the search space: each repeat's best configuration, fANOVA importances,
    slice and parallel-coordinates plots. Returns the blocks and the importances."""
    histories = {m: [(r.summary.get("repeat", i), r.seed, r.history) for i, r in enumerate(repeats)]
                 for m, repeats in runs.items()}  # fmt: skip
    views.evaluations_frame(histories).to_csv(results_dir / EVALUATIONS_FILE, index=False)
    frame = pd.read_csv(results_dir / EVALUATIONS_FILE)
    genes = views.scalar_genes(frame)
    blocks: list[Block] = [Heading("The search space")]
    best = views.best_configurations(frame, genes, task.maximize)
    best["method"] = best["method"].map(method_label)
    blocks += [Paragraph(f"Each method's best configuration of each repeat (validation {task.label}); every "
                         f"evaluation is in `results/{EVALUATIONS_FILE}`."), Table(best)]  # fmt: skip
    space_config = getattr(config, "space", None)
    if space_config is None:
        return blocks, {}
    dimensions = [d for d in SearchSpace.from_config(space_config).dimensions if d.name in genes]
    study = views.importance_study(frame, dimensions, task.maximize)
    importance = views.parameter_importance(study)
    if importance:
        table = pd.DataFrame({"gene": list(importance), "importance": [f"{v:.2f}" for v in importance.values()]})
        blocks += [Paragraph(f"Parameter importance: Optuna's fANOVA evaluator over all {len(study.trials)} finished "
                             f"evaluations of every method and repeat (the share of the validation {task.label}'s "
                             "variance each gene explains; the shares sum to 1)."), Table(table)]  # fmt: skip
    views.plot_slices(frame, dimensions, f"validation {task.label}", plots / "slices.png")
    views.plot_parallel_coordinates(frame, dimensions, task.maximize, plots / "parallel_coordinates.png")
    for name, caption in (("slices.png", "Slice plots"), ("parallel_coordinates.png", "Parallel coordinates")):
        if (plots / name).is_file():
            blocks.append(Image(plots / name, caption))
    return blocks, importance


def write_plots(runs: dict[str, list[Repeat]], task: Task, plots: Path, curves_dir: Path) -> dict[str, dict]:
    """The best-so-far curves (plots and DVC plot data), the GA's generations and the evaluation-time
    plot; returns the pooled histories the time table reads."""
    plots.mkdir(parents=True, exist_ok=True)
    curves_dir.mkdir(parents=True, exist_ok=True)
    for axis in AXES:
        grid, curves = band(runs, axis, task)
        plot_curves(grid, curves, axis, task, plots / PLOT_FILES[axis])
        write_curve_data(grid, curves, axis, curves_dir / AXES[axis][1])
    if "ga" in runs:
        plot_ga_generations(runs["ga"], task, plots / PLOT_FILES["generations"])
    pooled = pooled_histories(runs)
    plot_evaluation_times(pooled, plots / PLOT_FILES["evaluation_time"])
    return pooled


def champion_sentence(champion: dict, task: Task, ui_runs_url: str | None) -> str:
    """Which search's best became the champion, how it was retrained, and its test score."""
    best = champion["champion"]
    genes = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["genome"].items()
                      if not isinstance(v, list))  # fmt: skip
    epochs = best.get("epochs", champion["epochs"])  # a PBT champion's schedule has its own length
    examples = EXAMPLE_WORDS[task.kind]
    return (
        f"Champion, chosen by validation {task.label} after retraining (never by test {task.label}): "
        f"{method_label(best['method'])}'s best of seed {best['seed']} ({genes}), "
        f"{'its schedule replayed from scratch to' if best.get('schedule') else 'retrained for'} {epochs} "
        f"epoch{'s' if epochs != 1 else ''} on {champion['train_size']} {examples}: validation {task.label} "
        f"{best[task.val_key]:.4f}, test {task.label} **{best[task.test_key]:.4f}** on {champion['test_size']} "
        f"held-out {examples} "
        f"({run_link(best.get('run_id'), ui_runs_url)}; registered as {best.get('registered_model')} "
        f"version {best.get('registered_version')})."
    )


def significant_sentences(comparisons: list[dict]) -> tuple[str, ...]:
    return tuple(c["sentence"] for c in comparisons if c["p_adjusted"] < ALPHA) or (
        "No pair differs significantly after correction.",
    )


def comparison_blocks(
    val: dict[str, dict[int, float]],
    test: dict[str, dict[int, float]],
    methods: list[str],
    repeats: int,
    rope: float,
    task: Task,
) -> tuple[list[Block], list[dict]]:
    """The pairwise comparisons of validation and test scores, and the Bayesian verdicts (returned
    too: the answer is phrased from them)."""
    labels = {m: method_label(m) for m in methods}
    val_comparisons = pairwise_comparisons(val, labels=labels, higher_is_better=task.maximize)
    test_comparisons = pairwise_comparisons({m: test[m] for m in methods}, labels=labels,
                                            higher_is_better=task.maximize)  # fmt: skip
    verdicts = bayesian_verdicts(val, rope, labels, higher_is_better=task.maximize, unit=task.label)
    blocks: list[Block] = [
        Heading("Pairwise comparisons"),
        Paragraph(f"Final best validation {task.label} of each search (paired by seed: Wilcoxon signed-rank; "
                  "otherwise Mann-Whitney U; Holm-corrected over all pairs; effect size Vargha-Delaney A12, the "
                  f"probability that a run of the row's method beats one of the column's).{power_note(repeats, len(methods))}"),
        Table(pairwise_matrix(val_comparisons, methods)),
        Bullets(significant_sentences(val_comparisons)),
        Paragraph(f"Bayesian signed-rank test (baycomp) of the same pairs, paired by seed, region of practical "
                  f"equivalence {rope:g} {task.label} (`report.rope`); a verdict is stated at probability 0.95:"),
        Bullets(verdict_lines(verdicts)),
        Paragraph(f"Test {task.label} of each search's best, retrained at full fidelity (rows beat columns):"),
        Table(pairwise_matrix(test_comparisons, methods)),
        Bullets(significant_sentences(test_comparisons)),
    ]  # fmt: skip
    return blocks, verdicts


def sensitivity_blocks(results_dir: Path, task: Task) -> list[Block]:
    """The GA sensitivity section, when the ``ga_sensitivity`` stage ran enabled."""
    sensitivity = load_sensitivity(results_dir / "sensitivity")
    if sensitivity is None:
        return []
    return [
        Heading("GA sensitivity to its own settings"),
        Paragraph(f"Each setting varied alone around the study's `ga` settings, {sensitivity['repeats']} "
                  "repeat(s) per value (seeds from `seed`); population size at the study's budget, generations "
                  "with a budget of population x generations (the `ga_sensitivity` stage; `sensitivity` in "
                  "params.yaml)."),
        Table(sensitivity_frame(sensitivity["rows"], task.label)),
        Image(results_dir / "sensitivity" / "sensitivity.png", "GA sensitivity"),
    ]  # fmt: skip


def reproduce_blocks(commit: str | None, data_summary: dict | None, params_text: str) -> list[Block]:
    return [
        Heading("Reproduce"),
        Bullets(tuple([
            f"Git commit: {commit or 'unknown (not a git checkout)'}",
            *[f"Data file {name}: sha256 {digest}" for name, digest in (data_summary or {}).get("files", {}).items()],
            "Rebuild: `make study` (or `dvc repro`) with these params:",
        ])),
        Code(params_text),
    ]  # fmt: skip


def report_metrics(
    champion: dict, val_stats: dict, test_stats: dict, importance: dict[str, float], methods: list[str], task: Task
) -> dict[str, float | None]:
    """What ``report.json`` holds for ``dvc metrics``: numbers only (a missing one as null)."""
    metrics = {
        f"champion_{task.test_key}": champion["champion"][task.test_key],
        **{f"{m}_best_{task.val_key}_mean": val_stats[m]["mean"] for m in methods},
        **{f"{m}_{task.test_key}_mean": test_stats[m]["mean"] for m in methods},
    }
    metrics |= {f"importance_{gene}": value for gene, value in importance.items()}
    return {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in metrics.items()}


def build_report(
    results_dir: Path,
    config: Any,
    methods: list[str],
    params_text: str = "",
    commit: str | None = None,
    data_summary: dict | None = None,
    ui_runs_url: str | None = None,
    study_name: str = "evohpo study",
    ui_study_url: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html``, the plots and the curves' DVC plot data under
    ``results_dir``; returns the report's metrics (also written to ``report.json``)."""
    task = task_of(data_summary or {})
    seeds = config.repeat_seeds()
    runs, champion = load_results(results_dir, methods, seeds)
    plots = results_dir / "plots"
    pooled = write_plots(runs, task, plots, results_dir / "curves")
    space_blocks, importance = search_space_section(results_dir, runs, config, task, plots)
    val = final_scores(runs, task)
    test = retrained_test_scores(champion, methods, task)
    val_stats = {m: summarise(list(v.values())) for m, v in val.items()}
    test_stats = {m: summarise(list(test[m].values())) for m in methods}
    rope = getattr(getattr(config, "report", None), "rope", 0.005)
    comparisons, verdicts = comparison_blocks(val, test, methods, len(seeds), rope, task)
    title = " vs ".join(method_label(m) for m in methods)
    blocks: list[Block] = [
        Heading(f"{study_name}: {title}", 1),
        Paragraph(answer(val_stats, verdicts, len(seeds), task)),
        Paragraph(champion_sentence(champion, task, ui_runs_url)),
        Heading("Methods over repeats"),
        Table(method_table(runs, val_stats, test_stats, task)),
        Bullets(tuple(method_notes(runs) + [
            "Training time counts the seconds spent training (failures included); wall time also counts "
            "tracking and checkpointing. Both times to the final best are training seconds.",
        ])),
        *comparisons,
        Heading("Equal budgets"),
        Paragraph(f"Mean best-so-far validation {task.label} when every repeat of every method had spent the same "
                  "budget (the smallest total any of them spent), in evaluations, training epochs and wall time:"),
        Table(equal_budget_rows(runs, task)),
        *[Image(plots / PLOT_FILES[axis], f"Best so far against {AXES[axis][0]}") for axis in AXES],
        *space_blocks,
    ]  # fmt: skip
    if "ga" in runs:
        blocks += [Heading("GA generations"), Image(plots / PLOT_FILES["generations"], "GA fitness per generation")]
    blocks += sensitivity_blocks(results_dir, task)
    blocks += [
        Heading("Fitness-evaluation time"),
        Paragraph(weight_rule_sentence(runs["ga"][0].summary) if "ga" in runs else ""),
        Table(shown_time_table(evaluation_time_groups(pooled, task), task)),
        Image(plots / PLOT_FILES["evaluation_time"], "Fitness-evaluation time distribution"),
        Heading("Every repeat"),
        Paragraph(f"Run ids link to the MLflow UI (`make ui`); the study's runs: "
                  f"{f'[classic runs view]({ui_study_url})' if ui_study_url else ui_runs_url or 'make ui'}."),
        Table(repeat_table(runs, champion, ui_runs_url, task)),
        *reproduce_blocks(commit, data_summary, params_text),
    ]  # fmt: skip
    (results_dir / "report.md").write_text(to_markdown(blocks, results_dir))
    (results_dir / "report.html").write_text(to_html(blocks, f"{study_name}: {title}"))
    metrics = report_metrics(champion, val_stats, test_stats, importance, methods, task)
    write_json(results_dir / "report.json", metrics)
    return metrics
