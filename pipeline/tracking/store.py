"""MLflow tracking: one experiment per study, runs nested stage -> generation -> individual.

Uses ``MlflowClient`` with explicit parent ids (the ``mlflow.parentRunId`` tag), which nests
correctly from any process, unlike the fluent API's implicit active-run stack.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# The MLflow UI opens an experiment of this kind on its runs (model training), not the GenAI overview.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Columns that hold artifact locations, by table: rewritten when the repository has moved.
_ARTIFACT_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


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


def git_commit(root: Path) -> str | None:
    """The commit the code was run at (``mlflow.source.git.commit``), or None outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def relocate_artifacts(database: Path, old: str, new: str) -> int:
    """Point every artifact location under ``old`` at ``new`` instead (a repository copied or moved
    with its ``mlruns/``); returns how many values changed. The SQLite store is ours: MLflow has no
    call that moves an experiment's artifact location."""
    changed = 0
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, columns in _ARTIFACT_COLUMNS.items():
            if table not in tables:
                continue
            for column in columns:
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - names are ours
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )
                changed += cursor.rowcount
    return changed


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
        artifacts = (root / "mlruns" / "artifacts").as_uri()
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            else:
                self.experiment_id = found.experiment_id
                self._keep_artifacts_here(found.artifact_location, artifacts)
                if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable store
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TrackingError(
                f"MLflow tracking store {self.uri} is not usable ({first_line}); "
                "start the server, fix MLFLOW_TRACKING_URI, or unset it to use mlruns/mlflow.db"
            ) from None
        self.experiment = experiment
        self.commit = git_commit(root)

    def _keep_artifacts_here(self, stored: str, wanted: str) -> None:
        """A repository copied or moved with its SQLite store: its experiment still names the old
        folder, so artifacts would land in (or be read from) the original. Point it here."""
        if stored == wanted or not self.uri.startswith("sqlite:///") or not stored.endswith("/mlruns/artifacts"):
            return
        relocate_artifacts(Path(self.uri.removeprefix("sqlite:///")), stored, wanted)

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
        if self.commit is not None:
            all_tags[GIT_COMMIT_TAG] = self.commit
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

    def running_children(self, parents: list[str]) -> list[str]:
        """Ids of the runs still RUNNING directly under any of ``parents`` (not ``parents`` themselves)."""
        found = []
        for parent in parents:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and attributes.status = 'RUNNING'",
                max_results=10_000,
            )
            found += [r.info.run_id for r in runs if r.info.run_id not in parents]
        return found

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id}/runs"
