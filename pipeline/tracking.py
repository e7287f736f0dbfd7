"""MLflow tracking: one experiment per study, runs nested stage -> generation -> individual.

Uses ``MlflowClient`` with explicit parent ids (the ``mlflow.parentRunId`` tag), which nests
correctly from any process, unlike the fluent API's implicit active-run stack.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"


class TrackingError(RuntimeError):
    """MLflow's store cannot be used; the message says which and what to do."""


def project_root() -> Path:
    """The repository root: DVC sets ``DVC_ROOT`` for its stages; otherwise the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or project_root()) / 'mlruns' / 'mlflow.db'}"


def _prepare_sqlite_store(uri: str) -> None:
    """Create the store's folder and switch a new database to WAL, so parallel writers do not block."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=wal")
    except (OSError, sqlite3.Error) as exc:
        raise TrackingError(f"{path}: cannot open the MLflow store ({exc}); check that {path.parent} is writable") from None


def _param_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class Tracker:
    """The study's MLflow experiment; every method returns or takes plain run ids."""

    def __init__(self, experiment: str, root: Path | None = None) -> None:
        root = root or project_root()
        self.uri = tracking_uri(root)
        _prepare_sqlite_store(self.uri)
        if self.uri.startswith(("http://", "https://")):
            # Fail in seconds, not after MLflow's default minutes of retries, when a server is down.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=(root / "mlruns" / "artifacts").as_uri()
                )
            else:
                self.experiment_id = found.experiment_id
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable store
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TrackingError(
                f"MLflow tracking store {self.uri} is not usable ({first_line}); "
                "start the server, fix MLFLOW_TRACKING_URI, or unset it to use mlruns/mlflow.db"
            ) from None
        self.experiment = experiment

    def start_run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        all_tags = {key: str(value) for key, value in (tags or {}).items()}
        if parent_id is not None:
            all_tags[PARENT_TAG] = parent_id
        if os.environ.get("DVC_EXP_NAME"):
            all_tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, params=[Param(k, _param_text(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def resume_run(self, run_id: str) -> None:
        """Set a run of a killed stage RUNNING again: the resumed stage logs into it and ends it."""
        self.client.update_run(run_id, status="RUNNING")

    def reopen_run(self, run_id: str, children_of: list[str]) -> int:
        """Set a resumed stage's run RUNNING again, and mark runs the killed process left RUNNING
        under ``children_of`` as KILLED; returns how many were marked."""
        self.resume_run(run_id)
        killed = 0
        for parent in children_of:
            orphans = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and attributes.status = 'RUNNING'",
                max_results=1000,
            )
            for orphan in orphans:
                if orphan.info.run_id not in children_of:
                    self.end_run(orphan.info.run_id, "KILLED")
                    killed += 1
        return killed

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id}/runs"
