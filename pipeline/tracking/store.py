"""MLflow tracking: one experiment per study, runs nested stage -> generation -> individual.

Uses ``MlflowClient`` with explicit parent ids (the ``mlflow.parentRunId`` tag), which nests
correctly from any process, unlike the fluent API's implicit active-run stack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingError, first_line

PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# The project folder a stage ran in: stale runs are only ever closed for this workspace.
WORKSPACE_TAG = "evohpo.workspace"
# The MLflow UI opens an experiment of this kind on its runs (model training), not the GenAI overview.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# What the UI shows as a run's or an experiment's description.
DESCRIPTION_TAG = "mlflow.note.content"
CHECKPOINT_FOLDER_TAG = "checkpoint_folder"  # a stage run's checkpoints (which variant of a stage it is)
EXPERIMENT_DESCRIPTION = (
    "An evohpo study: one run per search stage and repeat (nested: the GA's generations, then one run "
    "per evaluated individual), the champion's retrainings and the report. The study's params, "
    "report and results are in the repository (results/report.html)."
)
# MLflow 3.17's UI opens an experiment in GenAI mode whatever its tags; this view is the classic runs
# table, filtered to the top-level runs (only those carry the workspace tag), so every stage run shows
# without "Load more" however many individuals lie under them.
CLASSIC_RUNS_VIEW = "runs?workflowType=machine_learning&searchFilter="
DEFAULT_UI = "http://127.0.0.1:5000"
# Columns that hold artifact locations, by table: rewritten when the repository has moved.
_ARTIFACT_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


def project_root() -> Path:
    """The repository root: DVC sets ``DVC_ROOT`` for its stages; otherwise the working directory.
    A committed study is a DVC repository of its own inside the project's (``studies/<name>/.dvc``,
    so the project's ``dvc status`` does not list its stages): its runs still go to the project's
    store, the outermost DVC repository's."""
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    enclosing = [p for p in root.parents if (p / ".dvc").is_dir()]
    return enclosing[-1] if (root / ".dvc").is_dir() and enclosing else root


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or project_root()) / 'mlruns' / 'mlflow.db'}"


def _prepare_sqlite_store(uri: str) -> None:
    """Create the store's folder and a new database whole, in WAL mode (parallel writers do not block)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create_sqlite_store(path)
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=wal")
    except (OSError, sqlite3.Error) as exc:
        raise TrackingError(
            f"{path}: cannot open the MLflow store ({exc}); check that {path.parent} is writable"
        ) from None


def _create_sqlite_store(path: Path) -> None:
    """MLflow's tables built in a private file that then appears at ``path`` in one step: a kill -9
    during the migrations (seconds) would otherwise leave a half-built store every later run fails
    on. ``os.link`` fails when another process got there first; its store is then the one used."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # A new name each time: MLflow keeps engines by URI, and one to a removed file would be reused.
    private = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        store = SqlAlchemyStore(f"sqlite:///{private}", (path.parent / "artifacts").as_uri())
        store.engine.dispose()  # every connection closed: the file holds the whole schema
        with contextlib.suppress(FileExistsError):
            os.link(private, path)
    finally:
        private.unlink(missing_ok=True)


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


def _store_is_busy(exc: BaseException) -> bool:
    """SQLite's answer while another process writes (or recovers after a kill): worth a retry."""
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "disk i/o error" in text


def _store_is_full(exc: BaseException) -> bool:
    """SQLite's (or the artifact folder's) answer when the disk under ``mlruns/`` is full."""
    text = str(exc).lower()
    return "database or disk is full" in text or "no space left on device" in text


