"""A benchmark study end to end on a slice of the real tables (two tasks, two methods, three seeds):
``dvc repro`` of its generated stages, a kill -9 mid-suite and its resume, one MLflow run per cell
(never two), kills at the exact points of a cell's logging, and the suite report in Chromium."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.browser import render_page, require_chromium
from tests.conftest import REPO_ROOT
from tests.test_benchmark_tables import SUITE

pytestmark = pytest.mark.slow

# DVC needs every param a stage names written out (space, suite.noise).
SLICE = copy.deepcopy(SUITE) | {
    "space": {"genes": {}},
    "tpe": {"startup_trials": 5},
    "suite": {"noise": True, "methods": ["ga", "tpe"], "sensitivity": {"enabled": False}},
}


def _sync():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_dvc", REPO_ROOT / "studies" / "sync_dvc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def make_suite_repo(repo: Path, params: dict) -> Path:
    """A git + DVC repo with this project's code and a benchmark study under ``studies/slice``."""
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    (repo / "mlruns").mkdir()
    shutil.copy(REPO_ROOT / "mlruns" / ".gitignore", repo / "mlruns" / ".gitignore")
    study = repo / "studies" / "slice"
    study.mkdir(parents=True)
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sync = _sync()
    stages = sync.suite_stages(params["suite"]["methods"], tuned=params["suite"]["sensitivity"]["enabled"])
    (study / "dvc.yaml").write_text(yaml.dump(stages, Dumper=sync._NoAliases, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "ci@example.com", cwd=repo)
    sh("git", "config", "user.name", "ci", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "init", "--subdir", "-q", cwd=study)  # a study is a DVC repository of its own, as studies/*/ are
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "slice", cwd=repo)
    return repo


def cell_runs(repo: Path, experiment: str = "suite-test") -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=10_000) if found else []


def results_of(study: Path) -> dict:
    out = {}
    for path in sorted((study / "results").glob("*_suite/*.json")):
        cells = json.loads(path.read_text())["cells"]
        out[str(path.relative_to(study))] = [{k: c[k] for k in ("seed", "rows", "scores", "regret")} for c in cells]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    repo = make_suite_repo(tmp_path_factory.mktemp("reference"), SLICE)
    sh("dvc", "repro", cwd=repo / "studies" / "slice")
    return repo


def test_dvc_repro_runs_every_stage_and_logs_one_run_per_cell(reference):
    study = reference / "studies" / "slice"
    for path in ("results/ga_suite.json", "results/tpe_suite.json", "results/suite_report.md",
                 "results/suite_report.html", "results/suite_plots/critical_difference.png", "dvc.lock"):  # fmt: skip
        assert (study / path).is_file(), path
    runs = cell_runs(reference)
    cells = [r for r in runs if "cell" in r.data.tags]
    assert len(cells) == 2 * 2 * 3 and len({(r.data.tags["method"], r.data.tags["cell"]) for r in cells}) == 12
    assert {r.info.status for r in runs} == {"FINISHED"}
    one = cells[0]
    client = MlflowClient(f"sqlite:///{reference / 'mlruns' / 'mlflow.db'}")
    history = client.get_metric_history(one.info.run_id, "best_so_far")
    assert [m.step for m in history] == list(range(1, 21))  # step = evaluation
    assert "seed-" in " ".join(a.path for a in client.list_artifacts(one.info.run_id))
    report = json.loads((study / "results" / "suite_report.json").read_text())
    assert set(report["average_rank"]) == {"ga", "tpe"} and report["tasks"] == SLICE["data"]["dataset"]
    # a second repro has nothing to do; the project's own dvc status does not list the study's stages
    assert "Running stage" not in sh("dvc", "repro", cwd=study).stdout
    assert "suite" not in sh("dvc", "status", cwd=reference).stdout


