"""Resumable search stages: a checkpoint written after every finished evaluation.

A killed stage is resumed by *replaying* its search from the start: the search is deterministic
given its seed and its fitness values, so feeding it the checkpointed results (instead of training)
walks the same random stream to the point where it stopped, and training resumes from there. The
final result equals an uninterrupted run's, and no finished evaluation is trained again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pipeline

FORMAT_VERSION = 1


def code_version() -> str:
    """A hash of the library's source: a changed evaluator or GA must not reuse old results."""
    digest = hashlib.sha256()
    root = Path(pipeline.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(payload: dict[str, Any]) -> str:
    """Params, data checksum and code version of a stage, as one hash."""
    text = json.dumps({**payload, "code": code_version(), "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    path: Path
    fingerprint: str
    status: str = "running"  # "running" until the stage's outputs are written, then "complete"
    stage_run_id: str | None = None
    generation_runs: dict[str, str] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, fingerprint: str) -> tuple[Checkpoint, str]:
        """The checkpoint to continue, or a fresh one; with a sentence saying which and why."""
        if not path.is_file():
            return cls(path, fingerprint), "no checkpoint: starting afresh"
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return cls(path, fingerprint), f"checkpoint {path} unreadable ({exc}): starting afresh"
        if stored.get("fingerprint") != fingerprint:
            return cls(path, fingerprint), (
                f"checkpoint {path} was made with other params, data or code: starting afresh"
            )
        checkpoint = cls(
            path,
            fingerprint,
            status="running",
            stage_run_id=stored.get("stage_run_id"),
            generation_runs=dict(stored.get("generation_runs", {})),
            records=list(stored.get("records", [])),
        )
        return checkpoint, f"resuming from {path}: {len(checkpoint.records)} finished evaluations reused"

    def save(self) -> None:
        from pipeline.search import write_json  # the atomic writer: temp file + rename

        write_json(
            self.path,
            {
                "fingerprint": self.fingerprint,
                "status": self.status,
                "stage_run_id": self.stage_run_id,
                "generation_runs": self.generation_runs,
                "records": self.records,
            },
        )
