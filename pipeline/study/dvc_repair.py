"""Mends what a ``kill -9`` of DVC itself can leave behind. DVC rewrites two files in place (truncate,
then write): ``.dvc/tmp/rwlock`` each time a stage takes or releases its paths, and ``dvc.lock`` after
each stage. A kill inside either write leaves a file no later ``dvc repro`` can read ("Unable to read
RWLock-file '.dvc/tmp/rwlock'. JSON structure is corrupted", treeverse/dvc#7615; "'dvc.lock'
validation failed" for an empty ``dvc.lock``).

- The rwlock only records which live DVC processes read or write which paths: an unreadable one
  records nothing any process can use, and is removed (under DVC's own guard on it).
- An unreadable ``dvc.lock`` is moved aside to ``dvc.lock.unreadable``, never deleted: DVC then runs
  every stage again, the searches reusing their finished repeats and the champion its retrainings,
  so no training is lost. ``git checkout dvc.lock`` restores a committed one instead.

``make study``, ``make studies`` and ``make benchmarks`` run this (``python -m pipeline repair-dvc``)
before ``dvc repro``; it touches nothing while DVC holds the repository's lock."""

from __future__ import annotations

import json
from pathlib import Path

RWLOCK = Path(".dvc") / "tmp" / "rwlock"
LOCKFILE = Path("dvc.lock")


def repair_dvc(repo_root: Path) -> list[str]:
    """Mend ``repo_root``'s rwlock and ``dvc.lock`` where a kill left them unreadable; returns one
    sentence per file mended (none: nothing to mend). Holds DVC's repository lock throughout, so a
    running ``dvc repro`` is never raced (it makes this wait up to DVC's 3 s, then fail)."""
    tmp = repo_root / ".dvc" / "tmp"
    if not tmp.is_dir():
        return []
    from dvc.lock import LockError, make_lock  # DVC's own locks, so no write of theirs is cut short

    try:
        with make_lock(str(tmp / "lock"), tmp_dir=str(tmp)):
            return [said for said in (repair_dvc_rwlock(repo_root), _repair_lockfile(repo_root)) if said]
    except LockError:
        raise DvcBusy(f"{tmp / 'lock'}: a DVC process holds it (dvc repro running here?): nothing mended") from None


class DvcBusy(RuntimeError):
    """DVC holds the repository's lock: a command of it is running there."""


def repair_dvc_rwlock(repo_root: Path) -> str | None:
    """Remove ``repo_root``'s ``.dvc/tmp/rwlock`` if it is not valid JSON, holding DVC's guard on it
    (``rwlock.lock``). Returns the sentence saying what was mended, or None."""
    path = repo_root / RWLOCK
    if not path.is_file():
        return None
    from dvc.lock import make_lock

    with make_lock(str(path.with_name("rwlock.lock")), tmp_dir=str(path.parent)):
        text = path.read_bytes()
        try:
            json.loads(text)
            return None
        except (UnicodeDecodeError, json.JSONDecodeError):
            path.unlink()
    return (
        f"removed {RWLOCK} ({len(text)} bytes, not JSON): a kill of DVC while it wrote the file left it "
        "unreadable; it only records running DVC processes, and dvc repro makes it again"
    )


def _repair_lockfile(repo_root: Path) -> str | None:
    """Move ``dvc.lock`` aside when DVC cannot load it (not YAML, or not a lock file's schema: an
    empty one is what a kill right after DVC truncated it leaves). Call under the repository lock."""
    path = repo_root / LOCKFILE
    if not path.is_file():
        return None
    from dvc.exceptions import DvcException
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.strictyaml import load

    try:
        load(str(path), COMPILED_LOCKFILE_SCHEMA)
        return None
    except DvcException:
        aside = path.with_name(f"{LOCKFILE}.unreadable")
        path.replace(aside)
    return (
        f"moved {LOCKFILE} to {aside.name} ({aside.stat().st_size} bytes, not a lock file DVC can load; a kill "
        "of DVC while it wrote it leaves it so): dvc repro runs every stage again, the searches and the champion "
        "reusing what they finished (or `git checkout dvc.lock` restores the committed one)"
    )
