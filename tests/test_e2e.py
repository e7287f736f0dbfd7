"""End to end: ``dvc repro`` of every stage on tiny params, three repeats of every registered method, in a
temporary git repo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.search.registry import method_names
from tests.browser import render_page, require_chromium
from tests.conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow

METHODS = tuple(method_names())  # every registered method has its search stage
STAGES = ["prepare", *(f"{m}_search" for m in METHODS), "champion", "report"]
REPEATS = {"repeats": 3, "seeds": [42, 7, 1234]}


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
    shutil.copytree(REPO_ROOT / "data" / "source", repo / "data" / "source")  # ${data.path}: built-ins read nothing
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
    shutil.copy(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the offline plots template, as cloned
    # The committed studies as a clone has them: DVC repositories of their own, out of the root's view.
    for study in sorted((REPO_ROOT / "studies").glob("*/.dvc")):
        folder = repo / "studies" / study.parent.name
        shutil.copytree(study, folder / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
        for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
            if (study.parent / name).is_file():
                shutil.copy(study.parent / name, folder / name)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny study", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_study_repo(tmp_path_factory.mktemp("study"), {"study": REPEATS})
    result = sh("dvc", "repro", cwd=repo)
    (repo / "first_repro.log").write_text(result.stdout + result.stderr)
    return repo


def ran(log: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in log]


def test_every_stage_runs_and_writes_its_outputs(study):
    assert ran((study / "first_repro.log").read_text()) == STAGES
    for path in ["data/prepared/dataset.json", "models/champion.pt", "results/report.md", "results/report.html",
                 "results/plots/best_so_far_vs_evaluations.png", "results/plots/best_so_far_vs_epochs.png",
                 "results/plots/best_so_far_vs_time.png", "results/plots/ga_fitness_by_generation.png",
                 "results/curves/best_so_far_by_epochs.csv", "dvc.lock"]:  # fmt: skip
        assert (study / path).is_file(), path
    details = json.loads((study / "results" / "champion_details.json").read_text())
    retrained = {(e["method"], e["seed"]) for e in details["retrained"]}
    assert retrained == {(m, s) for m in METHODS for s in REPEATS["seeds"]}  # each method's best of each repeat
    champion = details["champion"]
    assert champion["val_acc"] == max(e["val_acc"] for e in details["retrained"] if "val_acc" in e)
    assert 0.0 <= champion["test_acc"] <= 1.0
    report = (study / "results" / "report.md").read_text()
    for label in ("Genetic algorithm", "Grid search", "Random search", "TPE", "Population Based Training"):
        assert label in report
    # PBT's result is a schedule: the champion replayed its best member's, to the schedule's own epochs.
    for entry in (e for e in details["retrained"] if e["method"] == "pbt"):
        summary = json.loads((study / "results" / "pbt_search" / f"seed-{entry['seed']}.json").read_text())
        assert entry["epochs"] == summary["best_schedule"][-1]["epochs"]
    assert "PBT: " in report and "at equal training epochs and wall time" in report
    equal = report[report.index("## Equal budgets") :]
    header = next(line for line in equal.splitlines() if line.startswith("|"))
    assert "Population Based Training" in header and "training epochs" in equal
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=study).stdout)
    workspace = next(iter(metrics.values()))["data"]  # keyed "workspace" or "" by DVC version
    values = [v for file in workspace.values() for v in file["data"].values()]
    assert values and all(isinstance(v, (int, float)) for v in values), "metrics files hold numbers only"


def test_every_evaluation_is_an_mlflow_run_under_its_repeat(study):
    client = MlflowClient(f"sqlite:///{study}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    for method in METHODS:
        for repeat, seed in enumerate(REPEATS["seeds"]):
            summary = json.loads((study / "results" / f"{method}_search" / f"seed-{seed}.json").read_text())
            stage_run = by_id[summary["stage_run_id"]]
            assert stage_run.data.tags["repeat"] == str(repeat) and stage_run.data.tags["seed"] == str(seed)
            individuals = [r for r in runs if "genome_hash" in r.data.tags and r.data.tags.get("method") == method
                           and _root(r, by_id) == summary["stage_run_id"]]  # fmt: skip
            assert len(individuals) == summary["evaluations"]
    versions = client.search_model_versions("name='tiny-champion'")
    assert len(versions) == 1
    report_runs = [r for r in runs if r.data.tags.get("stage") == "report"]
    assert len(report_runs) == 1
    logged = {a.path for a in client.list_artifacts(report_runs[0].info.run_id)}
    assert {"report.md", "report.html"} <= logged


def test_dvc_status_is_clean_and_plots_draw_offline_after_the_study(study, tmp_path):
    """After the study, the root's dvc status has nothing to say (the committed studies are out of its
    view), and dvc plots show writes a page that draws its curves with the network blocked."""
    status = sh("dvc", "status", cwd=study).stdout.strip()
    assert status == "Data and pipelines are up to date.", status
    sh(sys.executable, "-m", "pipeline.study.offline_plots", str(study / ".dvc" / "offline_plots.html"), cwd=study)
    sh("dvc", "plots", "show", cwd=study)
    page_file = study / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    require_chromium()
    page = render_page(page_file, tmp_path / "plots.png", height=1600)
    assert page.external_refs == []
    assert page.dom.count('class="marks"') == 3  # three curves drawn by Vega (its canvas)
    assert "best_so_far_by_evaluations.csv" in page.text
    assert sh("git", "check-ignore", "dvc_plots/index.html", cwd=study).returncode == 0


def test_make_exp_shows_the_compared_columns_readably_at_200_columns(study):
    keep = next(line.split(":=", 1)[1].strip() for line in (REPO_ROOT / "Makefile").read_text().splitlines()
                if line.startswith("EXP_KEEP :="))  # fmt: skip
    env_columns = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep", keep], cwd=study,
                          env={**env_columns, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[1]
    for column in ("test_acc", "ga_test_acc_mean", "tpe_test_acc_mean", "seed", "budget.evaluations"):
        assert column in header, header
    assert "…" not in done.stdout and max(map(len, done.stdout.splitlines())) <= 200


def test_the_mlflow_ui_opens_on_every_stage_run_of_the_study(study):
    """``make ui``'s view (what the report links to): MLflow's classic runs table, filtered to the
    top-level runs, lists every stage run of the study without "Load more", in headless Chromium."""
    import socket
    import time
    import urllib.request

    from tests.browser import local_server_dom
    from pipeline.tracking.store import DESCRIPTION_TAG, study_view_url

    require_chromium()
    client = MlflowClient(f"sqlite:///{study / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags.get(DESCRIPTION_TAG)
    top_level = [r for r in client.search_runs([experiment.experiment_id], max_results=5000)
                 if "mlflow.parentRunId" not in r.data.tags]  # fmt: skip
    assert len(top_level) == len(METHODS) * len(REPEATS["seeds"]) + 2  # the searches, champion, report
    assert all(r.data.tags.get(DESCRIPTION_TAG) for r in top_level)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--workers", "1", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{study / 'mlruns' / 'mlflow.db'}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        dom = local_server_dom(study_view_url(f"http://127.0.0.1:{port}", experiment.experiment_id))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    for run in top_level:
        assert f">{run.info.run_name}<" in dom, run.info.run_name
    assert "Load more" not in dom
    # The registered champion carries the alias on its newest version (a model registry user's handle).
    newest = max(int(v.version) for v in client.search_model_versions("name='tiny-champion'"))
    assert int(client.get_model_version_by_alias("tiny-champion", "champion").version) == newest


def _root(run, by_id) -> str:
    while "mlflow.parentRunId" in run.data.tags:
        run = by_id[run.data.tags["mlflow.parentRunId"]]
    return run.info.run_id


def test_the_report_opens_in_headless_chromium_with_its_images_and_answer(study, tmp_path):
    require_chromium()
    page = render_page(study / "results" / "report.html", tmp_path / "report.png")
    assert page.screenshot.is_file()
    assert page.external_refs == []  # no sibling files, no network: plots are in the page itself
    assert len(page.data_images) >= 5 and all(i.format == "PNG" and i.size[0] > 300 for i in page.data_images)
    # the answer first: a winner only when the Bayesian verdict supports one, else tied or undecided
    answer_at = max(page.text.find("is the best method here: mean final validation accuracy"),
                    page.text.find("No method is decidedly best at this budget"))  # fmt: skip
    assert 0 <= answer_at < page.text.find("Methods over repeats")
    for words in ("over 3 repeat(s)", "Holm-corrected", "A12", "chosen by validation accuracy after retraining",
                  "Equal budgets", "TPE (Bayesian optimisation)", "Git commit", "Bayesian signed-rank",
                  "row beats column"):  # fmt: skip
        assert words in page.text, words
    assert page.anchor_refs and all(a.startswith("http://127.0.0.1:5000/#/experiments/") for a in page.anchor_refs)


def test_editing_ga_params_reruns_only_ga_champion_report(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["ga"]["mutation"]["rate"] = 0.5
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh("dvc", "repro", cwd=study)
    assert ran(result.stdout) == ["ga_search", "champion", "report"]
    assert "Stage 'grid_search' didn't change" in result.stdout
    # Only the GA's three bests can have changed: the champion stage retrains those, reuses the rest.
    retrained, reused = map(int, re.search(r"\[champion\] (\d+) retrained, (\d+) reused", result.stdout).groups())
    assert retrained <= 3 and reused >= 3 * (len(METHODS) - 1) and retrained + reused == 3 * len(METHODS)


def test_raising_repeats_trains_only_the_new_repeat(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["study"] = {"repeats": 4, "seeds": [*REPEATS["seeds"], 5]}
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh("dvc", "repro", cwd=study)
    log = result.stdout + result.stderr
    for method in METHODS:
        assert log.count(f"[{method}] repeat") == 4
        assert f"[{method}] repeat 3 (seed 5): no checkpoint: starting afresh" in log
        assert f"[{method}] repeat 0 (seed 42): reused" in log
    n = len(METHODS)
    assert f"[champion] {n} retrained, {3 * n} reused" in log  # the new repeat's bests, one per method


def test_a_method_left_out_of_study_methods_leaves_the_report_and_comes_back_without_training(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["study"]["methods"] = [m for m in METHODS if m != "grid"]
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh("dvc", "repro", cwd=study)
    log = result.stdout + result.stderr
    assert "[grid] skipped: not in study.methods" in log and "[grid] eval" not in log
    assert list((study / "results" / "grid_search").iterdir()) == []
    repeats = len(params["study"]["seeds"])
    assert f"[champion] 0 retrained, {repeats * (len(METHODS) - 1)} reused" in log
    report = (study / "results" / "report.md").read_text()
    assert "Grid search" not in report and "Random search" in report
    params["study"]["methods"] = None  # every registered method again: grid's repeats come back from its checkpoints
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh("dvc", "repro", cwd=study)
    log = result.stdout + result.stderr
    assert log.count("[grid] repeat") == repeats and log.count("): reused") >= repeats and "[grid] eval" not in log
    assert f"[champion] 0 retrained, {repeats * len(METHODS)} reused" in log
    assert "Grid search" in (study / "results" / "report.md").read_text()


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
