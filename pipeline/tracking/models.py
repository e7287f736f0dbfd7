"""A trained network logged to MLflow as a model and registered (the champion's): the one place the
project calls MLflow's fluent API, pointed at the study's store and put back afterwards."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING, Any, Iterator

import mlflow

from pipeline.errors import TrackingError
from pipeline.tracking.store import Tracker

if TYPE_CHECKING:
    import numpy as np
    import torch

CHAMPION_ALIAS = "champion"


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for a while. ``mlflow.set_tracking_uri`` also sets
    ``MLFLOW_TRACKING_URI`` for the whole process: put back what was there."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable again


def log_registered_model(
    tracker: Tracker, run_id: str, network: torch.nn.Module, input_example: np.ndarray, registered_model: str
) -> dict[str, Any]:
    """Log ``network`` (on the CPU, in eval mode) as the model of run ``run_id``, register it as
    ``registered_model`` and point the ``champion`` alias at the new version. A store that cannot take
    it (disk full, read-only) ends the run FINISHED (its training did finish) and raises one line of
    ``TrackingError``."""
    import mlflow.pytorch  # torch: only a stage that logs a network loads it
    import torch

    network = network.cpu().eval()
    try:
        with fluent_tracking_uri(tracker.uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                network,
                name="model",
                # MLflow 3 saves a traced (pt2) graph: tracing needs an example batch, and the
                # signature is inferred from it.
                input_example=input_example,
                registered_model_name=registered_model,
                # Explicit requirements: inferring them imports the model in a subprocess, slowly.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
    except OSError as exc:
        tracker.end_run(run_id, "FINISHED")
        where = exc.filename or "the MLflow artifact store"
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise TrackingError(f"{where}: cannot store the champion's model ({why})") from None
    version = getattr(info, "registered_model_version", None)
    if version is not None:
        # The alias follows the newest champion: models:/<name>@champion loads it.
        tracker._call(tracker.client.set_registered_model_alias, registered_model, CHAMPION_ALIAS, str(version))
    return {
        "model_uri": info.model_uri,
        "registered_model": registered_model,
        "registered_version": version,
        "alias": CHAMPION_ALIAS if version is not None else None,
    }
