"""The report's view of the search space: the evaluations table equals the history files, the
importances equal Optuna's own on the same trials, and each repeat's best configuration is found."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from pipeline.config import SpaceConfig
from pipeline.space.dimensions import SearchSpace
from pipeline.report import search_space_views as views
from pipeline.report.build import EVALUATIONS_FILE, search_space_section
from pipeline.task import CLASSIFICATION
from tests.conftest import MIXED_SPACE

SPACE = SearchSpace.from_config(SpaceConfig.model_validate(MIXED_SPACE))


def synthetic_history(seed: int, count: int = 30) -> dict:
    """Evaluations whose score depends mostly on the learning rate (log scale), a little on momentum;
    every seventh one failed."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        genome = SPACE.sample(rng)
        score = 0.9 - 0.1 * abs(np.log10(genome["learning_rate"]) + 2) - 0.02 * genome["momentum"]
        failed = index % 7 == 6
        records.append({"index": index, "generation": None, "genome": genome, "genome_hash": f"h{seed}-{index}",
                        "seed": seed, "status": "failed" if failed else "finished",
                        "val_score": None if failed else float(score), "val_loss": None, "train_loss": None,
                        "train_seconds": 1.0 + index, "elapsed_seconds": 2.0 * index, "epochs": [{}] * 2,
                        "run_id": f"run{seed}{index}", "failure": "diverged" if failed else None})  # fmt: skip
    return {"evaluations": records, "generations": []}


HISTORIES = {m: [(r, s, synthetic_history(s + 100 * i)) for r, s in enumerate((42, 43))]
             for i, m in enumerate(("ga", "random"))}  # fmt: skip


def test_the_evaluations_table_has_one_row_per_record_equal_to_the_history_files(tmp_path: Path):
    path = tmp_path / EVALUATIONS_FILE
    views.evaluations_frame(HISTORIES).to_csv(path, index=False)
    frame = pd.read_csv(path)
    expected = [(m, r, s, rec) for m, repeats in HISTORIES.items() for r, s, h in repeats for rec in h["evaluations"]]
    assert len(frame) == len(expected)
    for (_, row), (method, repeat, seed, record) in zip(frame.iterrows(), expected):
        assert (row["method"], row["repeat"], row["seed"], row["index"]) == (method, repeat, seed, record["index"])
        assert row["status"] == record["status"] and row["run_id"] == record["run_id"]
        assert row["train_seconds"] == record["train_seconds"] and row["epochs_trained"] == 2
        if record["val_score"] is None:
            assert np.isnan(row["val_score"])
        else:
            assert row["val_score"] == pytest.approx(record["val_score"], rel=1e-12)
        for gene, value in record["genome"].items():
            assert row[f"gene.{gene}"] == pytest.approx(value, rel=1e-12) if isinstance(value, float) else value


@pytest.mark.slow  # seconds: fANOVA's forests
def test_importances_equal_optunas_own_on_the_same_trials(tmp_path: Path):
    frame = views.evaluations_frame(HISTORIES)
    ours = views.parameter_importance(views.importance_study(frame, SPACE.dimensions, maximize=True))
    # Optuna's own, from the history files directly
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "momentum": optuna.distributions.FloatDistribution(0.0, 0.9),
        "weight_decay": optuna.distributions.FloatDistribution(0.0, 0.1),
        "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128, 256]),
        "epochs": optuna.distributions.IntDistribution(1, 20, log=True),
    }
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=rec["genome"], distributions=distributions,
                                                value=rec["val_score"])
                      for repeats in HISTORIES.values() for _, _, h in repeats for rec in h["evaluations"]
                      if rec["status"] == "finished"])  # fmt: skip
    theirs = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert ours == pytest.approx(dict(theirs))
    assert next(iter(ours)) == "learning_rate"  # the gene the score depends on ranks first


@pytest.mark.slow  # seconds: fANOVA's forests
def test_the_report_section_shows_each_repeats_best_and_the_importances(tmp_path: Path):
    from pipeline.report.build import Repeat

    runs = {m: [Repeat({"seed": s, "repeat": r}, h) for r, s, h in repeats] for m, repeats in HISTORIES.items()}
    config = SimpleNamespace(space=SpaceConfig.model_validate(MIXED_SPACE))
    blocks, importance = search_space_section(tmp_path, runs, config, CLASSIFICATION, tmp_path)
    best = next(b.frame for b in blocks if getattr(b, "frame", None) is not None and "repeat" in b.frame)
    for method, repeats in HISTORIES.items():
        for repeat, _, history in repeats:
            finished = [r for r in history["evaluations"] if r["val_score"] is not None]
            top = max(finished, key=lambda r: r["val_score"])
            row = best[
                (best["repeat"] == repeat)
                & (best["method"] == {"ga": "Genetic algorithm", "random": "Random search"}[method])
            ]
            assert row["score"].item() == pytest.approx(top["val_score"])
    assert set(importance) == set(SPACE.names) and sum(importance.values()) == pytest.approx(1.0)
    assert (tmp_path / "slices.png").is_file() and (tmp_path / "parallel_coordinates.png").is_file()
    assert json.loads(json.dumps(importance))  # plain floats: logged as report metrics


def test_make_study_ends_with_the_reports_first_sentence_in_plain_text(tmp_path: Path):
    from pipeline.study.summary import headline

    (tmp_path / "report.md").write_text("# evohpo: GA vs TPE\n\n**Genetic algorithm** is the best method here: ...\n\n"
                                        "Champion: ...\n")  # fmt: skip
    assert headline(tmp_path / "report.md") == "Genetic algorithm is the best method here: ..."


def test_the_champion_prints_a_line_per_retraining():
    from pipeline.study.champion import progress_line
    from pipeline.task import CLASSIFICATION

    result = {"val_acc": 0.71, "test_acc": 0.7, "train_seconds": 12.3}
    assert progress_line(3, 12, "ga", 42, result, CLASSIFICATION, reused=False) == (
        "[champion] 3/12 ga seed 42: validation accuracy 0.7100, test accuracy 0.7000, retrained in 12.3s"
    )
    assert progress_line(4, 12, "tpe", 7, {"failure": "diverged"}, CLASSIFICATION, reused=True).endswith(
        "FAILED (diverged), reused"
    )
