"""A kill of DVC itself while it rewrites ``.dvc/tmp/rwlock`` or ``dvc.lock`` leaves the file unreadable,
and every later ``dvc repro`` stops on it; ``python -m pipeline repair-dvc`` (run by ``make study``)
mends it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvc.lock import make_lock

from pipeline.study.dvc_repair import LOCKFILE, RWLOCK, DvcBusy, repair_dvc, repair_dvc_rwlock
from tests.conftest import REPO_ROOT

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


@pytest.mark.parametrize("cut", [0, 1, 40])
def test_an_unreadable_dvc_lock_is_moved_aside_with_its_bytes_and_said(tmp_path, cut):
    (tmp_path / RWLOCK).parent.mkdir(parents=True)
    torn = (REPO_ROOT / LOCKFILE).read_bytes()[:cut]  # empty, or cut inside its first stage's entry
    (tmp_path / LOCKFILE).write_bytes(torn)
    said = repair_dvc(tmp_path)
    assert len(said) == 1 and said[0].startswith(f"moved {LOCKFILE} to dvc.lock.unreadable ({cut} bytes")
    assert not (tmp_path / LOCKFILE).exists() and (tmp_path / "dvc.lock.unreadable").read_bytes() == torn


def test_the_projects_dvc_lock_and_a_readable_rwlock_are_left_alone(tmp_path):
    write_rwlock(tmp_path, json.dumps(VALID).encode())
    (tmp_path / LOCKFILE).write_bytes((REPO_ROOT / LOCKFILE).read_bytes())
    assert repair_dvc(tmp_path) == []
    assert (tmp_path / LOCKFILE).read_bytes() == (REPO_ROOT / LOCKFILE).read_bytes()
    assert repair_dvc(tmp_path / "not-a-dvc-repository") == []


def test_nothing_is_touched_while_dvc_holds_the_repositorys_lock(tmp_path):
    (tmp_path / RWLOCK).parent.mkdir(parents=True)
    (tmp_path / LOCKFILE).write_bytes(b"")  # as DVC leaves it for a moment while it writes it
    held = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"), tmp_dir=str(tmp_path / ".dvc" / "tmp"))
    held.lock()  # as a running dvc repro holds it
    try:
        with pytest.raises(DvcBusy, match=r"lock: a DVC process holds it .*nothing mended"):
            repair_dvc(tmp_path)
    finally:
        held.unlock()
    assert (tmp_path / LOCKFILE).exists()
    assert repair_dvc(tmp_path)[0].startswith(f"moved {LOCKFILE}")  # once DVC let go


@pytest.mark.slow
def test_dvc_repro_stopped_by_a_torn_rwlock_or_dvc_lock_runs_again_after_repair_dvc(tmp_path):
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

    (tmp_path / LOCKFILE).write_bytes(b"")  # killed right after DVC truncated dvc.lock
    stopped = run("dvc", "repro")
    assert stopped.returncode != 0 and "dvc.lock" in stopped.stderr
    repaired = run(sys.executable, "-m", "pipeline", "repair-dvc")
    assert repaired.returncode == 0 and f"moved {LOCKFILE} to dvc.lock.unreadable" in repaired.stdout
    again = run("dvc", "repro")
    assert again.returncode == 0 and "Running stage 'hello'" in again.stdout
    assert "hello" in (tmp_path / LOCKFILE).read_text()

    held = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"), tmp_dir=str(tmp_path / ".dvc" / "tmp"))
    held.lock()  # a dvc repro running here
    try:
        busy = run(sys.executable, "-m", "pipeline", "repair-dvc")
    finally:
        held.unlock()
    assert busy.returncode == 1 and busy.stderr.startswith("error: ") and "nothing mended" in busy.stderr
    assert "Traceback" not in busy.stderr
