"""The search space as the report shows it: every evaluation in one tidy table
(``results/evaluations.csv``, as Optuna's ``trials_dataframe()`` or Ray Tune's ``get_dataframe()``
give it), each repeat's best configuration, parameter importance (Optuna's fANOVA evaluator over
every finished evaluation of the study), slice plots and a parallel-coordinates plot.

Only scalar genes are views' parameters: an architecture genome's layer lists are shown by their
lengths in the table, not as importances.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.space.dimensions import ChoiceDimension, Dimension, FloatDimension, IntDimension, python_scalar  # noqa: E402

GENE_PREFIX = "gene."  # gene columns of the evaluations table
RECORD_COLUMNS = ("index", "generation", "rung", "stopped_early", "status", "val_score", "val_loss", "train_loss",
                  "train_seconds", "elapsed_seconds", "init", "genome_hash", "run_id", "failure")  # fmt: skip


def evaluations_frame(histories: Mapping[str, Sequence[tuple[int, int, dict]]]) -> pd.DataFrame:
    """One row per evaluation: ``histories`` maps a method to its (repeat, seed, history) triples,
    in repeat order; a history's evaluations in their order. Layer lists are JSON text."""
    rows = []
    for method, repeats in histories.items():
        for repeat, seed, history in repeats:
            for record in history["evaluations"]:
                row: dict[str, Any] = {"method": method, "repeat": repeat, "seed": seed}
                row |= {key: record.get(key) for key in RECORD_COLUMNS}
                if row["val_score"] is None and "val_acc" in record:  # histories before the regression task
                    row["val_score"] = record["val_acc"]
                row["epochs_trained"] = len(record.get("epochs") or [])
                for gene, value in record["genome"].items():
                    row[GENE_PREFIX + gene] = json.dumps(value) if isinstance(value, (list, dict)) else value
                rows.append(row)
    return pd.DataFrame(rows)


def scalar_genes(frame: pd.DataFrame) -> list[str]:
    """Gene columns whose values are numbers or short categories (not JSON layer lists)."""
    genes = []
    for column in frame.columns:
        if column.startswith(GENE_PREFIX):
            values = frame[column].dropna()
            if not any(isinstance(v, str) and v.startswith("[") for v in values):
                genes.append(column.removeprefix(GENE_PREFIX))
    return genes


def optuna_distribution(dim: Dimension) -> Any:
    import optuna

    if isinstance(dim, FloatDimension):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, IntDimension):
        return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, ChoiceDimension):
        return optuna.distributions.CategoricalDistribution(list(dim.values))
    raise TypeError(f"no Optuna distribution for {type(dim).__name__}")


def importance_study(frame: pd.DataFrame, dimensions: Sequence[Dimension], maximize: bool) -> Any:
    """An in-memory Optuna study holding every finished evaluation as a completed trial (value: the
    validation score, in the task's direction), over the scalar genes of ``dimensions``."""
    import optuna

    finished = frame[(frame["status"] == "finished") & frame["val_score"].notna()]
    dims = [d for d in dimensions if GENE_PREFIX + d.name in frame.columns]
    distributions = {d.name: optuna_distribution(d) for d in dims}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line in the report's log
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    trials = []
    for _, row in finished.iterrows():
        params = {d.name: python_scalar(row[GENE_PREFIX + d.name], d) for d in dims}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions,
                                                value=float(row["val_score"])))  # fmt: skip
    study.add_trials(trials)
    return study


def parameter_importance(study: Any, seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each parameter (Optuna's ``FanovaImportanceEvaluator``, seeded), summing to 1."""
    import optuna

    if len(study.trials) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def best_configurations(frame: pd.DataFrame, genes: Sequence[str], maximize: bool) -> pd.DataFrame:
    """Each method's best evaluation of each repeat (the first of equal scores), with its genes."""
    finished = frame[(frame["status"] == "finished") & frame["val_score"].notna()]
    rows = []
    for (method, repeat), group in finished.groupby(["method", "repeat"], sort=False):
        best = group.loc[group["val_score"].idxmax() if maximize else group["val_score"].idxmin()]
        rows.append({"method": method, "repeat": int(repeat), "seed": int(best["seed"]),
                     "score": float(best["val_score"]),
                     **{g: _shown(best[GENE_PREFIX + g]) for g in genes}})  # fmt: skip
    return pd.DataFrame(rows)


def _shown(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def plot_slices(frame: pd.DataFrame, dimensions: Sequence[Dimension], score_label: str, out: Path) -> None:
    """One panel per scalar gene: every finished evaluation's score against the gene's value, by method."""
    finished = frame[(frame["status"] == "finished") & frame["val_score"].notna()]
    dims = [d for d in dimensions if GENE_PREFIX + d.name in frame.columns]
    if not dims:
        return
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3), squeeze=False, sharey=True)
    for ax, dim in zip(axes[0], dims):
        for method, group in finished.groupby("method", sort=False):
            ax.scatter([_position(v, dim) for v in group[GENE_PREFIX + dim.name]], group["val_score"], s=10,
                       alpha=0.6, label=method)  # fmt: skip
        if isinstance(dim, ChoiceDimension):
            ax.set_xticks(range(len(dim.values)), [str(v) for v in dim.values], fontsize=7)
        elif getattr(dim, "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(dim.name)
    axes[0][0].set_ylabel(score_label)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _position(value: Any, dim: Dimension) -> float:
    if isinstance(dim, ChoiceDimension):
        return float(dim.values.index(value)) if value in dim.values else math.nan
    return float(value)


def plot_parallel_coordinates(frame: pd.DataFrame, dimensions: Sequence[Dimension], maximize: bool,
                              out: Path) -> None:  # fmt: skip
    """Every finished evaluation as a line across the genes (each on its own unit scale, log where
    log-scaled), coloured by its score (brighter: better)."""
    finished = frame[(frame["status"] == "finished") & frame["val_score"].notna()]
    dims = [d for d in dimensions if GENE_PREFIX + d.name in frame.columns]
    if len(dims) < 2 or finished.empty:
        return
    units = np.array([[dim.to_unit(python_scalar(row[GENE_PREFIX + dim.name], dim)) for dim in dims]
                      for _, row in finished.iterrows()])  # fmt: skip
    scores = finished["val_score"].to_numpy(dtype=float)
    order = np.argsort(scores if maximize else -scores)  # the best drawn last, on top
    span = np.ptp(scores) or 1.0
    shade = (scores - scores.min()) / span if maximize else (scores.max() - scores) / span
    fig, ax = plt.subplots(figsize=(1.6 * len(dims) + 2, 3.5))
    cmap = plt.get_cmap("viridis")
    for i in order:
        ax.plot(range(len(dims)), units[i], color=cmap(shade[i]), alpha=0.7, linewidth=1)
    ax.set_xticks(range(len(dims)), [d.name for d in dims], fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_ylabel("gene value (unit scale)")
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(scores.min(), scores.max())), ax=ax,
                 label="validation score")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
