"""What every stage script shares: load and validate ``params.yaml`` first, and turn the errors a
user can fix into one clear line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.config import load_config
from pipeline.errors import USER_ERRORS


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM becomes an exception, so open MLflow runs are closed as KILLED on the way out.
    raise SystemExit(128 + signum)


def stage_main(stage: Callable[[Any], object], loader: Callable[[Path], Any] = load_config) -> Callable[[], None]:
    """``stage(config)`` as a script's ``main``: params loaded by ``loader`` (a trained study's by
    default), every user error one line and exit status 2."""

    @functools.wraps(stage)
    def main() -> None:
        signal.signal(signal.SIGTERM, _terminate)
        params = Path(os.environ.get("EVOHPO_PARAMS", "params.yaml"))
        try:
            stage(loader(params))
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return main
