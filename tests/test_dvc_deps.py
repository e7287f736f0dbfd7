"""``dvc.yaml`` deps cannot drift from the code: each stage script is imported (not run) in an
interpreter that holds no project module yet, and every project module it loads must lie under one of
that stage's deps, with what it loads once it trains (Lightning's modules, imported at the first training).
Stages that need no training stack do not load it, nor a stage that has nothing to train (checked in a
fresh interpreter)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_imports import DEFERRED

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]

# Imports the stack named in argv[2] (comma-separated; none: a fresh interpreter), then each stage script
# (argv[4:]) under another name than __main__ (its main() does not run), each in a fork of itself, where
# only project modules are new: with the training stack imported once, the same project files as a fresh
# interpreter per stage, without paying the stack's import (seconds) per stage. Prints, per script, the
# project files (pipeline/, stages/) and the top-level packages it loaded; then, where the script loaded the
# evaluators, the project files once the modules a first training imports (argv[3]: test_imports.DEFERRED) are
# loaded too.
PROBE = """
import importlib, importlib.util, json, os, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(root))
for name in filter(None, sys.argv[2].split(",")):
    importlib.import_module(name)
assert not [name for name in sys.modules if name.split(".")[0] in ("pipeline", "stages")], "stack loaded the project"

def project_files():
    files = {str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values())
             if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(root)}
    return sorted(f for f in files if f.startswith(("pipeline/", "stages/")))  # not a venv under root

