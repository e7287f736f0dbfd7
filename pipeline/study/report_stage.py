"""The report stage: build the report from the search and champion results, and log it as the
artifacts of a ``report`` MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config.sections import StudyConfig
from pipeline.search.registry import study_methods
from pipeline.report.build import build_report
from pipeline.tracking.store import Tracker


def run_report_stage(config: StudyConfig, results_dir: Path, params_path: Path, prepared_dir: Path) -> dict[str, Any]:
    tracker = Tracker(config.mlflow.experiment)
    data_summary = (
        json.loads((prepared_dir / "dataset.json").read_text()) if (prepared_dir / "dataset.json").is_file() else None
    )
    run_id = tracker.start_run("report", params={"repeats": len(config.repeat_seeds())}, tags={"stage": "report"},
                               description="The study's report (report.md, report.html) and every evaluation "
                                           "(evaluations.csv) as artifacts; metrics: each method's means and "
                                           "the genes' importances.")  # fmt: skip
    host = config.report.mlflow_ui
    with tracker.ends_on_error(run_id):
        metrics = build_report(
            results_dir, config, study_methods(config), params_text=params_path.read_text(), commit=tracker.commit,
            data_summary=data_summary, ui_runs_url=tracker.runs_url(host), study_name=config.mlflow.experiment,
            ui_study_url=tracker.study_url(host),
        )  # fmt: skip
        for name in (
            "report.md",
            "report.html",
            "evaluations.csv",
            "plots/slices.png",
            "plots/parallel_coordinates.png",
        ):
            if (results_dir / name).is_file():
                tracker.log_artifact(run_id, results_dir / name)
        tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
    tracker.end_run(run_id)
    return metrics
