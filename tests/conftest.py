"""Shared fixtures: a tiny study config, tiny prepared data, and an isolated MLflow store."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings


from pipeline.config import StudyConfig, parse_config
from pipeline.data import PreparedData, prepare_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

# Every gene kind at once (log float, float, choice, log int), for space and operator tests.
MIXED_SPACE = {
    "genes": {
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True},
        "momentum": {"type": "float", "low": 0.0, "high": 0.9},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "batch_size": {"type": "choice", "values": [32, 64, 128, 256]},
        "epochs": {"type": "int", "low": 1, "high": 20, "log": True},
    }
}

# CI machines are shared and slow: judge properties, not per-example timing. ``make check`` (the
# one-minute tier) tries 25 examples per property (HYPOTHESIS_PROFILE=check); the full suite 100.
settings.register_profile("evohpo", deadline=None)
settings.register_profile("check", deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "evohpo"))

# make test hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder),
# the next file to a worker as its current one nears its end. The files that take minutes (make test's --durations)
# go first, longest first, so the short ones fill in at the end instead of a long one starting last
# (xdist's default order, by number of tests, put the two longest last).
LONGEST_FILES_FIRST = (
    "test_e2e.py", "test_soak_paths.py", "test_soak.py", "test_faults.py", "test_examples.py",
    "test_e2e_architecture.py", "test_suite_e2e.py", "test_reliability.py", "test_dvc_deps.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def tiny_params() -> dict:
    """params.yaml shrunk to seconds: digits, a small network, a 6-evaluation budget."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"] = {"dataset": "digits", "root": None, "path": "data/source", "train_size": 400, "val_size": 200,
                      "test_size": 0.2}  # fmt: skip
    params["model"] = {"conv_channels": [4, 8], "hidden_units": 16, "builder": None,
                       "source": "pipeline/training/models.py"}  # fmt: skip
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": 2}
    params["space"]["genes"]["learning_rate"] = {"type": "float", "low": 1.0e-3, "high": 0.3, "log": True}
    params["budget"]["evaluations"] = 6
    params["ga"]["population_size"] = 3
    params["ga"]["elites"] = 1
    params["champion"] = {"epochs": 1, "train_size": 500, "registered_model": "tiny-champion"}
    params["mlflow"] = {"experiment": "tiny"}
    params["study"] = {"repeats": 1, "seeds": None}  # one repeat: the unit tests' searches stay seconds long
    return params


@pytest.fixture(autouse=True)
def no_tracking_uri_from_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test picks its own MLflow store: none inherited from the shell or an earlier test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tiny_params_dict() -> dict:
    return copy.deepcopy(tiny_params())


@pytest.fixture
def tiny_config() -> StudyConfig:
    return parse_config(tiny_params())


@pytest.fixture(scope="session")
def prepared_digits(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    folder = tmp_path_factory.mktemp("prepared")
    config = parse_config(tiny_params())
    prepare_dataset(config.data, config.seed, out_dir=folder, download_dir=folder / "raw")
    return PreparedData.open(folder)


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MLflow store under a fresh project root, as DVC would set it."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


SYSTEM_PROBES = {"ldconfig", "uname"}


class SlowWithoutMark(AssertionError):
    """A test not marked slow trained a network or started a process: the one-minute check
    (``make check``: ``-m "not slow"``) must do neither."""


@pytest.fixture(autouse=True)
def unmarked_tests_train_and_spawn_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside tests marked ``slow``, a Lightning fit or a new process fails the test, so the fast
    tier stays one that trains and spawns nothing (fixtures of a wider scope, set up before this
    one, may prepare data)."""
    if request.node.get_closest_marker("slow"):
        return
    import multiprocessing.process
    import subprocess

    import lightning

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise SlowWithoutMark(f"{what} in a test not marked slow: mark it @pytest.mark.slow")

        return refused

    execute_child = subprocess.Popen._execute_child

    def library_probes_only(popen, args, *rest, **kwargs):
        # Libraries probe the system once as they are first imported (ctypes runs ldconfig, platform
        # runs uname): milliseconds, not the test's own work. Any other program is refused.
        program = Path(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0])).name
        if program not in SYSTEM_PROBES:
            refuse(f"a new process ({program})")()
        return execute_child(popen, args, *rest, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "fit", refuse("Trainer.fit"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", library_probes_only)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("a worker process"))
