"""The fast tier's guard (tests/conftest.py): a test not marked slow that trains or starts a process
fails, so ``make check`` stays a tier that does neither; and the groups that keep a module's shared
fixture on one pytest-xdist worker."""

from __future__ import annotations

import multiprocessing
import subprocess

import lightning
import pytest

from tests.conftest import SlowWithoutMark, module_fixture_groups


def test_a_test_not_marked_slow_cannot_train_or_start_a_process():
    with pytest.raises(SlowWithoutMark, match="Trainer.fit"):
        lightning.Trainer.fit(None, None)
    with pytest.raises(SlowWithoutMark, match=r"a new process \(true\)"):
        subprocess.run(["true"], check=False)
    with pytest.raises(SlowWithoutMark, match="a worker process"):
        multiprocessing.get_context("spawn").Process(target=print).start()


@pytest.mark.slow
def test_a_slow_test_may_start_a_process():
    assert subprocess.run(["true"], check=False).returncode == 0


def test_tests_sharing_a_module_fixture_run_in_one_group_and_unrelated_fixtures_apart():
    groups = module_fixture_groups(
        {
            "sequential": {"sequential_results"},
            "on_ray": {"ray_cluster", "sequential_results"},
            "cluster_only": {"ray_cluster"},
            "tabular_a": {"tabular"},
            "tabular_b": {"tabular"},
            "images": {"images"},
            "plain": set(),
        }
    )
    # Linked through "on_ray": the cluster and the sequential results are built on one worker.
    assert groups["sequential"] == groups["on_ray"] == groups["cluster_only"]
    assert groups["tabular_a"] == groups["tabular_b"] != groups["images"]
    assert groups["images"] != groups["sequential"]
    assert "plain" not in groups  # goes to whichever worker is free
