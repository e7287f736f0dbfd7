"""Normalised regret, the measure HPO benchmarks report.

The regret of a search after ``t`` evaluations is that of its incumbent: the evaluation with the
best *observed* score so far (the noisy draw that made it the incumbent), valued at its
configuration's *mean* over the table's stored runs. It is normalised by the table's best and worst
means to [0, 1] (0: the table's best configuration), so tasks of any metric can be averaged:

    regret = (best - value) / (best - worst)      in the metric's direction

HPOLib's validation losses span orders of magnitude (a diverged network reaches 1e2-1e7 where the
best is 1e-5): on their own scale every configuration that trains at all would sit at a regret of
about 0, so they are normalised on log10 of the loss (``regret_scale: log``), where each factor of
ten counts the same. Ranks (in the suite report) need no scale at all.
"""

from __future__ import annotations

import numpy as np

from pipeline.benchmarks.tables import BenchmarkTable


def normalised_regret(table: BenchmarkTable, values: np.ndarray) -> np.ndarray:
    """The regret of configurations whose mean metric is ``values`` (any shape), in [0, 1]."""
    values = np.asarray(values, dtype=float)
    best, worst = table.best_mean, table.worst_mean
    if table.regret_scale == "log":
        values, best, worst = np.log10(values), np.log10(best), np.log10(worst)
    if best == worst:
        return np.zeros_like(values)
    return (best - values) / (best - worst)


def incumbents(scores: np.ndarray, maximize: bool) -> np.ndarray:
    """[n] the position of the incumbent after each of ``n`` evaluations: the first evaluation with
    the best observed score so far."""
    fitness = np.asarray(scores, dtype=float) if maximize else -np.asarray(scores, dtype=float)
    best_so_far = np.maximum.accumulate(fitness)
    improved = np.r_[True, fitness[1:] > best_so_far[:-1]]
    return np.maximum.accumulate(np.where(improved, np.arange(fitness.size), 0))


def regret_curve(table: BenchmarkTable, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[n] normalised regret of the incumbent after each evaluation (``rows``: the evaluated
    configurations, ``scores``: what each scored when evaluated)."""
    rows = np.asarray(rows, dtype=np.int64)
    return normalised_regret(table, table.means[rows[incumbents(scores, table.maximize)]])


def at_evaluations(curve: np.ndarray, points: list[int]) -> list[float]:
    """The curve's value after each of ``points`` evaluations; a search that stopped earlier (a grid
    smaller than the budget) keeps its last value."""
    return [float(curve[min(p, curve.size) - 1]) for p in points]


def at_times(curve: np.ndarray, seconds: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The curve on a grid of simulated training times (cumulative ``seconds``): NaN before the
    first evaluation finished."""
    finished = np.cumsum(seconds)
    where = np.searchsorted(finished, grid, side="right") - 1
    return np.where(where >= 0, curve[np.clip(where, 0, None)], np.nan)


def expected_best_of_distinct(values: np.ndarray, n: int, maximize: bool = True) -> float:
    """The exact expected best of ``n`` distinct entries drawn uniformly without replacement from
    ``values``: with the values sorted worst first, P(best is the k-th) = C(k-1, n-1) / C(N, n)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if not maximize:
        ordered = ordered[::-1]
    total = ordered.size
    if not 1 <= n <= total:
        raise ValueError(f"n must lie in [1, {total}], got {n}")
    k = np.arange(1, total + 1)
    # log C(k-1, n-1) - log C(N, n), zero where k < n
    from scipy.special import gammaln

    with np.errstate(invalid="ignore"):
        log_p = (gammaln(k) - gammaln(n) - gammaln(np.maximum(k - n + 1, 1))
                 - (gammaln(total + 1) - gammaln(n + 1) - gammaln(total - n + 1)))  # fmt: skip
    p = np.where(k >= n, np.exp(log_p), 0.0)
    return float(np.sum(p * ordered))
