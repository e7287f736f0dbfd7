"""Resumable search stages: an append-only log of every finished evaluation.

One JSON object per line, flushed and fsynced as it is written, so a save costs the same at the
10,000th evaluation as at the first, and a kill loses at most the line being written (a torn last
line is dropped on reading)::

    {"kind": "header", "format": 2, "fingerprint": "..."}
    {"kind": "stage_run", "run_id": "..."}
    {"kind": "group_run", "group": 0, "run_id": "..."}
    {"kind": "evaluation", "record": {...}}
    {"kind": "complete"}

A killed stage is resumed by *replaying* its search from the start: the strategy is deterministic
given its seed and its scores, so feeding it the logged records (instead of training) walks the
same random stream to the point where it stopped, and training resumes from there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline
from pipeline.errors import CheckpointError
from pipeline.evaluation import EvaluationRecord

if TYPE_CHECKING:
    from pipeline.config.sections import ModelConfig

FORMAT_VERSION = 2


def code_version() -> str:
    """A hash of the library's source: a changed evaluator or GA must not reuse old results."""
    digest = hashlib.sha256()
    root = Path(pipeline.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_digest(model: ModelConfig) -> str | None:
    """A hash of a user's model builder's code (``model.source``: its file, or every file of its
    folder): an edited builder must not reuse results of the old one. None for the built-ins (their
    code is the library's, in ``code_version``)."""
    if not model.custom:
        return None
    root = Path(model.source)
    files = (
        sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if root.is_dir() else [root]
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()[:16]


def platform_signature() -> dict[str, str]:
    """What results are bit-identical within: one machine type and one torch (not across them)."""
    import torch  # here: the checkpoint log itself needs no training stack

    return {"torch": torch.__version__, "machine": platform.machine()}


def fingerprint(payload: dict[str, Any]) -> str:
    """Params, data checksum, where runs are logged and the code version of a stage, as one hash."""
    text = json.dumps({**payload, "code": code_version(), "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """What a stage has logged: read once at ``open``, then only appended to."""

    path: Path
    fingerprint: str
    stage_run_id: str | None = None
    group_runs: dict[int, str] = field(default_factory=dict)
    records: list[EvaluationRecord] = field(default_factory=list)  # as read at open: the ones to replay

    @classmethod
    def open(cls, path: Path, fingerprint: str) -> tuple[Checkpoint, str]:
        """The checkpoint to continue, or a fresh one (the file started anew); with a sentence
        saying which and why. Only a killed search is continued: a complete one means the stage
        was forced (``dvc repro -f``) or its outputs went missing, so it trains afresh."""
        checkpoint = cls(path, fingerprint)
        if not path.is_file():
            checkpoint._start()
            return checkpoint, "no checkpoint: starting afresh"
        lines, valid_bytes, problem = _read_lines(path)
        header = lines[0] if lines else {}
        if header.get("kind") != "header":
            checkpoint._start()
            return checkpoint, f"checkpoint {path} unreadable ({problem or 'no header'}): starting afresh"
        if header.get("fingerprint") != fingerprint:
            checkpoint._start()
            return checkpoint, f"checkpoint {path} was made with other params, data or code: starting afresh"
        if any(line.get("kind") == "complete" for line in lines):
            checkpoint._start()
            return checkpoint, f"checkpoint {path} is of a completed search (the stage was forced): training afresh"
        for line in lines[1:]:
            checkpoint._apply(line)
        if valid_bytes != path.stat().st_size:
            os.truncate(path, valid_bytes)  # appends must follow the valid part, not a torn or broken tail
        note = f" (kept the valid part: {problem})" if problem else ""
        return checkpoint, f"resuming from {path}: {len(checkpoint.records)} finished evaluations reused{note}"

    def _apply(self, line: dict[str, Any]) -> None:
        kind = line.get("kind")
        if kind == "stage_run":
            self.stage_run_id = line["run_id"]
        elif kind == "group_run":
            self.group_runs[int(line["group"])] = line["run_id"]
        elif kind == "evaluation":
            self.records.append(EvaluationRecord.from_dict(line["record"]))

    def restart(self) -> None:
        """Forget what was read and start the file anew."""
        self.stage_run_id, self.group_runs, self.records = None, {}, []
        self._start()

    def _start(self) -> None:
        """Replace the file by a bare header (atomically: temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        header = {"kind": "header", "format": FORMAT_VERSION, "fingerprint": self.fingerprint}
        self._write(temporary, "w", header)
        temporary.replace(self.path)

    def set_stage_run(self, run_id: str) -> None:
        self.stage_run_id = run_id
        self._append({"kind": "stage_run", "run_id": run_id})

    def set_group_run(self, group: int, run_id: str) -> None:
        self.group_runs[group] = run_id
        self._append({"kind": "group_run", "group": group, "run_id": run_id})

    def append(self, record: EvaluationRecord) -> None:
        self._append({"kind": "evaluation", "record": record.to_dict()})

    def mark_complete(self) -> None:
        self._append({"kind": "complete"})

    def _append(self, line: dict[str, Any]) -> None:
        self._write(self.path, "a", line)

    @staticmethod
    def _write(path: Path, mode: str, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            with open(path, mode, encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
            raise CheckpointError(f"{path}: cannot write the checkpoint ({why}); what it holds stays valid") from None


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int, str | None]:
    """The valid prefix of the log, its length in bytes, and what ended it early (None when every
    complete line was valid). A torn last line (a kill mid-write) is dropped silently: it is expected."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], 0, exc.strerror
    # Whatever follows the last newline is a torn write (a kill mid-line): dropped.
    raw_lines = data.split(b"\n")[:-1]
    lines: list[dict[str, Any]] = []
    valid_bytes = 0
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return lines, valid_bytes, f"line {number} is not valid JSON"
        if not _valid_entry(line, first=number == 1):
            return lines, valid_bytes, f"line {number} is not a checkpoint entry"
        lines.append(line)
        valid_bytes += len(raw) + 1
    return lines, valid_bytes, None


def _valid_entry(line: Any, first: bool) -> bool:
    """Whether a parsed line is an entry ``Checkpoint._apply`` can replay: each kind with its fields
    of the right type (a header only first; anything else ends the valid prefix)."""
    if not isinstance(line, dict):
        return False
    kind = line.get("kind")
    if kind == "header":
        return first
    if kind == "stage_run":
        return isinstance(line.get("run_id"), str) and bool(line["run_id"])
    if kind == "group_run":
        group = line.get("group")
        return (isinstance(group, int) and not isinstance(group, bool) and group >= 0
                and isinstance(line.get("run_id"), str) and bool(line["run_id"]))  # fmt: skip
    if kind == "evaluation":
        return _valid_record(line.get("record"))
    return kind == "complete"


def _valid_record(stored: Any) -> bool:
    if not isinstance(stored, dict):
        return False
    try:
        EvaluationRecord.from_dict(stored)
    except (TypeError, KeyError):
        return False
    return True
