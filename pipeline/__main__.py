"""``python -m pipeline params [--markdown]``: every key of ``params.yaml`` with its type, default,
allowed values and meaning, generated from the config sections (``pipeline.config.reference``).
``python -m pipeline results-page [--check]``: the Results page's figures from the reports
(``pipeline.results_page``)."""

from __future__ import annotations

import argparse
import sys

from pipeline.config.reference import params_reference, render_markdown, render_text
from pipeline.results_page import main as results_page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    params = commands.add_parser("params", help="the params.yaml reference")
    params.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/params.md")
    params.add_argument("key", nargs="?", default="", help="only the keys that start with this, e.g. fidelity")
    page = commands.add_parser("results-page", help="rewrite docs/results.md's generated figures from the reports")
    page.add_argument("--check", action="store_true", help="exit 1 where the page disagrees with its sources")
    args = parser.parse_args(argv)
    if args.command == "results-page":
        sys.exit(results_page(check=args.check))
    rows = [row for row in params_reference() if row.key.startswith(args.key)]
    if not rows:
        parser.error(f"no params.yaml key starts with {args.key!r}")
    print(render_markdown(rows) if args.markdown else render_text(rows), end="")


if __name__ == "__main__":
    main()
