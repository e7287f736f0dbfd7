"""Mends what a ``kill -9`` of DVC itself can leave behind: an empty or half-written
``.dvc/tmp/rwlock``. DVC rewrites that file in place (truncate, then write) each time a stage takes or
releases its paths, so a kill landing inside that write leaves a file no later ``dvc repro`` can read
("Unable to read RWLock-file '.dvc/tmp/rwlock'. JSON structure is corrupted"; treeverse/dvc#7615).
The file only records which live DVC processes read or write which paths; an unreadable one
records nothing any process can use, so removing it (under DVC's own guard on it) loses nothing.
``make study``, ``make studies`` and ``make benchmarks`` run this before ``dvc repro``."""

from __future__ import annotations

import json
from pathlib import Path

RWLOCK = Path(".dvc") / "tmp" / "rwlock"


def repair_dvc_rwlock(repo_root: Path) -> str | None:
    """Remove ``repo_root``'s ``.dvc/tmp/rwlock`` if it is not valid JSON, holding DVC's guard on it
    (``rwlock.lock``: a DVC process writing it now makes us wait, up to DVC's 3 s, then fail). Returns
    the sentence saying what was mended, or None when there was nothing to mend."""
    path = repo_root / RWLOCK
    if not path.is_file():
        return None
    from dvc.lock import make_lock  # DVC's own lock on the rwlock file, so no write of it is cut short

    guard = make_lock(str(path.with_name("rwlock.lock")), tmp_dir=str(path.parent))
    with guard:
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
