"""MLflow runs of one search stage, as the runner reports its progress: the stage's run, a run per
group (the GA's generation) under it, and a run per trained individual under that.

An individual's run is created before it trains and finished from its record after the record is
in the checkpoint; a resumed stage closes what the killed one left RUNNING: from the record where
the individual finished, as KILLED where it did not.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from pipeline.evaluation import EvaluationRecord, Proposal
from pipeline.search.protocol import Group, GroupReport
from pipeline.space import genome_seed
from pipeline.tracking.store import Tracker


def mlflow_params(genome: Mapping[str, Any]) -> dict[str, Any]:
    """A genome as MLflow params: scalars as they are, layer lists as JSON plus their length."""
    params: dict[str, Any] = {}
    for key, value in genome.items():
        if isinstance(value, list):
            params[f"{key}_layers"] = len(value)
            params[key] = json.dumps(value, separators=(",", ":"))
        else:
            params[key] = value
    return params


class SearchTracking:
    """The MLflow side of one search stage; every method takes and returns plain run ids."""

    def __init__(self, tracker: Tracker, study_seed: int, val_key: str = "val_acc") -> None:
        self.tracker = tracker
        self.study_seed = study_seed
        self.val_key = val_key  # the task's validation metric, as logged: val_acc or val_mae

    def start_stage(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
                    description: str | None = None) -> str:  # fmt: skip
        return self.tracker.start_run(name, params=params, tags=tags, description=description)

    def reopen_stage(
        self, stage_run: str, group_runs: Sequence[str], records: Sequence[EvaluationRecord]
    ) -> str | None:
        """Set a killed stage's run RUNNING again and settle the runs under it with the checkpoint,
        so that no genome ends FINISHED twice and nothing stays RUNNING:

        - an individual left RUNNING whose record is in the checkpoint finished before the kill:
          closed from its record;
        - one left RUNNING without a record was interrupted: KILLED (it is retrained);
        - a FINISHED or FAILED one without a record lost it (a damaged checkpoint): KILLED and
          tagged ``superseded`` (it is retrained as a new run);
        - a group run the checkpoint does not know (created just before the kill, or its line lost
          with a damaged checkpoint): KILLED, and the individuals under it settled by the rules above.

        Returns a sentence saying what was settled, or None when nothing was."""
        self.tracker.resume_run(stage_run)
        by_run = {r.run_id: r for r in records if r.run_id is not None}
        counts = {"closed from their records": 0, "marked KILLED": 0, "superseded (record lost)": 0}
        under_stage = self.tracker.children([stage_run])
        lost_groups = [r.info.run_id for r in under_stage
                       if "genome_hash" not in r.data.tags and r.info.run_id not in group_runs]  # fmt: skip
        for run in under_stage + self.tracker.children([*group_runs, *lost_groups]):
            run_id, status = run.info.run_id, run.info.status
            if run_id in group_runs:
                continue  # resumed when its generation is replayed
            if "genome_hash" not in run.data.tags:
                if status == "RUNNING":  # a group run created just before the kill
                    self.tracker.end_run(run_id, "KILLED")
                    counts["marked KILLED"] += 1
                elif status == "FINISHED":  # a whole generation whose checkpoint lines were lost
                    self.tracker.set_tags(run_id, {"superseded": "its checkpoint lines were lost; rerun as a new run"})
                    self.tracker.end_run(run_id, "KILLED")
                    counts["superseded (record lost)"] += 1
                continue
            if run_id in by_run:
                if status == "RUNNING":
                    self.finish_individual(by_run[run_id])
                    counts["closed from their records"] += 1
            elif status == "RUNNING":
                self.tracker.end_run(run_id, "KILLED")
                counts["marked KILLED"] += 1
            elif status in ("FINISHED", "FAILED"):
                self.tracker.set_tags(run_id, {"superseded": "its checkpoint record was lost; retrained as a new run"})
                self.tracker.end_run(run_id, "KILLED")
                counts["superseded (record lost)"] += 1
        settled = [f"{n} {what}" for what, n in counts.items() if n]
        return f"runs left by the killed stage: {', '.join(settled)}" if settled else None

    def start_group(self, group: Group, stage_run: str) -> str:
        return self.tracker.start_run(group.name, parent_id=stage_run, params=group.params, tags=group.tags,
                                      description=f"{group.name}: the population's statistics and operator settings; "
                                                  "its trained individuals are the runs below")  # fmt: skip

    def resume_group(self, run_id: str) -> None:
        self.tracker.resume_run(run_id)

    def finish_group(self, run_id: str, group: Group, report: GroupReport | None, stage_run: str) -> None:
        if report is not None:
            self.tracker.log_metrics(run_id, report.metrics)
            self.tracker.log_metrics(stage_run, report.stage_metrics, step=group.number)
            self.tracker.set_tags(run_id, report.tags)
        self.tracker.end_run(run_id)

    def start_individual(self, proposal: Proposal, parent_run: str) -> str:
        """A RUNNING run for a proposal that starts training, with its genes as params and its tags."""
        seed = genome_seed(self.study_seed, proposal.genome)
        return self.tracker.start_run(
            proposal.name,
            parent_id=parent_run,
            params={**mlflow_params(proposal.genome), "seed": seed},
            tags={**proposal.tags, "genome_hash": proposal.genome_hash},
            description="One evaluated individual: its genes as params, per-epoch training and validation "
            "curves, its final validation score and training seconds.",
        )

    def finish_individual(self, record: EvaluationRecord) -> None:
        """Per-epoch curves, final metrics and status of an individual's run, from its record."""
        run_id = record.run_id
        if run_id is None:
            return
        if not record.finished:
            self.tracker.set_tags(run_id, {"failure_reason": (record.failure or "")[:5000]})
            self.tracker.log_metrics(run_id, {"train_seconds": record.train_seconds})
            self.tracker.end_run(run_id, "FAILED")
            return
        for epoch, metrics in enumerate(record.epochs, start=record.first_epoch):
            self.tracker.log_metrics(run_id, metrics, step=epoch)
        final = {
            f"final_{self.val_key}": record.val_score, "final_val_loss": record.val_loss, "train_seconds": record.train_seconds,
            "epochs_trained": len(record.epochs), "transferred_fraction": record.transferred_fraction,
        }  # fmt: skip
        # A looked-up evaluation (a benchmark table) has a score but no loss.
        self.tracker.log_metrics(run_id, {k: v for k, v in final.items() if v is not None})
        tags: dict[str, Any] = {"init": record.init}
        if record.rung is not None:  # multi-fidelity: the rung its score comes from
            tags |= {"rung": record.rung, "stopped_early": record.stopped_early}
        self.tracker.set_tags(run_id, tags)
        self.tracker.end_run(run_id, "FINISHED")

    def kill_runs(self, run_ids: Sequence[str]) -> None:
        """Runs a kill (Ctrl-C, SIGTERM) stopped before their record was written (a resume retrains
        them), or the group run they were in."""
        for run_id in run_ids:
            self.tracker.end_run(run_id, "KILLED")

    def finish_stage(self, stage_run: str, summary: Mapping[str, Any]) -> None:
        keys = (
            f"best_{self.val_key}",
            "best_val_loss",
            "evaluations",
            "failed",
            "epochs_trained",
            "total_train_seconds",
            "train_seconds_to_best",
            "wall_seconds_to_best",
        )
        self.tracker.log_metrics(stage_run, {k: summary[k] for k in keys})
        self.tracker.set_tags(
            stage_run, {"best_run_id": summary["best_run_id"], "best_genome_hash": summary["best_genome_hash"]}
        )
        self.tracker.end_run(stage_run)

    def fail_stage(self, stage_run: str, status: str, reason: str | None = None) -> None:
        if reason is not None:
            self.tracker.set_tags(stage_run, {"failure_reason": reason})
        self.tracker.end_run(stage_run, status)
