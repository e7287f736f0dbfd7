"""End to end: ``dvc repro`` of all six stages on tiny params in a temporary git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow

STAGES = ["prepare", "ga_search", "grid_search", "random_search", "champion", "report"]


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def make_study_repo(repo: Path, params_changes: dict | None = None) -> Path:
    """A git + DVC repo holding this project's code and tiny params (sections in ``params_changes``
    replaced or merged)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO_ROOT / name, repo / name)
    (repo / "mlruns").mkdir()
    shutil.copy(REPO_ROOT / "mlruns" / ".gitignore", repo / "mlruns" / ".gitignore")
    params = tiny_params()
    for section, values in (params_changes or {}).items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "ci@example.com", cwd=repo)
    sh("git", "config", "user.name", "ci", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    shutil.copy(REPO_ROOT / ".dvcignore", repo / ".dvcignore")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny study", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_study_repo(tmp_path_factory.mktemp("study"))
    result = sh("dvc", "repro", cwd=repo)
    (repo / "first_repro.log").write_text(result.stdout + result.stderr)
    return repo


def ran(log: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in log]


def test_all_six_stages_run_and_write_their_outputs(study):
    assert ran((study / "first_repro.log").read_text()) == STAGES
    for path in ["data/prepared/dataset.json", "models/champion.pt", "results/report.md", "results/report.html",
                 "results/plots/best_so_far_vs_evaluations.png", "results/plots/best_so_far_vs_time.png",
                 "results/plots/ga_fitness_by_generation.png", "dvc.lock"]:  # fmt: skip
        assert (study / path).is_file(), path
    champion = json.loads((study / "results" / "champion.json").read_text())
    assert set(champion["methods"]) == {"ga", "grid", "random"}
    assert 0.0 <= champion["champion"]["test_acc"] <= 1.0
    report = (study / "results" / "report.md").read_text()
    for label in ("Genetic algorithm", "Grid search", "Random search"):
        assert label in report
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=study).stdout)
    assert metrics  # the stages' results are declared as DVC metrics


def test_every_evaluation_is_an_mlflow_run_in_the_repo_store(study):
    client = MlflowClient(f"sqlite:///{study}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    for method in ("ga", "grid", "random"):
        summary = json.loads((study / "results" / f"{method}_search.json").read_text())
        individuals = [r for r in runs if r.data.tags.get("method") == method and "genome_hash" in r.data.tags
                       and r.data.tags.get("mlflow.runName", "").startswith(method)]  # fmt: skip
        assert len(individuals) == summary["evaluations"]
    versions = client.search_model_versions("name='tiny-champion'")
    assert len(versions) == 1


def test_editing_ga_params_reruns_only_ga_champion_report(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["ga"]["mutation"]["rate"] = 0.5
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh("dvc", "repro", cwd=study)
    assert ran(result.stdout) == ["ga_search", "champion", "report"]
    assert "Stage 'grid_search' didn't change" in result.stdout


def test_bad_params_fail_before_any_training(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["budget"]["evaluations"] = -1
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["dvc", "repro", "ga_search"], cwd=study, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "budget.evaluations" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert "[ga] eval" not in result.stderr + result.stdout


ARCHITECTURE_SPACE = {
    "kind": "architecture",
    "genes": {**tiny_params()["space"]["genes"], "noise_level": {"type": "choice", "values": [0.0, 0.1]}},
    "architecture": {
        "conv_layers": {"min": 1, "max": 2},
        "fc_layers": {"min": 1, "max": 2},
        "conv": {"filters": [4, 8], "kernel_size": [3, 5, 7], "stride": [1, 2], "pool_size": [None, 2, 3]},
        "fc": {"units": [8, 16]},
        "phases": {"count": 2, "new_conv_layers": 1, "freeze_transferred": True},
    },
}


def test_architecture_search_with_merged_weights_runs_end_to_end(tmp_path):
    repo = make_study_repo(
        tmp_path / "arch",
        {"space": ARCHITECTURE_SPACE, "budget": {"evaluations": 8},
         "ga": {"weights": "merge", "survival": {"fraction": 0.5, "immigrants": 0},
                "mutation": {"name": "adaptive", "rate": 0.2, "max_rate": 0.8}}},
    )  # fmt: skip
    result = sh("dvc", "repro", cwd=repo)
    assert ran(result.stdout) == STAGES
    ga = json.loads((repo / "results" / "ga_search_history.json").read_text())
    records = ga["evaluations"]
    assert len(records) == 8
    assert all(isinstance(r["genome"]["conv"], list) and r["genome"]["conv"] for r in records)
    # phase 1 grows the phase-0 best: every genome of it starts with that best's conv genes
    phases = [g["phase"] for g in ga["generations"]]
    assert phases[0] == 0 and phases[-1] == 1
    first_phase1 = next(i for i, g in enumerate(ga["generations"]) if g["phase"] == 1)
    phase1_hashes = set(ga["generations"][first_phase1]["genome_hashes"])
    phase0 = [r for r in records if r["genome_hash"] not in phase1_hashes][: len(records) // 2]
    best0 = max((r for r in phase0 if r["status"] == "finished"), key=lambda r: r["val_acc"])
    for record in records:
        if record["genome_hash"] in phase1_hashes:
            prefix = record["genome"]["conv"][: len(best0["genome"]["conv"])]
            assert prefix == best0["genome"]["conv"]
            assert len(record["genome"]["conv"]) == len(best0["genome"]["conv"]) + 1
            assert record["init"] == "merge"  # the grown genomes start from the best's weights
    assert (repo / "checkpoints" / "ga_weights").is_dir()
    for method in ("grid", "random"):
        history = json.loads((repo / "results" / f"{method}_search_history.json").read_text())
        assert history["evaluations"] and all("conv" in r["genome"] for r in history["evaluations"])
    champion = json.loads((repo / "results" / "champion.json").read_text())
    assert "conv" in champion["champion"]["genome"]
    summary = json.loads((repo / "results" / "ga_search.json").read_text())
    assert summary["operators"]["weights"] == "merge" and summary["operators"]["mutation"] == "adaptive"
