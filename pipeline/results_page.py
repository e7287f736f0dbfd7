"""The Results page's figures, generated from the reports they come from, never typed.

``docs/results.md`` holds blocks between ``<!-- generated: KIND SOURCE [SECTION] -->`` and
``<!-- end generated -->``; each is rewritten from its source, a report the pipeline wrote
(``results/report.md``, ``studies/<name>/results/report.md``,
``studies/benchmarks/results/suite_report.md``) or a JSON file beside it. Kinds:

- ``answer FILE``: the report's first paragraph (its answer), and its champion paragraph if any;
- ``table FILE SECTION``: the first table of a section (``## SECTION``);
- ``section FILE SECTION``: a whole section's text;
- ``verdicts FILE``: the Bayesian signed-rank verdicts of the report's pairwise comparisons;
- ``importance FILE``: the search-space section's fANOVA importances (a report's JSON).

``python -m pipeline results-page`` rewrites the page; ``--check`` exits 1 where it disagrees with its
sources (the tests run it), so a rerun study that is committed without its page fails.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "results.md"
BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)", re.S
)


def sections(markdown: str) -> dict[str, str]:
    """A report's text by its ``## `` section ("" for what comes before the first)."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            found[current] = []
        else:
            found[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in found.items()}


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _section(markdown: str, name: str, source: str) -> str:
    found = sections(markdown)
    if name not in found:
        raise ValueError(f"{source}: no section {name!r} (sections: {', '.join(n for n in found if n)})")
    return found[name]


def answer(markdown: str) -> str:
    """The first paragraph after the report's title, and its champion paragraph."""
    before = [p for p in paragraphs(sections(markdown)[""]) if not p.startswith("# ")]
    chosen = before[:1] + [p for p in before[1:] if p.startswith("Champion")]
    return "\n\n".join(chosen)


def first_table(text: str, source: str) -> str:
    for block in paragraphs(text):
        if block.startswith("|"):
            return block
    raise ValueError(f"{source}: no table in that section")


def verdicts(markdown: str, source: str) -> str:
    """The bullets that follow the Bayesian signed-rank paragraph of the pairwise comparisons."""
    blocks = paragraphs(_section(markdown, "Pairwise comparisons", source))
    for index, block in enumerate(blocks[:-1]):
        if block.startswith("Bayesian signed-rank test"):
            return blocks[index + 1]
    raise ValueError(f"{source}: no Bayesian signed-rank verdicts")


def importance(report: dict, source: str) -> str:
    genes = sorted(((k.removeprefix("importance_"), v) for k, v in report.items() if k.startswith("importance_")),
                   key=lambda item: -item[1])  # fmt: skip
    if not genes:
        raise ValueError(f"{source}: no importance_* figures")
    listed = ", ".join(f"`{gene}` {value:.2f}" for gene, value in genes)
    return f"fANOVA importance of each gene for the validation score (the report's search-space section): {listed}."


def render(spec: str, root: Path = ROOT) -> str:
    """The text of one generated block, with the file it came from."""
    kind, source, *rest = shlex.split(spec)
    path = root / source
    if not path.is_file():
        raise FileNotFoundError(f"{source}: missing (the Results page's block {spec!r} comes from it)")
    text = path.read_text()
    if kind == "answer":
        body = answer(text)
    elif kind == "table":
        body = first_table(_section(text, rest[0], source), source)
    elif kind == "section":
        body = _section(text, rest[0], source)
    elif kind == "verdicts":
        body = verdicts(text, source)
    elif kind == "importance":
        body = importance(json.loads(text), source)
    else:
        raise ValueError(f"unknown kind of generated block {kind!r} in {spec!r}")
    return f"{body}\n\n*(generated from `{source}`)*\n"


def generated(page_text: str, root: Path = ROOT) -> str:
    """The page with every generated block rewritten from its source."""
    return BLOCK.sub(lambda m: m["open"] + render(m["spec"], root) + m["close"], page_text)


def main(check: bool = False, page: Path = PAGE) -> int:
    current = page.read_text()
    fresh = generated(current)
    if check:
        if fresh != current:
            print(f"{page}: its generated figures differ from their sources; run python -m pipeline results-page")
            return 1
        return 0
    page.write_text(fresh)
    return 0
