"""What `make study` prints when it ends: the report's first sentence and where to look next.

python -m pipeline.study.summary [results_dir]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def headline(report_md: Path) -> str:
    """The report's first paragraph after its title, as plain text (no Markdown emphasis)."""
    paragraphs = [p.strip() for p in report_md.read_text().split("\n\n") if p.strip()]
    first = next((p for p in paragraphs if not p.startswith("#")), "")
    return re.sub(r"\*\*(.+?)\*\*", r"\1", first)


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else Path("results")
    report = results / "report.md"
    if not report.is_file():
        print(f"no report at {report}: run dvc repro first", file=sys.stderr)
        return 1
    print(f"\n{headline(report)}\n")
    print(f"Report: {results / 'report.html'} (and report.md); every evaluation: {results / 'evaluations.csv'}")
    print("Runs: make ui (MLflow); what changed against the committed results: dvc metrics diff")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
