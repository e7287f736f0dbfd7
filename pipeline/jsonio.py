"""JSON files that a kill can never leave half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import OutputError


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), so a killed stage never leaves half a file."""
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
        raise OutputError(
            f"{path}: cannot write ({why}); finished work is kept: run the stage again once it can be written"
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
