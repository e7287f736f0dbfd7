"""The documentation: docs/ builds as a site in strict mode (a broken link, or a page missing from
the navigation, fails), the README stays short and points only at pages that exist."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.commands.build import build
from mkdocs.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_build_strictly(tmp_path):
    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    build(config)  # raises on any warning in strict mode
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    for page in pages:
        assert (tmp_path / "site" / ("index.html" if page == "index.md" else f"{Path(page).stem}/index.html")).is_file()


def test_every_docs_page_is_in_the_navigation():
    config = load_config(str(ROOT / "mkdocs.yml"))
    listed = {next(iter(item.values())) for item in config["nav"]}
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_results_page_figures_equal_their_sources():
    """Every generated block of docs/results.md is what its report says today (python -m pipeline
    results-page rewrites them); a figure typed over, or a report rerun without its page, fails."""
    from pipeline.results_page import BLOCK, PAGE, generated, main

    page = PAGE.read_text()
    specs = [m["spec"] for m in BLOCK.finditer(page)]
    assert len(specs) >= 10 and any(s.startswith("answer results/report.md") for s in specs)
    assert main(check=True) == 0
    typed_over = page.replace(
        "*(generated from `results/report.md`)*", "0.9999 *(generated from `results/report.md`)*", 1
    )
    assert typed_over != page and generated(typed_over) == page
