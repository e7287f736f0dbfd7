"""A kill of DVC itself while it rewrites ``.dvc/tmp/rwlock`` leaves the file unreadable, and every
later ``dvc repro`` stops on it; ``python -m pipeline repair-dvc`` (run by ``make study``) mends it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.study.dvc_rwlock import RWLOCK, repair_dvc_rwlock

VALID = {"read": {}, "write": {"data/prepared": {"pid": 1234, "cmd": "dvc repro"}}}


def write_rwlock(repo: Path, content: bytes) -> Path:
    path = repo / RWLOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content", [b"", b'{"read": {}, "write": {"data/prep', b"\xff\xfe{"])
def test_an_unreadable_rwlock_is_removed_and_said(tmp_path, content):
    path = write_rwlock(tmp_path, content)
    mended = repair_dvc_rwlock(tmp_path)
    assert not path.exists()
    assert mended.startswith(f"removed {RWLOCK} ({len(content)} bytes, not JSON)")


def test_a_readable_rwlock_and_a_missing_one_are_left_alone(tmp_path):
    assert repair_dvc_rwlock(tmp_path) is None
    path = write_rwlock(tmp_path, json.dumps(VALID).encode())
    assert repair_dvc_rwlock(tmp_path) is None
    assert json.loads(path.read_text()) == VALID


@pytest.mark.slow
def test_dvc_repro_stopped_by_a_torn_rwlock_runs_again_after_repair_dvc(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)

    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    (tmp_path / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hello > out.txt\n    outs:\n    - out.txt\n")
    write_rwlock(tmp_path, b"")  # as a kill -9 between DVC's truncate and its write leaves it
    stopped = run("dvc", "repro")
    assert stopped.returncode != 0 and "Unable to read RWLock-file" in stopped.stderr
    repaired = run(sys.executable, "-m", "pipeline", "repair-dvc")
    assert repaired.returncode == 0 and f"removed {RWLOCK}" in repaired.stdout
    assert run("dvc", "repro").returncode == 0
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    assert run(sys.executable, "-m", "pipeline", "repair-dvc").stdout == ""  # nothing left to mend
