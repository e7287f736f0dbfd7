"""The ga_sensitivity stage's results as a table, a plot and a summary file: what the stage writes
and the report shows (without the training stack)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# How each setting reads in the table and on the plot.
SETTING_LABELS = {
    "population_size": "population size",
    "generations": "generations",
    "mutation_rate": "mutation rate",
    "noise_level": "input noise level",
}


def sensitivity_frame(rows: list[dict[str, Any]], metric_label: str) -> pd.DataFrame:
    """One line per (setting, value): the final best's mean, 95% CI and sd over repeats."""
    return pd.DataFrame([{
        "setting": SETTING_LABELS[row["setting"]],
        "value": f"{row['value']:g}",
        "repeats": row["n"],
        f"final best validation {metric_label}, mean (95% CI)":
            f"{row['mean']:.4f} ({row['ci_low']:.4f}-{row['ci_high']:.4f})" if row["n"] else "-",
        "sd": f"{row['std']:.4f}" if row["n"] > 1 else "-",
        "evaluations per repeat": f"{row['evaluations']:.0f}",
        "results": f"sensitivity/{row['folder']}",
    } for row in rows])  # fmt: skip


def plot_sensitivity(rows: list[dict[str, Any]], metric_label: str, out: Path) -> None:
    """One panel per setting: the final best's mean against the value, with its 95% CI as bars."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        own = [r for r in rows if r["setting"] == setting and r["n"]]
        values = np.array([r["value"] for r in own], dtype=float)
        means = np.array([r["mean"] for r in own])
        errors = np.array([[r["mean"] - r["ci_low"] for r in own], [r["ci_high"] - r["mean"] for r in own]])
        ax.errorbar(values, means, yerr=errors, marker="o", capsize=4)
        ax.set_xlabel(SETTING_LABELS[setting])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"final best validation {metric_label}\n(mean, 95% CI)")
    fig.suptitle("GA sensitivity to its own settings", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def load_sensitivity(results_dir: Path) -> dict[str, Any] | None:
    """The stage's summary when it ran enabled, else None (the report then leaves the section out)."""
    path = results_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("enabled") else None
