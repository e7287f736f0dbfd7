"""What `make ui` prints before it starts the MLflow UI: the classic runs view of each experiment in
the project's store (every stage run listed), since MLflow 3.17 opens an experiment in GenAI mode.

    python -m pipeline.tracking.ui [host]
"""

from __future__ import annotations

import sys

from mlflow.tracking import MlflowClient

from pipeline.tracking.store import DEFAULT_UI, project_root, study_view_url, tracking_uri


def main(argv: list[str]) -> int:
    host = argv[0] if argv else DEFAULT_UI
    client = MlflowClient(tracking_uri(project_root()))
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if not experiments:
        print(f"MLflow UI: {host} (no study has logged runs yet: run make study)")
    for experiment in experiments:
        print(f"MLflow UI, {experiment.name}: {study_view_url(host, experiment.experiment_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
