"""``python -m pipeline params [--markdown]``: every key of ``params.yaml`` with its type, default,
allowed values and meaning, generated from the config sections (``pipeline.config.reference``).
``python -m pipeline results-page [--check]``: the Results page's figures from the reports
(``pipeline.results_page``).
``python -m pipeline methods``: the registered search methods, by the name ``study.methods`` takes.
``python -m pipeline repair-dvc [folder]``: mends the ``.dvc/tmp/rwlock`` or ``dvc.lock`` a kill of DVC
itself left unreadable (``pipeline.study.dvc_repair``); ``make study`` runs it before ``dvc repro``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config.reference import params_reference, render_markdown, render_text
from pipeline.results_page import main as results_page
from pipeline.search.registry import METHODS
from pipeline.study.dvc_repair import DvcBusy, repair_dvc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    params = commands.add_parser("params", help="the params.yaml reference")
    params.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/params.md")
    params.add_argument("key", nargs="?", default="", help="only the keys that start with this, e.g. fidelity")
    page = commands.add_parser("results-page", help="rewrite docs/results.md's generated figures from the reports")
    page.add_argument("--check", action="store_true", help="exit 1 where the page disagrees with its sources")
    commands.add_parser("methods", help="the registered search methods (study.methods names them)")
    repair = commands.add_parser("repair-dvc", help="mend a .dvc/tmp/rwlock or dvc.lock a kill of DVC left unreadable")
    repair.add_argument("folder", nargs="?", default=".", type=Path, help="the DVC repository (default: here)")
    args = parser.parse_args(argv)
    if args.command == "repair-dvc":
        try:
            for mended in repair_dvc(args.folder):
                print(f"{args.folder}: {mended}")
        except DvcBusy as busy:
            sys.exit(f"error: {busy}")
        return
    if args.command == "methods":
        print(render_methods(), end="")
        return
    if args.command == "results-page":
        sys.exit(results_page(check=args.check))
    rows = [row for row in params_reference() if row.key.startswith(args.key)]
    if not rows:
        parser.error(f"no params.yaml key starts with {args.key!r}")
    print(render_markdown(rows) if args.markdown else render_text(rows), end="")


def render_methods() -> str:
    """One line per registered method: its name, label, own params sections, and whether a benchmark
    table (lookups) can run it."""
    lines = []
    for method in METHODS.values():
        settings = ", ".join(method.settings_sections) or "-"
        tables = "trained only" if method.trains_in_intervals else "trained or benchmark tables"
        lines.append(f"{method.name:<8} {method.label:<32} settings: {settings:<6} {tables}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
