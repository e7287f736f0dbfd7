"""The comparison report: a table per method and plots, in Markdown and HTML."""

from __future__ import annotations

import html
import json
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
from pipeline.search.registry import get_method, method_names  # noqa: E402


def method_label(method: str) -> str:
    """The report's name of a method (``Genetic algorithm``), from the registry."""
    return get_method(method).label

PLOT_FILES = {
    "evaluations": "best_so_far_vs_evaluations.png",
    "time": "best_so_far_vs_time.png",
    "generations": "ga_fitness_by_generation.png",
    "evaluation_time": "evaluation_time_histogram.png",
}
INIT_KINDS = ("scratch", "inherit", "merge")  # where an individual's initial weights came from
WEIGHT_RULE_SENTENCES = {
    "none": "The GA trained every child from scratch (no weight inheritance), like grid and random search.",
    "inherit": "The GA started children from their parents' weights by the inherit rule; "
    "grid and random search train every individual from scratch.",
    "merge": "The GA started children from their parents' weights by the merge rule; "
    "grid and random search train every individual from scratch.",
}


def load_results(results_dir: Path) -> tuple[dict, dict, dict]:
    """Every registered method's summary and history (in registry order), and the champion's results."""
    summaries, histories = {}, {}
    for method in method_names():
        summaries[method] = json.loads((results_dir / f"{method}_search.json").read_text())
        histories[method] = json.loads((results_dir / f"{method}_search_history.json").read_text())
    champion = json.loads((results_dir / "champion.json").read_text())
    return summaries, histories, champion