def test_a_kill_mid_suite_resumes_without_redoing_cells_or_duplicating_runs(reference, tmp_path):
    repo = make_suite_repo(tmp_path / "killed", SLICE)
    study = repo / "studies" / "slice"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(["dvc", "repro"], cwd=study, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    # TPE's cells take a fraction of a second each: kill once some of them are done
    while time.monotonic() < deadline and len(list((study / "checkpoints").glob("tpe_suite/*/seed-*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p: p.read_text() for p in (study / "checkpoints").glob("*_suite/*/seed-*.json")}
    assert done_before, "the kill came before any cell finished"
    log = sh("dvc", "repro", cwd=study).stdout
    assert "Running stage" in log
    for path, text in done_before.items():  # finished cells were not redone
        if '"fingerprint"' in text:
            assert path.read_text() == text
    assert results_of(study) == results_of(reference / "studies" / "slice")
    runs = cell_runs(repo)
    cells = [(r.data.tags["method"], r.data.tags["cell"]) for r in runs if "cell" in r.data.tags]
    assert len(cells) == len(set(cells)) == 12
    assert "RUNNING" not in {r.info.status for r in runs}


# -- kill -9 at the exact points of a cell's logging (a child process dies with os._exit) ---------


def _die_at(root: str, params: dict, where: str) -> None:
    os.chdir(root)
    os.environ["DVC_ROOT"] = root
    from pipeline.benchmarks import suite as suite_module
    from pipeline.benchmarks.config import parse_suite

    if where == "done_file":  # after the cell's run is FINISHED, before its done file
        finish = suite_module._Store.finish_cell

        def finished_then_die(self, *args, **kwargs):
            finish(self, *args, **kwargs)
            os._exit(137)

        suite_module._Store.finish_cell = finished_then_die
    else:

        def die(self, *args, **kwargs):
            if where == "finish_cell":  # mid-logging: some metrics written, the run still RUNNING
                self.tracker.log_metrics(args[0], {"partial": 1.0})
            os._exit(137)

        setattr(suite_module._Store, where, die)
    suite_module.run_suite_stage("tpe", parse_suite(params), Path("results"))


@pytest.mark.parametrize("where", ["finish_cell", "done_file"])
def test_a_kill_while_a_cell_is_logged_leaves_one_finished_run_per_cell(tmp_path, monkeypatch, where):
    params = copy.deepcopy(SLICE) | {"data": {"dataset": "hpobench/credit_g"}}
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_die_at, args=(str(tmp_path), params, where))
    child.start()
    child.join(120)
    assert child.exitcode == 137
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    from pipeline.benchmarks.config import parse_suite
    from pipeline.benchmarks.suite import run_suite_stage

    run_suite_stage("tpe", parse_suite(params), Path("results"))
    runs = cell_runs(tmp_path)
    cells = [r for r in runs if "cell" in r.data.tags]
    assert sorted(r.data.tags["cell"] for r in cells) == [f"hpobench/credit_g/{s}" for s in (0, 1, 2)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("partial" not in r.data.metrics for r in cells)


def test_individual_runs_nest_every_lookup_under_its_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    from pipeline.benchmarks.config import parse_suite
    from pipeline.benchmarks.suite import run_suite_stage

    params = copy.deepcopy(SLICE) | {"data": {"dataset": "hpobench/credit_g"}, "study": {"repeats": 1},
                                     "mlflow": {"experiment": "suite-test", "individual_runs": True}}  # fmt: skip
    run_suite_stage("ga", parse_suite(params), Path("results"))
    runs = cell_runs(tmp_path)
    by_id = {r.info.run_id: r for r in runs}
    cell = next(r for r in runs if "cell" in r.data.tags)
    lookups = [r for r in runs if "genome_hash" in r.data.tags or "individual" in r.data.tags]

    def under_cell(run) -> bool:
        parent = run.data.tags.get("mlflow.parentRunId")
        while parent is not None and parent != cell.info.run_id:
            parent = by_id[parent].data.tags.get("mlflow.parentRunId")
        return parent == cell.info.run_id

    assert len(lookups) == 20 and all(under_cell(r) for r in lookups)
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_the_tuned_ga_takes_the_sensitivity_runs_best_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    from pipeline.benchmarks.config import parse_suite
    from pipeline.benchmarks.suite import TUNED_GA, run_suite_sensitivity, run_suite_stage, suite_methods

    params = copy.deepcopy(SLICE) | {
        "suite": {
            "methods": ["ga"],
            "sensitivity": {
                "enabled": True,
                "seeds": 2,
                "population_size": [4, 10],
                "mutation_rate": [0.2, 0.9],
                "selection": [],
            },
        }
    }
    config = parse_suite(params)
    assert suite_methods(config) == ["ga", TUNED_GA]
    chosen = run_suite_sensitivity(config, Path("results"), log=lambda line: None)
    table = json.loads((tmp_path / "results" / "suite_sensitivity" / "table.json").read_text())
    for setting in ("population_size", "mutation_rate"):
        rows = [r for r in table["variants"] if r["setting"] == setting]
        best = min(rows, key=lambda r: r["mean_rank"])
        assert [r["value"] for r in rows if r["chosen"]] == [best["value"]]
    assert chosen["ga"]["population_size"] == next(r["value"] for r in table["variants"]
                                                    if r["setting"] == "population_size" and r["chosen"])  # fmt: skip
    metrics = run_suite_stage(TUNED_GA, config, Path("results"), log=lambda line: None)
    assert metrics["cells"] == 6


def test_the_suite_report_opens_in_chromium_with_its_answer_first(reference, tmp_path):
    require_chromium()
    page = render_page(reference / "studies" / "slice" / "results" / "suite_report.html", tmp_path / "suite.png")
    assert page.external_refs == []
    assert len(page.data_images) == 3 and all(i.format == "PNG" for i in page.data_images)
    assert 0 <= page.text.find("has the best average rank") < page.text.find("Average ranks across tasks")
    for words in ("Friedman test", "critical difference", "Bayesian signed-rank", "normalised regret",
                  "hpolib/naval_propulsion"):  # fmt: skip
        assert words in page.text, words


def test_a_bad_task_is_one_line_from_the_stage_before_anything_runs(tmp_path):
    params = copy.deepcopy(SLICE) | {"data": {"dataset": ["hpobench/credit_g", "hpobench/mnist"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = sh(sys.executable, str(REPO_ROOT / "stages" / "suite_search.py"), "ga", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") <= 1 and "data.dataset" in done.stderr and "mnist" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "results").exists()


def test_a_studys_runs_go_to_the_projects_store(tmp_path, monkeypatch):
    """studies/<name>/ is a DVC repository of its own; DVC sets DVC_ROOT to it, yet its MLflow
    store is the project's (the outermost DVC repository)."""
    from pipeline.tracking.store import project_root, tracking_uri

    study = tmp_path / "studies" / "one"
    (tmp_path / ".dvc").mkdir()
    (study / ".dvc").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(study))
    assert project_root() == tmp_path.resolve()
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert project_root() == tmp_path.resolve()
