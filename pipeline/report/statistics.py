"""How sure the study is: per-method intervals and pairwise tests over repeats, in plain words.

scipy does the statistics (bootstrap intervals, Wilcoxon signed-rank, Mann-Whitney U); this module
only chooses which applies, corrects for multiple comparisons (Holm), adds an effect size
(Vargha-Delaney A12) and says the result in a sentence a reviewer accepts. A NaN value is a failed
repeat: it is dropped (and counted), never compared.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
ALPHA = 0.05
TOO_FEW = "too few repeats"


# --- one method ------------------------------------------------------------------------------


def summarise(values: Sequence[float], rng_seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sd, median and a percentile-bootstrap interval of the mean over a method's repeats.

    Percentile rather than BCa: BCa's jackknife is unstable (and warns) with the handful of repeats a
    study affords. NaN values are dropped and counted as ``missing``. One value: no interval (NaN);
    all values equal: nothing to resample, the interval is the mean itself."""
    data = np.asarray(values, dtype=float)
    finite = data[np.isfinite(data)]
    result: dict[str, Any] = {"n": int(finite.size), "missing": int(data.size - finite.size), "confidence": confidence}
    if finite.size == 0:
        return result | {"mean": math.nan, "std": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(finite.mean())
    result |= {"mean": mean, "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
               "median": float(np.median(finite))}  # fmt: skip
    if finite.size < 2:
        return result | {"ci_low": math.nan, "ci_high": math.nan}
    if np.ptp(finite) == 0:
        return result | {"ci_low": mean, "ci_high": mean}
    interval = stats.bootstrap(
        (finite,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", rng=np.random.default_rng(rng_seed),
    ).confidence_interval  # fmt: skip
    return result | {"ci_low": float(interval.low), "ci_high": float(interval.high)}


# --- effect size -----------------------------------------------------------------------------


def a12(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> float:
    """Vargha-Delaney A12: the probability that a run of x beats a run of y, ties counting half.

    Unlike a p-value it says how much better, not how sure, so it stays readable with few repeats.
    NaN values are dropped; NaN when either side has no values."""
    xs, ys = _finite(x), _finite(y)
    if xs.size == 0 or ys.size == 0:
        return math.nan
    if not higher_is_better:
        xs, ys = -xs, -ys
    greater = (xs[:, None] > ys[None, :]).sum()
    equal = (xs[:, None] == ys[None, :]).sum()
    return float((greater + 0.5 * equal) / (xs.size * ys.size))


def a12_magnitude(value: float) -> str:
    """Vargha and Delaney's (2000) thresholds on |A12 - 0.5|: negligible, small, medium, large."""
    distance = abs(value - 0.5)
    if math.isnan(distance):
        return "undefined"
    if distance < 0.06:
        return "negligible"
    if distance < 0.14:
        return "small"
    if distance < 0.21:
        return "medium"
    return "large"


# --- tests -----------------------------------------------------------------------------------


def compare_pair(x: Sequence[float], y: Sequence[float], paired: bool, higher_is_better: bool = True) -> dict[str, Any]:
    """A two-sided test of method x against method y over their repeats.

    Paired (x[i] and y[i] ran the same seed): Wilcoxon signed-rank on the per-seed differences, with
    wins, losses and ties by seed and the median difference. Wilcoxon's ``zero_method="zsplit"``: a
    seed on which both tie counts half for each side rather than being dropped ("wilcox"), so ties
    weaken the evidence instead of vanishing from n. Unpaired: Mann-Whitney U and the difference of
    the medians (no per-seed record: a run of x has no counterpart in y). Differences are signed so
    that positive means x is better. NaN: the seed is dropped (both sides when paired)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if paired:
        if xs.shape != ys.shape:
            raise ValueError(f"paired runs need one value per seed on each side, got {xs.size} and {ys.size}")
        both = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = xs[both], ys[both]
    else:
        xs, ys = _finite(xs), _finite(ys)
    sign = 1.0 if higher_is_better else -1.0
    effect = a12(xs, ys, higher_is_better)
    result: dict[str, Any] = {"paired": paired, "higher_is_better": higher_is_better, "n": int(min(xs.size, ys.size)),
                              "n_x": int(xs.size), "n_y": int(ys.size), "a12": effect,
                              "magnitude": a12_magnitude(effect)}  # fmt: skip
    if paired:
        differences = sign * (xs - ys)
        result |= {"wins": int((differences > 0).sum()), "losses": int((differences < 0).sum()),
                   "ties": int((differences == 0).sum()),
                   "median_difference": float(np.median(differences)) if differences.size else math.nan}  # fmt: skip
    else:
        result["median_difference"] = float(sign * (np.median(xs) - np.median(ys))) if result["n"] else math.nan
    if result["n"] < 2:
        return result | {"test": TOO_FEW, "statistic": math.nan, "p_value": math.nan}
    # Identical runs on every seed (or every run equal) need no special case: scipy 1.17 gives p = 1
    # without a warning for zsplit and for Mann-Whitney U, and the tests hold it to that.
    if paired:
        name, test = "Wilcoxon signed-rank", stats.wilcoxon(xs, ys, zero_method="zsplit", alternative="two-sided")
    else:
        name, test = "Mann-Whitney U", stats.mannwhitneyu(xs, ys, alternative="two-sided")
    return result | {"test": name, "statistic": float(test.statistic), "p_value": float(test.pvalue)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: the smallest of m p-values times m, the next times m-1, ...,
    kept monotone and at most 1. Controls the chance of any false claim among all pairs, without
    Bonferroni's full penalty. NaN (an untested pair) stays NaN and does not count towards m."""
    adjusted = [math.nan] * len(p_values)
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test of n seeds can give (every seed
    won by the same side): with few repeats no correction leaves room for significance."""
    return min(1.0, 2.0 / 2**n)


# --- every pair, in words --------------------------------------------------------------------


def pairwise_comparisons(
    results: Mapping[str, Mapping[int, float]],
    *,
    higher_is_better: bool = True,
    alpha: float = ALPHA,
    labels: Mapping[str, str] | None = None,
    metric_word: str = "",
) -> list[dict[str, Any]]:
    """Every unordered pair of methods (in the mapping's order) tested on their per-seed results
    (``{method: {seed: value}}``), Holm-corrected over all pairs, each with the ``better`` method and
    a ``sentence`` naming it first.

    Paired by seed when both methods ran the same seeds and at least two of them finished on both
    (a seed that failed on either side is dropped from the pair); otherwise unpaired."""
    labels = labels or {}
    methods = list(results)
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            x, y, paired, seeds = _aligned(results[a], results[b])
            pairs.append({"method_a": a, "method_b": b, "seeds": seeds, **compare_pair(x, y, paired, higher_is_better)})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_adjusted"] = adjusted
        pair["better"], pair["worse"] = _ranked(pair)
        pair["sentence"] = comparison_sentence(pair, labels, alpha, metric_word)
    return pairs


def comparison_sentence(pair: Mapping[str, Any], labels: Mapping[str, str], alpha: float = ALPHA,
                        metric_word: str = "") -> str:  # fmt: skip
    """E.g. "Genetic algorithm beat Random search in 7 of 10 seeds; median gain 0.012; p = 0.04
    (Wilcoxon signed-rank, Holm-corrected); A12 = 0.71, a medium effect." Numbers are turned to
    favour the better method, so the sentence never reads "beat ... by -0.01"."""
    better, worse = _ranked(pair)
    flip = better != pair["method_a"]
    name_better, name_worse = labels.get(better, better), labels.get(worse, worse)
    effect = 1.0 - pair["a12"] if flip else pair["a12"]
    effect_words = f"A12 = {effect:.2f}, a {a12_magnitude(effect)} effect"
    if math.isnan(pair["p_value"]):
        return f"{name_better} against {name_worse}: {TOO_FEW} to test ({pair['n']}); {effect_words}."
    # When lower is better a positive difference is a reduction: "gain" would read as the metric rising.
    gain = (-pair["median_difference"] if flip else pair["median_difference"]) or 0.0  # never "-0"
    gain_word = "gain" if pair.get("higher_is_better", True) else "reduction"
    gain_words = f"median {gain_word} {gain:.3g}" + (f" in {metric_word}" if metric_word else "")
    if pair["paired"] and pair["ties"] == pair["n"]:
        record = f"{name_better} and {name_worse} tied in all {pair['n']} seeds"
    elif pair["paired"]:
        wins = pair["losses"] if flip else pair["wins"]
        record = f"{name_better} beat {name_worse} in {wins} of {pair['n']} seeds"
    else:
        direction = "higher" if pair.get("higher_is_better", True) else "lower"
        record = f"{name_better} had a {direction} median than {name_worse} (runs not paired by seed)"
    test = f"{pair['test']}, Holm-corrected"
    if pair["p_adjusted"] < alpha:
        return f"{record}; {gain_words}; {format_p(pair['p_adjusted'])} ({test}); {effect_words}."
    no_evidence = f"no evidence of a difference ({format_p(pair['p_adjusted'])}, {test})"
    return f"{record}; {gain_words}; {no_evidence}; {effect_words}."


def headline(summaries: Mapping[str, Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]],
             labels: Mapping[str, str] | None = None, metric: str = "validation accuracy",
             higher_is_better: bool = True, alpha: float = ALPHA) -> str:  # fmt: skip
    """One sentence: the method with the best mean and what the corrected tests say of it against
    each other method, e.g. "Random search reached the best mean validation accuracy (0.781, 95% CI
    0.772-0.790, 3 repeats); no evidence that it differs from Grid search (p = 0.62)." """
    labels = labels or {}
    ranked = sorted((m for m in summaries if summaries[m]["n"]), key=lambda m: summaries[m]["mean"],
                    reverse=higher_is_better)  # fmt: skip
    if not ranked:
        return "Every method failed: no results to compare."
    leader = ranked[0]
    name = labels.get(leader, leader)
    untested, level, beaten, beaten_by = [], [], [], []
    for pair in comparisons:
        if leader not in (pair["method_a"], pair["method_b"]):
            continue
        other = pair["method_b"] if pair["method_a"] == leader else pair["method_a"]
        other_p = f"{labels.get(other, other)} ({format_p(pair['p_adjusted'])})"
        if math.isnan(pair["p_adjusted"]):
            untested.append(labels.get(other, other))
        elif pair["p_adjusted"] >= alpha:
            level.append(other_p)
        elif _ranked(pair)[0] == leader:
            beaten.append(other_p)
        else:  # the best mean yet a significantly worse median: say so rather than hide it
            beaten_by.append(other_p)
    clauses = [f"{name} reached the best mean {metric} ({_mean_text(summaries[leader])})"]
    if level:
        clauses.append(f"no evidence that it differs from {_joined(level, 'or')}")
    if beaten:
        clauses.append(f"it beat {_joined(beaten, 'and')}")
    if beaten_by:
        clauses.append(f"{_joined(beaten_by, 'and')} beat it by median")
    if untested:
        clauses.append(f"{TOO_FEW} to test it against {_joined(untested, 'or')}")
    return "; ".join(clauses) + "."


def format_p(p: float) -> str:
    """A p-value as "p = 0.04" (two significant digits) or "p < 0.001" (more digits claim false precision)."""
    if math.isnan(p):
        return "p not computed"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


# --- helpers ---------------------------------------------------------------------------------


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    return data[np.isfinite(data)]


def _aligned(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[float], list[float], bool, list[int]]:
    """Two methods' values, aligned by seed when they ran the same seeds and >= 2 finished on both;
    else each method's finished values, unpaired. Also the seeds used (paired) or ``[]``."""
    common = sorted(s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s]))
    if set(a) == set(b) and len(common) >= 2:
        return [a[s] for s in common], [b[s] for s in common], True, common
    return [a[s] for s in sorted(a)], [b[s] for s in sorted(b)], False, []


def _ranked(pair: Mapping[str, Any]) -> tuple[str, str]:
    """(better, worse) of a compared pair: by the median difference; when it is zero, by seeds won
    (paired), then by A12. By seed count and median never disagree when both lean one way."""
    a, b = pair["method_a"], pair["method_b"]
    difference = pair["median_difference"]
    if difference != 0 and not math.isnan(difference):
        return (a, b) if difference > 0 else (b, a)
    if pair["paired"] and pair["wins"] != pair["losses"]:
        return (a, b) if pair["wins"] > pair["losses"] else (b, a)
    return (b, a) if pair["a12"] < 0.5 else (a, b)


def _mean_text(summary: Mapping[str, Any]) -> str:
    repeats = f"{summary['n']} repeat{'s' if summary['n'] != 1 else ''}"
    if not math.isfinite(summary["ci_low"]):
        return f"{summary['mean']:.3f}, {repeats}"
    level = f"{summary.get('confidence', CONFIDENCE):.0%}"
    return f"{summary['mean']:.3f}, {level} CI {summary['ci_low']:.3f}-{summary['ci_high']:.3f}, {repeats}"


def _joined(items: Sequence[str], word: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


# --- the Bayesian verdict: better, worse or practically equivalent ------------------------------

# A verdict is stated when its posterior probability reaches this; below it the pair is undecided.
VERDICT_PROBABILITY = 0.95


def bayesian_signed_rank(
    x: Sequence[float],
    y: Sequence[float],
    rope: float,
    *,
    higher_is_better: bool = True,
    nsamples: int = 20_000,
    seed: int = 0,
    decide_at: float = VERDICT_PROBABILITY,
) -> dict[str, Any]:
    """The Bayesian signed-rank test (Benavoli et al. 2014; ``baycomp.SignedRankTest``) of paired
    results ``x`` (the first method) and ``y``: the posterior probabilities that the first is
    better by more than ``rope``, practically equivalent (within ``rope``), or worse; the
    ``verdict`` names the region whose probability reaches ``decide_at``, else "undecided"."""
    import baycomp

    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[keep], y_arr[keep]
    if x_arr.size < 2:
        return {"n": int(x_arr.size), "rope": rope, "p_better": math.nan, "p_equivalent": math.nan,
                "p_worse": math.nan, "verdict": "undecided"}  # fmt: skip
    # baycomp: (P(x - y > rope), P(|x - y| <= rope), P(y - x > rope)), "left" meaning x is larger.
    larger, equivalent, smaller = baycomp.SignedRankTest.probs(x_arr, y_arr, rope, nsamples=nsamples,
                                                               random_state=seed)  # fmt: skip
    better, worse = (larger, smaller) if higher_is_better else (smaller, larger)
    verdict = "undecided"
    for name, p in (("better", better), ("equivalent", equivalent), ("worse", worse)):
        if p >= decide_at:
            verdict = name
    return {"n": int(x_arr.size), "rope": rope, "p_better": float(better), "p_equivalent": float(equivalent),
            "p_worse": float(worse), "verdict": verdict}  # fmt: skip


def verdict_sentence(first: str, second: str, result: Mapping[str, Any], unit: str = "") -> str:
    """One sentence: "GA is practically equivalent to TPE (within 0.01 regret) with probability 0.97"."""
    rope = f"{result['rope']:g}{(' ' + unit) if unit else ''}"
    probs = (f"P(better) {result['p_better']:.2f}, P(equivalent within {rope}) {result['p_equivalent']:.2f}, "
             f"P(worse) {result['p_worse']:.2f}")  # fmt: skip
    verdict = result["verdict"]
    if verdict == "undecided":
        return f"{first} vs {second}: undecided at this budget ({probs}; n={result['n']})."
    p = result[f"p_{verdict}"]
    said = {"better": "better than", "worse": "worse than", "equivalent": "practically equivalent to"}[verdict]
    return f"{first} is {said} {second} with probability {p:.2f} ({probs}; n={result['n']})."


def bayesian_verdicts(
    results: Mapping[str, Mapping[int, float]],
    rope: float,
    labels: Mapping[str, str],
    *,
    higher_is_better: bool = True,
    unit: str = "",
) -> list[dict[str, Any]]:
    """``bayesian_signed_rank`` of every unordered pair of methods on their per-seed results
    (``{method: {seed: value}}``, paired by the seeds both finished), each with its ``sentence``."""
    methods = list(results)
    verdicts = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            seeds = sorted(set(results[a]) & set(results[b]))
            x = [results[a][s] for s in seeds]
            y = [results[b][s] for s in seeds]
            result = bayesian_signed_rank(x, y, rope, higher_is_better=higher_is_better)
            sentence = verdict_sentence(labels.get(a, a), labels.get(b, b), result, unit)
            verdicts.append({"method_a": a, "method_b": b, **result, "sentence": sentence})
    return verdicts