class _BusyStoreNoise(logging.Filter):
    """MLflow logs a busy SQLite store as an ERROR with a chained traceback (about 90 lines, each
    time its 20 s busy timeout runs out) before it raises; ``Tracker._call`` retries that error and
    names it in one line if it lasts, so the log record is dropped. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and _store_is_busy(error))


# MLflow's session logger (mlflow/store/db/utils.py), where the busy store's traceback is logged.
logging.getLogger("mlflow.store.db.utils").addFilter(_BusyStoreNoise())


class Tracker:
    """The study's MLflow experiment; every method returns or takes plain run ids.

    Every call to the store is retried with backoff while SQLite reports it busy (another writer,
    ``mlflow ui`` reading, recovery after a kill), for ``busy_seconds`` in all; then it fails with
    one line naming the store.
    """

    busy_seconds = float(os.environ.get("EVOHPO_STORE_BUSY_SECONDS", "120"))

    def __init__(self, experiment: str, root: Path | None = None) -> None:
        root = root or project_root()
        self.root = root
        self.uri = tracking_uri(root)
        _prepare_sqlite_store(self.uri)
        if self.uri.startswith(("http://", "https://")):
            # Fail in seconds, not after MLflow's default minutes of retries, when a server is down.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(tracking_uri=self.uri)
        artifacts = (root / "mlruns" / "artifacts").as_uri()
        try:
            found = self._call(self.client.get_experiment_by_name, experiment)
            if found is None:
                self.experiment_id = self._call(
                    self.client.create_experiment, experiment, artifact_location=artifacts,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, DESCRIPTION_TAG: EXPERIMENT_DESCRIPTION},
                )  # fmt: skip
            else:
                self.experiment_id = found.experiment_id
                self._keep_artifacts_here(found.artifact_location, artifacts)
                if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    self._call(self.client.set_experiment_tag, self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                if DESCRIPTION_TAG not in found.tags:
                    self._call(self.client.set_experiment_tag, self.experiment_id, DESCRIPTION_TAG,
                               EXPERIMENT_DESCRIPTION)  # fmt: skip
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable store
            raise TrackingError(
                f"MLflow tracking store {self.uri} is not usable ({first_line(exc)}); "
                "start the server, fix MLFLOW_TRACKING_URI, or unset it to use mlruns/mlflow.db"
            ) from None
        self.experiment = experiment
        self.commit = git_commit(root)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)``, retried with backoff while the store is busy."""
        started = time.monotonic()
        pause = 0.05
        while True:
            try:
                return method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only a busy store is retried; the rest re-raised
                if _store_is_full(exc):
                    raise TrackingError(
                        f"MLflow store {self.uri}: the disk is full; free space and run the stage again (finished "
                        "evaluations are kept in its checkpoint, and a run left RUNNING is closed then)"
                    ) from None
                if not _store_is_busy(exc):
                    raise
                waited = time.monotonic() - started
                if waited >= self.busy_seconds:
                    raise TrackingError(
                        f"MLflow store {self.uri} stayed locked by another writer for {waited:.0f} s; "
                        "stop the other process (a second stage, a script holding the database) and rerun"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _keep_artifacts_here(self, stored: str, wanted: str) -> None:
        """A repository copied or moved with its SQLite store: its experiment still names the old
        folder, so artifacts would land in (or be read from) the original. Point it here."""
        if stored == wanted or not self.uri.startswith("sqlite:///") or not stored.endswith("/mlruns/artifacts"):
            return
        relocate_artifacts(Path(self.uri.removeprefix("sqlite:///")), stored, wanted)

    def check_artifacts_writable(self) -> None:
        """Fail now, not after training, when models cannot be saved: the experiment's local
        artifact folder must be writable."""
        location = self._call(self.client.get_experiment, self.experiment_id).artifact_location
        if not location.startswith("file://"):
            return  # a server or object store: it answers for itself
        folder = Path(location.removeprefix("file://"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise TrackingError(
                f"{folder}: cannot write MLflow artifacts there ({exc.strerror}); make it writable "
                "(chmod u+w) or set MLFLOW_TRACKING_URI to another store"
            ) from None

    def start_run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> str:
        all_tags = {key: str(value) for key, value in (tags or {}).items()}
        if description:
            all_tags[DESCRIPTION_TAG] = description
        if parent_id is not None:
            all_tags[PARENT_TAG] = parent_id
        else:
            all_tags[WORKSPACE_TAG] = str(self.root)
        if os.environ.get("DVC_EXP_NAME"):
            all_tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        if self.commit is not None:
            all_tags[GIT_COMMIT_TAG] = self.commit
        run = self._call(self.client.create_run, self.experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._call(self.client.log_batch, run_id, params=[Param(k, _param_text(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._call(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._call(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path) -> None:
        self._call(self.client.log_artifact, run_id, str(path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, run_id, status=status)

    @contextlib.contextmanager
    def ends_on_error(self, run_id: str) -> Iterator[None]:
        """Ends ``run_id`` as FAILED when the block raises, as KILLED when it is interrupted (Ctrl-C,
        SIGTERM: ``KeyboardInterrupt``, ``SystemExit``), and lets the exception go on."""
        try:
            yield
        except BaseException as exc:
            try:
                self.end_run(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
            except TrackingError:
                pass  # the store itself failed (full, locked): the next run closes it; the first error is the news
            raise

    def resume_run(self, run_id: str) -> None:
        """Set a run of a killed stage RUNNING again: the resumed stage logs into it and ends it."""
        self._call(self.client.update_run, run_id, status="RUNNING")

    def run_exists(self, run_id: str) -> bool:
        """Whether the store holds this run, live, in this experiment (a replaced store does not)."""
        try:
            run = self._call(self.client.get_run, run_id)
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - MLflow raises on an unknown id
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def children(self, parents: list[str], status: str | None = None) -> list[Any]:
        """The runs directly under any of ``parents`` (not ``parents`` themselves), of ``status`` if given."""
        found = []
        for parent in parents:
            where = f"tags.`{PARENT_TAG}` = '{parent}'" + (f" and attributes.status = '{status}'" if status else "")
            runs = self._call(self.client.search_runs, [self.experiment_id], filter_string=where, max_results=50_000)
            found += [r for r in runs if r.info.run_id not in parents]
        return found

    def running_children(self, parents: list[str]) -> list[str]:
        """Ids of the runs still RUNNING directly under any of ``parents`` (not ``parents`` themselves)."""
        return [r.info.run_id for r in self.children(parents, "RUNNING")]

    def close_stale_stage_runs(self, stage: str, keep: set[str], checkpoint_folder: str | None = None) -> int:
        """Mark KILLED every run of ``stage`` (tag ``stage``, this workspace) that a process now gone
        left RUNNING, and everything still RUNNING under any earlier run of it; ``keep``: the stage
        run being resumed. With ``checkpoint_folder``, runs tagged with another folder are left
        alone: the sensitivity stage runs one ``ga_search`` per variant, each resumed from its own
        checkpoints, and one variant must not close another's. Only call it while holding the
        stage's lock: no live process can own those runs then. Returns how many runs were closed."""
        where = f"tags.stage = '{stage}' and tags.`{WORKSPACE_TAG}` = '{self.root}'"
        earlier = self._call(self.client.search_runs, [self.experiment_id], filter_string=where, max_results=10_000)
        closed = 0
        for run in earlier:
            if run.info.run_id in keep:
                continue
            folder = run.data.tags.get(CHECKPOINT_FOLDER_TAG)
            if checkpoint_folder is not None and folder is not None and folder != checkpoint_folder:
                continue
            level = [run.info.run_id]
            while level:  # generations, then individuals
                below = self.running_children(level)
                for run_id in below:
                    self.end_run(run_id, "KILLED")
                closed += len(below)
                level = below
            if run.info.status == "RUNNING":
                self.end_run(run.info.run_id, "KILLED")
                closed += 1
        return closed

    def runs_url(self, host: str = DEFAULT_UI) -> str:
        """Where a run's link points: ``<runs_url>/<run id>``."""
        return f"{host}/#/experiments/{self.experiment_id}/runs"

    def study_url(self, host: str = DEFAULT_UI) -> str:
        """The classic runs view of the study, every top-level (stage) run listed."""
        return study_view_url(host, self.experiment_id)


def study_view_url(host: str, experiment_id: str) -> str:
    top_level = f"tags.`{WORKSPACE_TAG}` LIKE '%'"
    return f"{host}/#/experiments/{experiment_id}/{CLASSIC_RUNS_VIEW}{quote(top_level)}"
