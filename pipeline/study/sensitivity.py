"""Sensitivity of the GA to its own settings (the ``ga_sensitivity`` stage): population size,
generations, mutation rate and input noise, each varied alone around the study's ``ga`` and
``train`` settings, as the studies ran them. Each value is a full GA search repeated over seeds on
the shared evaluator; the table and plot give the final best (mean and 95% CI over repeats).

A value that gives the same search as another (the base value listed under two settings) is
searched once. Each search is a ``run_search_stage`` of its own, so a killed stage resumes and an
unchanged value is reused, as in the search stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import parse_config
from pipeline.config.loading import variant_params
from pipeline.config.sections import SENSITIVITY_SETTINGS, StudyConfig
from pipeline.data import PreparedData
from pipeline.jsonio import write_json
from pipeline.study.checkpoint import fingerprint
from pipeline.study.search_stage import run_search_stage
from pipeline.report.sensitivity_table import plot_sensitivity, sensitivity_frame
from pipeline.report.statistics import summarise
from pipeline.task import task_of_dataset
from pipeline.tracking.store import Tracker


@dataclass(frozen=True)
class Variant:
    setting: str
    value: float
    config: StudyConfig
    key: str  # equal for variants that search alike

    @property
    def name(self) -> str:
        return f"{self.setting}-{self.value:g}"


def variants(config: StudyConfig) -> list[Variant]:
    """Every (setting, value) of ``sensitivity``, in order, validated as a whole study's params."""
    found = []
    for setting in SENSITIVITY_SETTINGS:
        for value in getattr(config.sensitivity, setting):
            variant = parse_config(variant_params(config, setting, value), source=f"sensitivity.{setting}={value}")
            searched = {name: getattr(variant, name).model_dump() for name in ("ga", "budget", "train")}
            found.append(Variant(setting, value, variant, fingerprint(searched)))
    return found


def run_sensitivity_stage(
    config: StudyConfig, prepared_dir: Path, results_dir: Path, checkpoint_dir: Path = Path("checkpoints")
) -> dict[str, Any]:
    """Search every variant (each distinct one once) and write ``results_dir/summary.json``,
    ``sensitivity.md`` and ``sensitivity.png``; with ``sensitivity.enabled: false`` only a summary
    saying so."""
    results_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)  # a DVC output, even when there is nothing to keep
    if not config.sensitivity.enabled:
        summary: dict[str, Any] = {"enabled": False}
        write_json(results_dir / "summary.json", summary)
        return summary
    config = config.with_prepared_task(PreparedData.open(prepared_dir).summary)
    task = task_of_dataset(config.data.dataset, config.data.task)
    searched: dict[str, tuple[str, list[dict[str, Any]]]] = {}  # variant key -> its folder, its repeats
    rows = []
    for variant in variants(config):
        if variant.key not in searched:
            print(f"[sensitivity] {variant.name}: {config.sensitivity.repeats} repeat(s) of the GA", flush=True)
            repeats = run_search_stage("ga", variant.config, prepared_dir, results_dir / variant.name,
                                       checkpoint_dir / variant.name)  # fmt: skip
            _tag_runs(variant, repeats)
            searched[variant.key] = (variant.name, repeats)
        folder, repeats = searched[variant.key]
        rows.append(_row(variant, folder, repeats, task.val_key))
    summary = {"enabled": True, "metric": task.val_key, "maximize": task.maximize,
               "repeats": config.sensitivity.repeats, "rows": rows}  # fmt: skip
    write_json(results_dir / "summary.json", summary)
    (results_dir / "sensitivity.md").write_text(sensitivity_frame(rows, task.label).to_markdown(index=False) + "\n")
    plot_sensitivity(rows, task.label, results_dir / "sensitivity.png")
    return summary


def _tag_runs(variant: Variant, repeats: list[dict[str, Any]]) -> None:
    """The variant on each repeat's stage run: the MLflow UI then filters by setting and value."""
    tracker = Tracker(variant.config.mlflow.experiment)
    for repeat in repeats:
        tracker.set_tags(repeat["stage_run_id"], {"sensitivity_setting": variant.setting,
                                                  "sensitivity_value": variant.value})  # fmt: skip


def _row(variant: Variant, folder: str, repeats: list[dict[str, Any]], val_key: str) -> dict[str, Any]:
    finals = [r.get(f"best_{val_key}") for r in repeats]
    stats = summarise([np.nan if f is None else f for f in finals])
    return {
        "setting": variant.setting, "value": variant.value, "folder": folder,
        "final_best": finals, "seeds": [r["seed"] for r in repeats],
        "evaluations": float(np.mean([r["evaluations"] for r in repeats])),
        "generations": float(np.mean([r.get("generations", np.nan) for r in repeats])),
        **{k: stats[k] for k in ("n", "mean", "std", "ci_low", "ci_high")},
    }  # fmt: skip