def comparison_table(summaries: dict, champion: dict) -> pd.DataFrame:
    rows = []
    for method, summary in summaries.items():
        retrained = champion["methods"].get(method, {})
        rows.append({
            "method": method_label(method),
            "best val acc": summary.get("best_val_acc"),
            "test acc (retrained best)": retrained.get("test_acc"),
            "evaluations": summary["evaluations"],
            "failed": summary["failed"],
            "total training time (s)": summary["total_train_seconds"],
            "time to final best (s)": summary.get("time_to_best_seconds"),
            "evaluations to final best": summary.get("evaluations_to_best"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def best_so_far(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evaluation number, elapsed seconds, best validation accuracy so far); failures score NaN."""
    scores = np.array([r["val_acc"] if r["status"] == "finished" else np.nan for r in records], dtype=float)
    running = np.fmax.accumulate(scores) if scores.size else scores
    elapsed = np.array([r["elapsed_seconds"] for r in records], dtype=float)
    return np.arange(1, len(records) + 1), elapsed, running


def plot_best_so_far(histories: dict, out: Path, by: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, history in histories.items():
        numbers, elapsed, running = best_so_far(history["evaluations"])
        x = numbers if by == "evaluations" else elapsed
        ax.step(x, running, where="post", marker="o", markersize=3, label=method_label(method))
    ax.set_xlabel("evaluations" if by == "evaluations" else "wall time (s)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"Best-so-far validation accuracy against {'evaluations' if by == 'evaluations' else 'wall time'}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_ga_generations(history: dict, out: Path) -> None:
    generations = history["generations"]
    data = [[f for f in g["fitness"] if f is not None] for g in generations]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if data:
        ax.boxplot(data, positions=[g["generation"] for g in generations], widths=0.6)
        for g, values in zip(generations, data):
            ax.scatter(np.full(len(values), g["generation"]), values, s=10, alpha=0.6, color="tab:blue")
    ax.set_xlabel("generation")
    ax.set_ylabel("validation accuracy (population)")
    ax.set_title("GA fitness distribution per generation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _init_kind(record: dict) -> str:
    """Where the record's initial weights came from; records written before the field are scratch."""
    return record.get("init") or "scratch"


def _time_row(records: list[dict]) -> dict[str, Any]:
    """Time columns over every evaluation (a failure costs time too); accuracy over finished ones."""
    times = np.array([float(r["train_seconds"]) for r in records if r.get("train_seconds") is not None], dtype=float)
    epochs = np.array([len(r.get("epochs") or []) for r in records], dtype=float)
    accs = np.array([r["val_acc"] for r in records if r["status"] == "finished" and r.get("val_acc") is not None],
                    dtype=float)  # fmt: skip
    return {
        "evaluations": len(records),
        "mean time (s)": float(times.mean()) if times.size else np.nan,
        "median time (s)": float(np.median(times)) if times.size else np.nan,
        "skewness": float(skew(times, bias=False)) if times.size >= 3 else np.nan,
        "mean epochs trained": float(epochs.mean()) if epochs.size else np.nan,
        "best val acc": float(accs.max()) if accs.size else np.nan,
        "mean val acc": float(accs.mean()) if accs.size else np.nan,
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


def evaluation_time_groups(histories: dict) -> pd.DataFrame:
    """Fitness-evaluation time (mean, median, skewness) and accuracy per method and, when the GA
    started children from more than one kind of initial weights, per GA init kind (study 004)."""
    rows = [{"group": label, **_time_row(records)} for label, records in _time_groups(histories)]
    return pd.DataFrame(rows)


def plot_evaluation_times(histories: dict, out: Path) -> None:
    """Step histograms of train_seconds per group on shared bins; dashed line at each group's mean."""
    groups = [(label, np.array([float(r["train_seconds"]) for r in records if r.get("train_seconds") is not None]))
              for label, records in _time_groups(histories)]  # fmt: skip
    everything = np.concatenate([t for _, t in groups]) if groups else np.array([])
    bins = np.histogram_bin_edges(everything, bins=min(20, max(5, everything.size // 3))) if everything.size else 10
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    fig.savefig(out, dpi=120)
    plt.close(fig)


def weight_rule_sentence(ga_summary: dict) -> str:
    rule = (ga_summary.get("operators") or {}).get("weights") or "none"
    return WEIGHT_RULE_SENTENCES.get(
        rule, f"The GA used the weight rule {rule!r}; grid and random search train every individual from scratch."
    )


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become null: report.json must stay valid JSON."""
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _format_cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if "acc" in column:
        return f"{value:.4f}"
    if "(s)" in column:
        return f"{value:.1f}"
    if column in ("skewness", "mean epochs trained"):
        return f"{value:.2f}"
    return str(value)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype(object).apply(lambda col: col.map(lambda v: _format_cell(col.name, v)))


def method_notes(summaries: dict) -> list[str]:
    """One line on the budget, then what each method said of its own run (grid size, GA stop)."""
    budget = next(iter(summaries.values()))["budget"]
    notes = [f"Budget: {budget} evaluations per method."]
    if "grid_points" in summaries.get("grid", {}):
        notes[0] += f" Grid search used {summaries['grid']['evaluations']} (the largest even grid that fits)."
    ga = summaries.get("ga")
    if ga is not None:
        notes.append(f"GA: {ga.get('generations')} generations; {ga.get('stop_reason', '')}.")
        if len(ga.get("phase_reasons") or []) > 1:  # one phase: its reason is the stop reason above
            notes.append("GA phases: " + "; ".join(str(r).rstrip(".") for r in ga["phase_reasons"]) + ".")
        if ga.get("rejected"):
            notes.append(f"GA: {ga['rejected']} candidate(s) rejected before training.")
    return notes


def build_report(results_dir: Path, study_name: str = "evohpo study") -> dict[str, Any]:
    summaries, histories, champion = load_results(results_dir)
    plots_dir = results_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_best_so_far(histories, plots_dir / PLOT_FILES["evaluations"], "evaluations")
    plot_best_so_far(histories, plots_dir / PLOT_FILES["time"], "time")
    if "ga" in histories:
        plot_ga_generations(histories["ga"], plots_dir / PLOT_FILES["generations"])
    plot_evaluation_times(histories, plots_dir / PLOT_FILES["evaluation_time"])

    table = comparison_table(summaries, champion)
    shown = _shown(table)
    times = evaluation_time_groups(histories)
    times_shown = _shown(times)
    weight_sentence = weight_rule_sentence(summaries["ga"]) if "ga" in summaries else ""
    best = champion["champion"]
    genes = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["genome"].items())
    headline = (
        f"Champion: **{method_label(best['method'])}**'s best ({genes}), retrained for {champion['epochs']} "
        f"epochs on {champion['train_size']} images: test accuracy **{best['test_acc']:.4f}** "
        f"on {champion['test_size']} held-out images."
    )
    notes = method_notes(summaries)
    images = [(PLOT_FILES[k], title) for k, title in (
        ("evaluations", "Best-so-far validation accuracy against evaluations"),
        ("time", "Best-so-far validation accuracy against wall time"),
        ("generations", "GA fitness distribution per generation"),
        ("evaluation_time", "Fitness-evaluation time distribution"),
    ) if k != "generations" or "ga" in histories]  # fmt: skip
    title = " vs ".join(method_label(m) for m in summaries)
    markdown = "\n".join([
        f"# {study_name}: {title}", "", headline, "", shown.to_markdown(index=False, disable_numparse=True), "",
        *[f"- {n}" for n in notes], "",
        "## Fitness-evaluation time", "", weight_sentence, "",
        times_shown.to_markdown(index=False, disable_numparse=True), "",
        *[f"![{title}](plots/{name})\n" for name, title in images],
    ])  # fmt: skip
    (results_dir / "report.md").write_text(markdown)
    html_page = "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
        "</head><body>",
        f"<h1>{html.escape(study_name)}: {html.escape(title)}</h1>",
        f"<p>{html.escape(headline).replace('**', '')}</p>",
        shown.to_html(index=False, border=0),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        "<h2>Fitness-evaluation time</h2>",
        f"<p>{html.escape(weight_sentence)}</p>",
        times_shown.to_html(index=False, border=0),
        *[f"<h2>{html.escape(t)}</h2><img src='plots/{n}' alt='{html.escape(t)}'>" for n, t in images],
        "</body></html>",
    ])  # fmt: skip
    (results_dir / "report.html").write_text(html_page)
    metrics = {
        "champion_method": best["method"],
        "champion_test_acc": best["test_acc"],
        **{f"{m}_best_val_acc": summaries[m].get("best_val_acc") for m in summaries},
        **{f"{m}_test_acc": champion["methods"].get(m, {}).get("test_acc") for m in summaries},
    }
    per_method = times.set_index("group")
    for m in summaries:
        metrics[f"{m}_mean_train_seconds"] = per_method.loc[method_label(m), "mean time (s)"]
        metrics[f"{m}_train_seconds_skewness"] = per_method.loc[method_label(m), "skewness"]
    metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
    write_json(results_dir / "report.json", metrics)
    return metrics
