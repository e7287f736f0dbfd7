"""How sure the study is: per-method intervals and pairwise tests over repeats, in plain words.

scipy does the statistics (bootstrap intervals, Wilcoxon signed-rank, Mann-Whitney U); this module
only chooses which applies, corrects for multiple comparisons (Holm), adds an effect size
(Vargha-Delaney A12) and says the result in a sentence a reviewer accepts.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
ALPHA = 0.05


def summarise(values: Sequence[float], rng_seed: int = 0) -> dict[str, Any]:
    """n, mean, sd, median and a 95% percentile-bootstrap interval of the mean; NaN values (a
    repeat in which everything failed) are dropped and counted as ``missing``."""
    data = np.asarray(values, dtype=float)
    finite = data[np.isfinite(data)]
    result: dict[str, Any] = {"n": int(finite.size), "missing": int(data.size - finite.size)}
    if finite.size == 0:
        return result | {"mean": math.nan, "std": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(finite.mean())
    result |= {"mean": mean, "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
               "median": float(np.median(finite))}  # fmt: skip
    if finite.size < 2 or np.ptp(finite) == 0:
        # No spread to resample: the interval is the mean itself (one value), or undefined.
        low = high = mean if finite.size >= 2 else math.nan
    else:
        interval = stats.bootstrap(
            (finite,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile", rng=np.random.default_rng(rng_seed),
        ).confidence_interval  # fmt: skip
        low, high = float(interval.low), float(interval.high)
    return result | {"ci_low": low, "ci_high": high}


def a12(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> float:
    """Vargha-Delaney A12: the probability that a run of x beats a run of y (ties count half)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not higher_is_better:
        xs, ys = -xs, -ys
    greater = (xs[:, None] > ys[None, :]).sum()
    equal = (xs[:, None] == ys[None, :]).sum()
    return float((greater + 0.5 * equal) / (xs.size * ys.size))


def a12_magnitude(value: float) -> str:
    """Vargha and Delaney's thresholds on |A12 - 0.5|."""
    distance = abs(value - 0.5)
    if distance < 0.06:
        return "negligible"
    if distance < 0.14:
        return "small"
    if distance < 0.21:
        return "medium"
    return "large"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (monotone, at most 1); NaN stays NaN and is not counted."""
    adjusted = [math.nan] * len(p_values)
    valid = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare_pair(x: Sequence[float], y: Sequence[float], paired: bool, higher_is_better: bool = True) -> dict[str, Any]:
    """A two-sided test of x against y: Wilcoxon signed-rank on the per-seed differences when the
    runs are paired by seed, else Mann-Whitney U; with wins (paired only), the median difference
    (x better: positive) and A12."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sign = 1.0 if higher_is_better else -1.0
    result: dict[str, Any] = {"n": int(min(xs.size, ys.size)), "paired": paired, "a12": a12(xs, ys, higher_is_better)}
    result["magnitude"] = a12_magnitude(result["a12"])
    if paired:
        differences = sign * (xs - ys)
        result |= {"wins": int((differences > 0).sum()), "losses": int((differences < 0).sum()),
                   "ties": int((differences == 0).sum()), "median_difference": float(np.median(differences))}  # fmt: skip
    else:
        result["median_difference"] = float(sign * (np.median(xs) - np.median(ys)))
    if result["n"] < 2:
        return result | {"test": "too few repeats", "statistic": math.nan, "p_value": math.nan}
    if paired:
        if not np.any(differences):
            return result | {"test": "Wilcoxon signed-rank", "statistic": 0.0, "p_value": 1.0}  # identical runs
        # zsplit: a seed where both tie counts half for each side instead of being dropped.
        test = stats.wilcoxon(xs, ys, zero_method="zsplit", alternative="two-sided")
        return result | {"test": "Wilcoxon signed-rank", "statistic": float(test.statistic), "p_value": float(test.pvalue)}
    test = stats.mannwhitneyu(xs, ys, alternative="two-sided")
    return result | {"test": "Mann-Whitney U", "statistic": float(test.statistic), "p_value": float(test.pvalue)}


def p_text(p: float) -> str:
    if math.isnan(p):
        return "p not computed"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def pairwise_comparisons(
    results: Mapping[str, Mapping[int, float]], labels: Mapping[str, str] | None = None,
    higher_is_better: bool = True, alpha: float = ALPHA, metric_word: str = "",
) -> list[dict[str, Any]]:
    """Every pair of methods (in the mapping's order), tested on their per-seed results (NaN:
    dropped), paired by seed when both ran the same seeds; Holm-corrected over all pairs; each
    with a sentence naming the better method first."""
    labels = labels or {}
    pairs = []
    methods = list(results)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            seeds_a = {s for s, v in results[a].items() if not math.isnan(v)}
            seeds_b = {s for s, v in results[b].items() if not math.isnan(v)}
            paired = seeds_a == seeds_b and len(seeds_a) >= 2
            seeds = sorted(seeds_a & seeds_b) if paired else None
            x = [results[a][s] for s in seeds] if paired else [results[a][s] for s in sorted(seeds_a)]
            y = [results[b][s] for s in seeds] if paired else [results[b][s] for s in sorted(seeds_b)]
            pairs.append({"method_a": a, "method_b": b, **compare_pair(x, y, paired, higher_is_better)})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_adjusted"] = adjusted
        pair["sentence"] = comparison_sentence(pair, labels, alpha, metric_word)
    return pairs


def comparison_sentence(pair: Mapping[str, Any], labels: Mapping[str, str], alpha: float, metric_word: str = "") -> str:
    """E.g. "Genetic algorithm beat Random search in 7 of 10 seeds; median gain 0.012; p = 0.04
    (Wilcoxon signed-rank, Holm-corrected); A12 = 0.71, a medium effect." """
    a, b = pair["method_a"], pair["method_b"]
    # The better method: more seeds won when paired (the sentence counts them), else the median.
    if pair["paired"] and pair["wins"] != pair["losses"]:
        flip = pair["losses"] > pair["wins"]
    else:
        flip = pair["median_difference"] < 0 or (pair["median_difference"] == 0 and pair["a12"] < 0.5)
    better, worse = (b, a) if flip else (a, b)
    effect = pair["a12"] if not flip else 1.0 - pair["a12"]
    name_better, name_worse = labels.get(better, better), labels.get(worse, worse)
    gain = -pair["median_difference"] if flip else pair["median_difference"]
    gain_words = f"median gain {gain:.3g}{' ' + metric_word if metric_word else ''}"
    effect_words = f"A12 = {effect:.2f}, a {a12_magnitude(effect)} effect"
    if math.isnan(pair["p_value"]):
        return f"{name_better} against {name_worse}: too few repeats to test ({pair['n']}); {effect_words}."
    test = f"{pair['test']}, Holm-corrected"
    if pair["paired"] and pair["ties"] == pair["n"]:
        record = f"{name_better} and {name_worse} tied in all {pair['n']} seeds"
    elif pair["paired"]:
        wins = pair["losses"] if flip else pair["wins"]
        record = f"{name_better} beat {name_worse} in {wins} of {pair['n']} seeds"
    else:
        record = f"{name_better} ran above {name_worse} by median"
    if pair["p_adjusted"] < alpha:
        return f"{record}; {gain_words}; {p_text(pair['p_adjusted'])} ({test}); {effect_words}."
    return (f"{record}; {gain_words}; no evidence of a difference ({p_text(pair['p_adjusted'])}, {test}); "
            f"{effect_words}.")  # fmt: skip


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test of n seeds can give (every seed
    won by the same side): with few repeats no correction leaves room for significance."""
    return min(1.0, 2.0 / 2**n)
