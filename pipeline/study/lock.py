"""One run of a stage at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.errors import CheckpointError


class StageLock:
    """An exclusive lock on a stage's file (``flock``), held while the stage runs, so the same stage
    started twice (``python stages/...`` beside ``dvc repro``) cannot train the same individuals
    twice. The kernel releases it when the process dies, even by ``kill -9``."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path, self.stage = Path(path), stage
        self._fd: int | None = None

    def __enter__(self) -> StageLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(
                f"{self.path}: {self.stage} is already running in process {holder}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
