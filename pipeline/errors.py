"""The errors a user can act on. A leaf module: every stage imports it cheaply, and a stage turns
each into one line naming the key or file at fault (``pipeline.study.cli``), never a traceback."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception as one short line (its first, at most 300 characters): what a message quotes."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ConfigError(ValueError):
    """A ``params.yaml`` that cannot run; the message names the dotted key at fault."""


class DatasetError(RuntimeError):
    """A dataset that cannot be found or read; the message names the file and what to do."""


class TrackingError(RuntimeError):
    """MLflow's store cannot be used; the message says which and what to do."""


class SearchFailed(RuntimeError):
    """A search (or champion) with nothing to report: every individual failed."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or continued; the message names the file."""


class ExecutionError(RuntimeError):
    """Evaluations cannot run where ``execution`` says (a Ray cluster unreachable or gone)."""


class OutputError(RuntimeError):
    """A result file that cannot be written (a full disk, a read-only folder); the message names it."""


USER_ERRORS = (ConfigError, DatasetError, TrackingError, SearchFailed, CheckpointError, ExecutionError, OutputError,
               FileNotFoundError)  # fmt: skip
