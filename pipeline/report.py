"""The comparison report: a table per method and plots, in Markdown and HTML."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.jsonio import write_json  # noqa: E402
from pipeline.search import METHODS  # noqa: E402

METHOD_LABELS = {"ga": "Genetic algorithm", "grid": "Grid search", "random": "Random search"}
PLOT_FILES = {
    "evaluations": "best_so_far_vs_evaluations.png",
    "time": "best_so_far_vs_time.png",
    "generations": "ga_fitness_by_generation.png",
}


def load_results(results_dir: Path) -> tuple[dict, dict, dict]:
    summaries, histories = {}, {}
    for method in METHODS:
        summaries[method] = json.loads((results_dir / f"{method}_search.json").read_text())
        histories[method] = json.loads((results_dir / f"{method}_search_history.json").read_text())
    champion = json.loads((results_dir / "champion.json").read_text())
    return summaries, histories, champion


def comparison_table(summaries: dict, champion: dict) -> pd.DataFrame:
    rows = []
    for method in METHODS:
        summary = summaries[method]
        retrained = champion["methods"].get(method, {})
        rows.append({
            "method": METHOD_LABELS[method],
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
    for method in METHODS:
        numbers, elapsed, running = best_so_far(histories[method]["evaluations"])
        x = numbers if by == "evaluations" else elapsed
        ax.step(x, running, where="post", marker="o", markersize=3, label=METHOD_LABELS[method])
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


def _format_cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if "acc" in column:
        return f"{value:.4f}"
    if "(s)" in column:
        return f"{value:.1f}"
    return str(value)


def build_report(results_dir: Path, study_name: str = "evohpo study") -> dict[str, Any]:
    summaries, histories, champion = load_results(results_dir)
    plots_dir = results_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_best_so_far(histories, plots_dir / PLOT_FILES["evaluations"], "evaluations")
    plot_best_so_far(histories, plots_dir / PLOT_FILES["time"], "time")
    plot_ga_generations(histories["ga"], plots_dir / PLOT_FILES["generations"])

    table = comparison_table(summaries, champion)
    shown = table.astype(object).apply(lambda col: col.map(lambda v: _format_cell(col.name, v)))
    best = champion["champion"]
    genes = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["genome"].items())
    headline = (
        f"Champion: **{METHOD_LABELS[best['method']]}**'s best ({genes}), retrained for {champion['epochs']} "
        f"epochs on {champion['train_size']} images: test accuracy **{best['test_acc']:.4f}** "
        f"on {champion['test_size']} held-out images."
    )
    budget = summaries["ga"]["budget"]
    notes = [
        f"Budget: {budget} evaluations per method. Grid search used {summaries['grid']['evaluations']} "
        "(the largest even grid that fits).",
        f"GA: {summaries['ga'].get('generations')} generations; {summaries['ga'].get('stop_reason', '')}.",
    ]
    images = [(PLOT_FILES[k], title) for k, title in (
        ("evaluations", "Best-so-far validation accuracy against evaluations"),
        ("time", "Best-so-far validation accuracy against wall time"),
        ("generations", "GA fitness distribution per generation"),
    )]  # fmt: skip
    markdown = "\n".join([
        f"# {study_name}: GA vs grid vs random search", "", headline, "", shown.to_markdown(index=False, disable_numparse=True), "",
        *[f"- {n}" for n in notes], "",
        *[f"![{title}](plots/{name})\n" for name, title in images],
    ])  # fmt: skip
    (results_dir / "report.md").write_text(markdown)
    html_page = "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
        "</head><body>",
        f"<h1>{html.escape(study_name)}: GA vs grid vs random search</h1>",
        f"<p>{html.escape(headline).replace('**', '')}</p>",
        shown.to_html(index=False, border=0),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        *[f"<h2>{html.escape(t)}</h2><img src='plots/{n}' alt='{html.escape(t)}'>" for n, t in images],
        "</body></html>",
    ])  # fmt: skip
    (results_dir / "report.html").write_text(html_page)
    metrics = {
        "champion_method": best["method"],
        "champion_test_acc": best["test_acc"],
        **{f"{m}_best_val_acc": summaries[m].get("best_val_acc") for m in METHODS},
        **{f"{m}_test_acc": champion["methods"].get(m, {}).get("test_acc") for m in METHODS},
    }
    write_json(results_dir / "report.json", metrics)
    return metrics
