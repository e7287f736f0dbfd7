"""The study's statistics, each checked against scipy (or a brute-force count) on the same numbers,
the degenerate cases a small study hits (one repeat, equal runs, failed runs), and the sentences."""

from __future__ import annotations

import math
import warnings
from itertools import product

import numpy as np
import pytest
from scipy.stats import bootstrap, mannwhitneyu, wilcoxon

from pipeline.report.statistics import (
    a12,
    a12_magnitude,
    compare_pair,
    format_p,
    headline,
    holm,
    pairwise_comparisons,
    smallest_wilcoxon_p,
    summarise,
)

SEEDS = list(range(10))
LABELS = {"ga": "Genetic algorithm", "grid": "Grid search", "random": "Random search"}


def study() -> dict[str, dict[int, float]]:
    """Ten seeds: the GA clearly above random search on every seed, grid level with random search.
    The GA comes last so that the better method of its pairs is ``method_b``."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.70, 0.80, len(SEEDS))
    grid = base + rng.normal(0.0, 0.005, len(SEEDS))
    ga = base + 0.02 + rng.normal(0.0, 0.003, len(SEEDS))
    return {
        "random": dict(zip(SEEDS, base.tolist())),
        "grid": dict(zip(SEEDS, grid.tolist())),
        "ga": dict(zip(SEEDS, ga.tolist())),
    }


def brute_a12(x: list[float], y: list[float]) -> float:
    return sum((a > b) + 0.5 * (a == b) for a, b in product(x, y)) / (len(x) * len(y))


def values(scores: dict[int, float]) -> list[float]:
    return [scores[s] for s in SEEDS]


@pytest.fixture
def no_warnings():
    """Degenerate data must be handled here, not left to scipy's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- summarise -------------------------------------------------------------------------------


def test_summary_matches_numpy_and_scipys_bootstrap_with_the_same_rng():
    data = [0.71, 0.74, 0.69, 0.78, 0.75, 0.73]
    summary = summarise(data, rng_seed=3)
    assert summary["n"] == 6 and summary["missing"] == 0
    assert summary["mean"] == pytest.approx(np.mean(data))
    assert summary["std"] == pytest.approx(np.std(data, ddof=1))
    assert summary["median"] == pytest.approx(np.median(data))
    ci = bootstrap((np.array(data),), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                   rng=np.random.default_rng(3)).confidence_interval  # fmt: skip
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert summary["ci_low"] < summary["mean"] < summary["ci_high"]


