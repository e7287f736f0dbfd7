"""Where the study's stages write what the next stages read."""

from __future__ import annotations

from pathlib import Path


def repeat_files(results_dir: Path, method: str, seed: int) -> tuple[Path, Path]:
    """A search repeat's summary and history: ``<results>/<method>_search/seed-<seed>[_history].json``."""
    folder = results_dir / f"{method}_search"
    return folder / f"seed-{seed}.json", folder / f"seed-{seed}_history.json"
