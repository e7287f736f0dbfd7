"""The fast tier's guard (tests/conftest.py): a test not marked slow that trains or starts a process
fails, so ``make check`` stays a tier that does neither."""

from __future__ import annotations

import multiprocessing
import subprocess

import lightning
import pytest

from tests.conftest import SlowWithoutMark


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