def test_the_confidence_level_reaches_the_bootstrap():
    data = [0.71, 0.74, 0.69, 0.78, 0.75, 0.73]
    narrow, wide = summarise(data, confidence=0.80), summarise(data, confidence=0.99)
    ci = bootstrap((np.array(data),), np.mean, confidence_level=0.80, n_resamples=9999, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert (narrow["ci_low"], narrow["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert wide["ci_low"] < narrow["ci_low"] and narrow["ci_high"] < wide["ci_high"]


def test_failed_repeats_are_dropped_and_counted():
    summary = summarise([0.7, math.nan, 0.8, math.nan, 0.9])
    assert summary["n"] == 3 and summary["missing"] == 2
    assert summary["mean"] == pytest.approx(0.8) and summary["median"] == pytest.approx(0.8)
    assert summary["std"] == pytest.approx(0.1)
    assert summary == summarise([0.7, 0.8, 0.9]) | {"missing": 2}


def test_one_repeat_has_a_mean_but_no_spread_or_interval(no_warnings):
    summary = summarise([0.75])
    assert summary["n"] == 1 and summary["mean"] == 0.75 and summary["median"] == 0.75
    assert math.isnan(summary["std"]) and math.isnan(summary["ci_low"]) and math.isnan(summary["ci_high"])


def test_equal_repeats_have_the_mean_as_their_interval(no_warnings):
    summary = summarise([0.75, 0.75, 0.75])
    assert summary["std"] == 0.0
    assert summary["ci_low"] == summary["ci_high"] == 0.75


def test_no_finished_repeat_is_all_nan(no_warnings):
    summary = summarise([math.nan, math.nan])
    assert summary["n"] == 0 and summary["missing"] == 2
    assert all(math.isnan(summary[k]) for k in ("mean", "std", "median", "ci_low", "ci_high"))


# --- A12 -------------------------------------------------------------------------------------


def test_a12_is_the_brute_force_share_of_pairs_won_with_ties_half():
    x, y = [0.7, 0.8, 0.8, 0.9], [0.8, 0.6, 0.75]
    assert a12(x, y) == pytest.approx(brute_a12(x, y))
    assert a12(x, y) == pytest.approx(9 / 12)  # 7 of 12 pairs won, two tied
    assert a12(y, x) == pytest.approx(1 - a12(x, y))
    assert a12(x, x) == 0.5


def test_a12_when_lower_is_better_counts_the_lower_value_as_the_win():
    x, y = [0.7, 0.8, 0.8, 0.9], [0.8, 0.6, 0.75]
    assert a12(x, y, higher_is_better=False) == pytest.approx(brute_a12(y, x))
    assert a12(x, y, higher_is_better=False) == pytest.approx(1 - a12(x, y))


def test_a12_drops_failed_runs():
    assert a12([0.9, math.nan], [0.8, 0.85]) == 1.0
    assert math.isnan(a12([math.nan], [0.8]))


@pytest.mark.parametrize(
    ("value", "words"),
    [(0.5, "negligible"), (0.55, "negligible"), (0.45, "negligible"), (0.62, "small"), (0.38, "small"),
     (0.68, "medium"), (0.32, "medium"), (0.8, "large"), (0.25, "large"), (1.0, "large")],
)  # fmt: skip
def test_a12_magnitude_follows_vargha_and_delaney(value, words):
    assert a12_magnitude(value) == words


# --- compare_pair ----------------------------------------------------------------------------


def test_paired_runs_use_wilcoxon_with_zsplit_and_count_seeds():
    x = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.80]
    y = [0.78, 0.82, 0.80, 0.80, 0.77, 0.79, 0.76]  # x wins 5, loses 1, ties 1
    result = compare_pair(x, y, paired=True)
    expected = wilcoxon(x, y, zero_method="zsplit", alternative="two-sided")
    assert result["test"] == "Wilcoxon signed-rank"
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert (result["wins"], result["losses"], result["ties"], result["n"]) == (5, 1, 1, 7)
    assert result["median_difference"] == pytest.approx(np.median(np.subtract(x, y)))
    assert result["a12"] == pytest.approx(brute_a12(x, y))
    assert result["magnitude"] == a12_magnitude(brute_a12(x, y))


def test_lower_is_better_swaps_wins_and_the_sign_but_not_the_p_value():
    x = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.80]
    y = [0.78, 0.82, 0.80, 0.80, 0.77, 0.79, 0.76]
    higher, lower = compare_pair(x, y, paired=True), compare_pair(x, y, paired=True, higher_is_better=False)
    assert (lower["wins"], lower["losses"], lower["ties"]) == (1, 5, 1)
    assert lower["median_difference"] == pytest.approx(-higher["median_difference"])
    assert lower["a12"] == pytest.approx(1 - higher["a12"])
    assert lower["p_value"] == pytest.approx(higher["p_value"])


def test_identical_paired_runs_give_p_one_without_a_warning(no_warnings):
    x = [0.8, 0.7, 0.9]
    result = compare_pair(x, list(x), paired=True)
    assert result["p_value"] == 1.0 and result["ties"] == 3 and result["wins"] == result["losses"] == 0
    assert result["statistic"] == pytest.approx(wilcoxon(x, x, zero_method="zsplit").statistic)
    assert result["a12"] == 0.5 and result["median_difference"] == 0.0


def test_one_repeat_is_too_few_to_test(no_warnings):
    for paired in (True, False):
        result = compare_pair([0.9], [0.8], paired=paired)
        assert result["test"] == "too few repeats" and math.isnan(result["p_value"])
        assert result["a12"] == 1.0


def test_paired_runs_drop_a_seed_that_failed_on_either_side():
    x = [0.80, math.nan, 0.79, 0.85, 0.81]
    y = [0.78, 0.82, 0.80, math.nan, 0.77]
    result = compare_pair(x, y, paired=True)
    kept_x, kept_y = [0.80, 0.79, 0.81], [0.78, 0.80, 0.77]
    assert result["n"] == 3 and (result["wins"], result["losses"]) == (2, 1)
    assert result["p_value"] == pytest.approx(wilcoxon(kept_x, kept_y, zero_method="zsplit").pvalue)


def test_paired_runs_need_one_value_per_seed():
    with pytest.raises(ValueError, match="one value per seed"):
        compare_pair([0.8, 0.7], [0.8, 0.7, 0.6], paired=True)


def test_unpaired_runs_use_mann_whitney_and_report_no_seed_record():
    x, y = [0.80, 0.82, 0.79, 0.85, 0.81], [0.78, 0.76, 0.80, 0.77]
    result = compare_pair(x, y, paired=False)
    expected = mannwhitneyu(x, y, alternative="two-sided")
    assert result["test"] == "Mann-Whitney U"
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["median_difference"] == pytest.approx(np.median(x) - np.median(y))
    assert result["a12"] == pytest.approx(brute_a12(x, y))
    assert "wins" not in result and (result["n_x"], result["n_y"]) == (5, 4)


def test_equal_unpaired_runs_give_p_one_without_a_warning(no_warnings):
    result = compare_pair([0.8, 0.8, 0.8], [0.8, 0.8], paired=False)
    assert result["p_value"] == 1.0 and result["a12"] == 0.5
    assert result["statistic"] == pytest.approx(mannwhitneyu([0.8, 0.8, 0.8], [0.8, 0.8]).statistic)


# --- Holm ------------------------------------------------------------------------------------


def test_holm_matches_a_hand_worked_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_passes_nan_through_without_counting_it():
    # m = 3 (not 4): 0.02*3 = 0.06; 0.55*2 = 1.1 -> capped at 1; 0.6*1 -> raised to 1 (monotone).
    adjusted = holm([0.02, math.nan, 0.6, 0.55])
    assert adjusted[0] == pytest.approx(0.06)
    assert adjusted[2] == 1.0 and adjusted[3] == 1.0 and math.isnan(adjusted[1])
    assert holm([]) == []


def test_the_smallest_wilcoxon_p_is_what_scipys_exact_test_gives_a_clean_sweep():
    for n in range(2, 9):
        sweep = wilcoxon(np.arange(1.0, n + 1), np.zeros(n), zero_method="zsplit").pvalue
        assert smallest_wilcoxon_p(n) == pytest.approx(sweep)


# --- pairwise comparisons and sentences ------------------------------------------------------


def test_every_pair_is_tested_by_seed_and_holm_corrected_as_scipy_computes():
    results = study()
    pairs = pairwise_comparisons(results, labels=LABELS)
    assert [(p["method_a"], p["method_b"]) for p in pairs] == [("random", "grid"), ("random", "ga"), ("grid", "ga")]
    raw = [wilcoxon(values(results[a]), values(results[b]), zero_method="zsplit").pvalue
           for a, b in [("random", "grid"), ("random", "ga"), ("grid", "ga")]]  # fmt: skip
    assert [p["p_value"] for p in pairs] == pytest.approx(raw)
    assert [p["p_adjusted"] for p in pairs] == pytest.approx(holm(raw))
    assert all(p["paired"] and p["seeds"] == SEEDS for p in pairs)


def test_a_significant_pair_names_the_winner_first_with_its_seeds_won():
    results = study()
    random_ga = pairwise_comparisons(results, labels=LABELS)[1]
    assert random_ga["p_adjusted"] < 0.05 and random_ga["better"] == "ga"
    effect = brute_a12(values(results["ga"]), values(results["random"]))
    gain = np.median(np.subtract(values(results["ga"]), values(results["random"])))
    assert random_ga["sentence"] == (
        f"Genetic algorithm beat Random search in 10 of 10 seeds; median gain {gain:.3g}; "
        f"{format_p(random_ga['p_adjusted'])} (Wilcoxon signed-rank, Holm-corrected); "
        f"A12 = {effect:.2f}, a {a12_magnitude(effect)} effect."
    )
    grid_ga = pairwise_comparisons(results, labels=LABELS)[2]
    won = int(np.sum(np.array(values(results["ga"])) > np.array(values(results["grid"]))))
    assert grid_ga["sentence"].startswith(f"Genetic algorithm beat Grid search in {won} of 10 seeds")


def test_a_pair_above_alpha_says_no_evidence_of_a_difference():
    random_grid = pairwise_comparisons(study(), labels=LABELS)[0]
    assert random_grid["p_adjusted"] >= 0.05
    assert f"no evidence of a difference ({format_p(random_grid['p_adjusted'])}, Wilcoxon signed-rank, " \
           "Holm-corrected)" in random_grid["sentence"]  # fmt: skip
    # The same pair against a looser alpha is called significant, so the wording follows alpha.
    loose = pairwise_comparisons(study(), labels=LABELS, alpha=1.01)[0]
    assert "no evidence" not in loose["sentence"]


def test_significance_is_judged_on_the_holm_corrected_p_not_the_raw_one():
    # Six seeds all won by "a": the raw p is 2/2**6 = 0.031, but Holm over three pairs lifts it above 0.05.
    six = range(6)
    results = {"a": {s: 0.9 + 0.01 * s for s in six}, "b": {s: 0.8 + 0.01 * s for s in six},
               "c": {s: 0.8 + 0.01 * s + (0.001 if s % 2 else -0.001) for s in six}}  # fmt: skip
    a_b = pairwise_comparisons(results)[0]
    assert a_b["p_value"] == pytest.approx(0.03125) and a_b["p_adjusted"] >= 0.05
    assert a_b["sentence"].startswith("a beat b in 6 of 6 seeds; ")
    assert "no evidence of a difference" in a_b["sentence"]


def test_lower_is_better_names_the_lower_method_as_the_winner():
    error = {"a": {s: 1.0 + 0.1 * s for s in SEEDS}, "b": {s: 0.9 + 0.1 * s - 0.001 * s for s in SEEDS}}
    pair = pairwise_comparisons(error, higher_is_better=False, metric_word="MAE")[0]
    assert pair["better"] == "b"
    assert pair["sentence"].startswith("b beat a in 10 of 10 seeds; median reduction ")
    assert " in MAE; p = " in pair["sentence"]
    higher = pairwise_comparisons(error, higher_is_better=True)[0]
    assert higher["better"] == "a" and higher["sentence"].startswith("a beat b in 10 of 10 seeds; median gain ")


def test_different_seeds_are_compared_unpaired():
    results = {"ga": {0: 0.80, 1: 0.82, 2: 0.81}, "grid": {3: 0.70, 4: 0.71, 5: 0.72}}
    pair = pairwise_comparisons(results, labels=LABELS)[0]
    assert not pair["paired"] and pair["test"] == "Mann-Whitney U"
    assert pair["p_value"] == pytest.approx(mannwhitneyu([0.80, 0.82, 0.81], [0.70, 0.71, 0.72]).pvalue)
    assert pair["sentence"].startswith("Genetic algorithm had a higher median than Grid search (runs not paired")
    assert "seeds" not in pair["sentence"].split(";")[0].replace("by seed", "")
    # Two common seeds are not enough: a method that ran an extra seed is not paired (its runs differ).
    overlapping = {"ga": {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.83}, "grid": {0: 0.70, 1: 0.71, 2: 0.72}}
    pair = pairwise_comparisons(overlapping)[0]
    assert not pair["paired"] and (pair["n_x"], pair["n_y"]) == (4, 3) and pair["seeds"] == []


def test_a_failed_seed_is_dropped_from_a_paired_comparison():
    results = study()
    results["grid"][4] = math.nan
    pair = pairwise_comparisons(results, labels=LABELS)[2]  # grid against ga
    kept = [s for s in SEEDS if s != 4]
    assert pair["paired"] and pair["seeds"] == kept and pair["n"] == 9
    expected = wilcoxon([results["grid"][s] for s in kept], [results["ga"][s] for s in kept], zero_method="zsplit")
    assert pair["p_value"] == pytest.approx(expected.pvalue)
    assert " of 9 seeds" in pair["sentence"]


def test_a_single_repeat_says_too_few_to_test(no_warnings):
    pair = pairwise_comparisons({"ga": {0: 0.9}, "grid": {0: 0.8}}, labels=LABELS)[0]
    assert math.isnan(pair["p_adjusted"]) and not pair["paired"]
    assert pair["sentence"] == "Genetic algorithm against Grid search: too few repeats to test (1); A12 = 1.00, a " \
                               "large effect."  # fmt: skip


def test_identical_methods_tie_on_every_seed(no_warnings):
    same = {s: 0.8 for s in range(3)}
    pair = pairwise_comparisons({"grid": same, "random": dict(same)}, labels=LABELS)[0]
    assert pair["sentence"].startswith("Grid search and Random search tied in all 3 seeds")
    assert "no evidence of a difference (p = 1, " in pair["sentence"]


def test_with_a_zero_median_difference_the_method_that_won_more_seeds_comes_first():
    # Per-seed differences a - b: +1, +1, 0, 0, 0, -50 (median 0); yet b's one huge run makes A12 < 0.5.
    a, b = [1, 2, 3, 4, 5, 0], [0, 1, 3, 4, 5, 50]
    pair = pairwise_comparisons({"a": dict(enumerate(a)), "b": dict(enumerate(b))})[0]
    assert pair["median_difference"] == 0 and pair["a12"] == pytest.approx(brute_a12(a, b)) and pair["a12"] < 0.5
    assert pair["better"] == "a"
    assert pair["sentence"].startswith("a beat b in 2 of 6 seeds; median gain 0; ")
    assert pair["sentence"].endswith(f"A12 = {brute_a12(a, b):.2f}, a {a12_magnitude(brute_a12(a, b))} effect.")
    # Turned the other way (b first), a zero median difference must not read "median gain -0".
    flipped = pairwise_comparisons({"b": dict(enumerate(b)), "a": dict(enumerate(a))})[0]
    assert flipped["sentence"].startswith("a beat b in 2 of 6 seeds; median gain 0; ")


@pytest.mark.parametrize(("p", "text"), [(0.04, "p = 0.04"), (0.01234, "p = 0.012"), (0.41, "p = 0.41"),
                                         (1.0, "p = 1"), (0.0004, "p < 0.001")])  # fmt: skip
def test_p_is_written_to_two_significant_digits(p, text):
    assert format_p(p) == text


def test_the_headline_names_the_best_mean_and_what_the_tests_say_of_it():
    results = study()
    summaries = {m: summarise(list(v.values())) for m, v in results.items()}
    pairs = pairwise_comparisons(results, labels=LABELS)
    ga = summaries["ga"]
    p_random, p_grid = format_p(pairs[1]["p_adjusted"]), format_p(pairs[2]["p_adjusted"])
    assert headline(summaries, pairs, LABELS) == (
        f"Genetic algorithm reached the best mean validation accuracy ({ga['mean']:.3f}, 95% CI "
        f"{ga['ci_low']:.3f}-{ga['ci_high']:.3f}, 10 repeats); it beat Random search ({p_random}) and Grid search "
        f"({p_grid})."
    )
    level = {m: results[m] for m in ("random", "grid")}
    level_summaries = {m: summarise(list(v.values())) for m, v in level.items()}
    leader = max(level_summaries, key=lambda m: level_summaries[m]["mean"])
    text = headline(level_summaries, pairwise_comparisons(level, labels=LABELS), LABELS)
    assert text.startswith(f"{LABELS[leader]} reached the best mean")
    assert "no evidence that it differs from" in text


def test_the_headline_when_lower_is_better_names_the_lowest_mean():
    error = {"ga": {s: 40.0 + s for s in SEEDS}, "grid": {s: 50.0 + s for s in SEEDS}}
    summaries = {m: summarise(list(v.values())) for m, v in error.items()}
    pairs = pairwise_comparisons(error, labels=LABELS, higher_is_better=False)
    text = headline(summaries, pairs, LABELS, metric="validation MAE", higher_is_better=False)
    assert text.startswith(f"Genetic algorithm reached the best mean validation MAE ({summaries['ga']['mean']:.3f}")
    assert f"it beat Grid search ({format_p(pairs[0]['p_adjusted'])})" in text
    assert headline(summaries, pairs, LABELS, metric="validation MAE").startswith("Grid search reached")


def test_the_headline_when_everything_failed():
    assert headline({"ga": summarise([math.nan])}, []) == "Every method failed: no results to compare."