found = {}
for script in sys.argv[4:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        spec = importlib.util.spec_from_file_location("stage_under_test", root / script)
        module = sys.modules["stage_under_test"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded = {"files": project_files(), "packages": sorted({name.split(".")[0] for name in sys.modules})}
        if "pipeline.training.evaluator" in sys.modules:
            for name in filter(None, sys.argv[3].split(",")):
                importlib.import_module(name)
        loaded["training"] = project_files()
        os.write(write, json.dumps(loaded).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        found[script] = json.loads(answer.read() or b"null")
    _, status = os.wait()
    assert status == 0 and found[script] is not None, f"importing {script} failed"
print(json.dumps(found))
"""
TRAINING_STACK = ("lightning.pytorch", "matplotlib.pyplot", "mlflow", "optuna", "pandas", "scipy.stats",
                  "sklearn.model_selection", "torch")  # fmt: skip


def probe(scripts: list[str], stack: tuple[str, ...] = ()) -> dict[str, dict]:
    """Per stage script, the project files and packages it loads on top of ``stack``."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO_ROOT), ",".join(stack), ",".join(sorted(DEFERRED)),
                           *scripts], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def project_files_by_script() -> dict[str, list[str]]:
    """Every stage script's project files, each imported on top of the training stack, with those its
    first training loads."""
    scripts = sorted({stage_script(stage) for stage in STAGES.values()})
    return {script: loaded["training"] for script, loaded in probe(scripts, TRAINING_STACK).items()}


def loaded_by(script: str) -> dict:
    """What one stage script loads in a fresh interpreter."""
    return probe([script])[script]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def stage_script(stage: dict) -> str:
    words = shlex.split(stage["cmd"])
    assert words[0] == "python" and words[1].startswith("stages/"), stage["cmd"]
    return words[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_project_module_a_stage_loads_is_one_of_its_deps(name, project_files_by_script):
    stage = STAGES[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    project = project_files_by_script[stage_script(stage)]
    assert stage_script(stage) in project
    missing = [f for f in project if not covered(f, deps)]
    assert missing == [], f"{name}: add to its deps in dvc.yaml: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, allowed_heavy",
    # The searches, the sensitivity stage and the champion load Lightning at their first training: one that
    # reuses every finished repeat, or skips its method, imports in 4.5 s instead of 7.6 (benchmarks/RESULTS.md).
    [("prepare", {"torch"}), ("report", {"mlflow"}), ("ga_search", {"torch", "mlflow"}),
     ("ga_sensitivity", {"torch", "mlflow"}), ("champion", {"torch", "mlflow"})],
)  # fmt: skip
def test_light_stages_do_not_load_the_training_stack(name, allowed_heavy, project_files_by_script):
    script = stage_script(STAGES[name])
    fresh = loaded_by(script)
    packages = set(fresh["packages"])
    heavy = {"torch", "lightning", "mlflow"} - allowed_heavy
    assert not packages & heavy, f"{name} loads {sorted(packages & heavy)}"
    # The forks that check the deps see what a fresh interpreter sees (and, for a training stage, more).
    assert set(fresh["files"]) <= set(project_files_by_script[script])
    if "pipeline/training/evaluator.py" in fresh["files"]:
        assert "pipeline/training/fit.py" in project_files_by_script[script]
    else:
        assert project_files_by_script[script] == fresh["files"]


def test_the_coverage_check_sees_a_missing_dep():
    assert covered("pipeline/search/ga.py", ["pipeline/search"])
    assert not covered("pipeline/search/ga.py", ["pipeline/sear"])
    assert not covered("pipeline/report/build.py", ["pipeline/study/cli.py"])


def test_the_committed_studies_run_the_projects_stages(capsys):
    """Each ``studies/<name>/dvc.yaml`` is the project's, rewritten by ``studies/sync_dvc.py``: a
    stage added or a dep changed in ``dvc.yaml`` must reach the studies too."""
    sync = _load_sync()
    assert sync.main(["--check"]) == 0, capsys.readouterr().err
    assert sync.study_folders() and sync.suite_folders() == [REPO_ROOT / "studies" / "benchmarks"]
    for folder in sync.study_folders():
        study = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
        assert study.keys() == STAGES.keys()
        for name, stage in study.items():
            # Code is the repository's own; data, results and checkpoints stay in the study's folder.
            assert all(
                d.startswith("../../") == d.startswith(("../../pipeline", "../../stages")) for d in stage["deps"]
            )
            assert stage["cmd"] == STAGES[name]["cmd"].replace("stages/", "../../stages/")


def test_your_data_and_builder_are_deps_of_the_stages_that_read_them():
    """``${data.path}`` reruns prepare (and, through its output, everything after); ``${model.source}``
    reruns the searches and the champion but not prepare. A study without the keys (a built-in
    dataset in studies/) gets neither, as DVC cannot interpolate a missing key."""
    users = {name for name, stage in STAGES.items() if "${model.source}" in stage["deps"]}
    from pipeline.search.registry import method_names

    assert users == {f"{m}_search" for m in method_names()} | {"ga_sensitivity", "champion"}
    assert [name for name, stage in STAGES.items() if "${data.path}" in stage["deps"]] == ["prepare"]
    sync = _load_sync()
    project = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert "${data.path}" not in sync.rendered(project, {"data": {"dataset": "digits"}})
    assert "- ${data.path}" in sync.rendered(project, {"data": {"path": "table.csv"}})


def test_the_studies_check_sees_a_stale_study(tmp_path):
    sync = _load_sync()
    project = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    edited = {**project, "stages": {**project["stages"], "extra": {"cmd": "python stages/extra.py", "deps": []}}}
    assert sync.rendered(edited) != sync.rendered(project)
    assert "python ../../stages/extra.py" in sync.rendered(edited)


def _load_sync():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_dvc", REPO_ROOT / "studies" / "sync_dvc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_study_has_a_stage_per_registered_method():
    from pipeline.search.registry import table_method_names

    assert [n.removesuffix("_suite") for n in SUITE_STAGES if n.endswith("_suite")] == table_method_names() + [
        "ga_tuned"
    ]


SUITE_STAGES = yaml.safe_load((REPO_ROOT / "studies" / "benchmarks" / "dvc.yaml").read_text())["stages"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["suite_sensitivity", "ga_suite", "suite_report"])
def test_every_project_module_a_benchmark_stage_loads_is_one_of_its_deps(name):
    """The benchmark study's stages (generated by studies/sync_dvc.py) cover what their scripts
    import, and none loads the training stack: a lookup needs no torch or Lightning."""
    stage = SUITE_STAGES[name]
    deps = [d.removeprefix("../../") for d in stage["deps"]]
    script = shlex.split(stage["cmd"])[1].removeprefix("../../")
    loaded = loaded_by(script)
    project = [f for f in loaded["files"] if f.startswith(("pipeline/", "stages/"))]
    missing = [f for f in project if not covered(f, deps)]
    assert missing == [], f"{name}: add to SUITE_CODE in studies/sync_dvc.py: {missing}"
    assert not {"torch", "lightning"} & set(loaded["packages"])
