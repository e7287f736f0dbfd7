"""The examples of your own data and model (``examples/``), each through ``dvc repro`` on tiny settings:
every method, the champion and the report; replacing the CSV table reruns ``prepare`` and then the
searches (``dvc status`` after prepare); editing the user's builder reruns the searches, trained
anew, and not ``prepare``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.search.registry import method_names

from tests.conftest import REPO_ROOT
from tests.test_e2e import sh

pytestmark = pytest.mark.slow

SEARCHES = [f"{m}_search" for m in method_names()]
STAGES = ["prepare", *SEARCHES, "ga_sensitivity", "champion", "report"]
# Seconds, not minutes: one repeat of a 4-evaluation budget, networks trained for an epoch or two
# (PBT: two members, two 1-epoch intervals).
TINY = {
    "budget": {"evaluations": 4},
    "ga": {"population_size": 3},
    "study": {"repeats": 1},
    "champion": {"epochs": 1},
    "pbt": {"population_size": 2, "perturbation_interval": 1},
}
TINY_GENES = {"tabular": {"epochs": {"type": "int", "low": 1, "high": 3}},
              "images": {"epochs": {"type": "int", "low": 1, "high": 2}}}  # fmt: skip
TINY_DATA = {"tabular": {}, "images": {"train_size": 300, "val_size": 100}}
DATA_SCRIPT = {"tabular": "make_data.py", "images": "make_images.py"}


def example_repo(root: Path, name: str) -> Path:
    """A git + DVC repository holding the project's code and one example, shrunk to seconds; returns
    the example's folder (a DVC repository of its own, as committed)."""
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO_ROOT / file, root / file)
    example = root / "examples" / name
    shutil.copytree(REPO_ROOT / "examples" / name, example,
                    ignore=shutil.ignore_patterns("__pycache__", "data", "results", "checkpoints", "models", "tmp",
                                                  "cache", "config.local", "dvc.lock"))  # fmt: skip
    params = yaml.safe_load((example / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values}
    params["space"]["genes"] |= TINY_GENES[name]
    params["data"] |= TINY_DATA[name]
    (example / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "example", cwd=root)
    sh(sys.executable, DATA_SCRIPT[name], cwd=example)
    return example


def ran(log: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in log]


def changed_stages(example: Path) -> dict[str, list[str]]:
    """``dvc status``: each changed stage and the lines saying what changed."""
    status = json.loads(sh("dvc", "status", "--json", cwd=example).stdout or "{}")
    return {stage.split(":")[-1]: [json.dumps(change) for change in changes] for stage, changes in status.items()}


def check_whole_study(example: Path, log: str, experiment: str, model: str) -> None:
    assert ran(log) == STAGES
    details = json.loads((example / "results" / "champion_details.json").read_text())
    assert sorted(entry["method"] for entry in details["retrained"]) == sorted(method_names())
    report = (example / "results" / "report.md").read_text()
    for label in ("Genetic algorithm", "Grid search", "Random search", "TPE"):
        assert label in report
    client = MlflowClient(f"sqlite:///{example.parent.parent}/mlruns/mlflow.db")  # the project's store
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    assert sum("genome_hash" in r.data.tags and r.data.tags.get("stage") != "champion" for r in runs) >= 16
    assert all(r.info.status == "FINISHED" for r in runs if "genome_hash" in r.data.tags)
    assert len(client.search_model_versions(f"name='{model}'")) == 1


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    example = example_repo(tmp_path_factory.mktemp("tabular"), "tabular")
    result = sh("dvc", "repro", cwd=example)
    return example, result.stdout + result.stderr


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    example = example_repo(tmp_path_factory.mktemp("images"), "images")
    result = sh("dvc", "repro", cwd=example)
    return example, result.stdout + result.stderr


def test_the_tabular_example_runs_every_method_the_champion_and_the_report(tabular):
    example, log = tabular
    check_whole_study(example, log, "evohpo-example-tabular", "evohpo-example-tabular-champion")
    summary = json.loads((example / "data" / "prepared" / "dataset.json").read_text())
    assert summary["dataset"] == "csv" and summary["classes"] == ["barbera", "barolo", "grignolino"]
    assert summary["image_shape"] == [1, 1, 13]


def test_replacing_the_csv_reruns_prepare_and_the_searches(tabular):
    example, _ = tabular
    table = example / "data" / "wine.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([*lines[:1], *lines[2:], lines[1]]) + "\n")  # the same wines, another order
    changed = changed_stages(example)
    assert list(changed) == ["prepare"] and "data/wine.csv" in changed["prepare"][0]
    assert "Running stage 'prepare'" in sh("dvc", "repro", "-s", "prepare", cwd=example).stdout
    # Another split of the rows: the prepared data changed, so every search (and what follows) reruns.
    changed = changed_stages(example)
    assert set(SEARCHES) | {"ga_sensitivity"} <= set(changed)
    assert all("data/prepared" in " ".join(changed[stage]) for stage in SEARCHES)


def test_the_image_folder_example_with_its_own_builder_runs_everything(images):
    example, log = images
    check_whole_study(example, log, "evohpo-example-images", "evohpo-example-images-champion")
    summary = json.loads((example / "data" / "prepared" / "dataset.json").read_text())
    assert summary["dataset"] == "image_folder" and summary["image_shape"] == [1, 8, 8]
    history = json.loads((example / "results" / "ga_search" / "seed-42_history.json").read_text())
    assert all({"channels", "dropout"} <= set(e["genome"]) for e in history["evaluations"])


def test_editing_the_builder_reruns_the_searches_and_not_prepare(images):
    example, _ = images
    builder = example / "model.py"
    builder.write_text(builder.read_text() + "\n# a comment is a change: DVC and the stage's fingerprint see it\n")
    changed = changed_stages(example)
    assert "prepare" not in changed
    assert set(SEARCHES) | {"champion"} <= set(changed)
    assert all("model.py" in " ".join(changed[stage]) for stage in SEARCHES)
    log = sh("dvc", "repro", "-s", "random_search", cwd=example).stdout
    assert "Running stage 'random_search'" in log
    assert "reused, finished earlier" not in log  # the fingerprint holds the builder's code: trained again
    assert "random_search" not in changed_stages(example)


def test_the_committed_examples_run_from_their_folders_with_one_command():
    for name, script in DATA_SCRIPT.items():
        dry = subprocess.run(["make", "-n", f"example-{name}"], cwd=REPO_ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert f"cd examples/{name} && " in dry.stdout and script in dry.stdout and "dvc repro" in dry.stdout
