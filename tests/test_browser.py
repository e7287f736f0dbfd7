"""tests/browser.py: a self-contained page renders in headless Chromium, and an external one is caught.

Skipped when Debian's chromium is missing, unless EVOHPO_REQUIRE_BROWSER=1 (then it fails).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tests.browser import BrowserError, ExternalRef, render_page, require_chromium  # noqa: E402


# Each test starts Chromium: a process, so the fast tier (make check) leaves them to make test.
pytestmark = pytest.mark.slow


@pytest.fixture
def chromium() -> str:
    return require_chromium()


def figure_png() -> tuple[bytes, tuple[int, int]]:
    """A small matplotlib line plot as PNG bytes, and its pixel size."""
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 2, 3, 4], [0.9, 0.7, 0.75, 0.6], marker="o")
    ax.set_title("validation loss")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = buffer.getvalue()
    with Image.open(io.BytesIO(png)) as image:
        return png, image.size


def write_page(folder: Path, body: str, name: str = "page.html") -> Path:
    page = folder / name
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Tiny report</title>"
        "<style>body{font-family:sans-serif} td,th{border:1px solid #888;padding:2px 6px}</style>"
        f"</head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return page


def test_self_contained_page_renders(tmp_path: Path, chromium: str) -> None:
    png, size = figure_png()
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    page = write_page(
        tmp_path,
        "<h1>Evolutionary HPO report</h1>"
        "<p>The champion reached <b>91.3%</b> test accuracy.</p>"
        "<table><tr><th>method</th><th>best val acc</th></tr>"
        "<tr><td>ga</td><td>0.913</td></tr><tr><td>random</td><td>0.887</td></tr></table>"
        f"<img src='{data_uri}' alt='Validation loss per evaluation'>"
        "<p><a href='http://127.0.0.1:5000/#/experiments/1'>MLflow run</a> <a href='#top'>top</a></p>"
        "<script>document.body.insertAdjacentHTML('beforeend', '<p id=js>script ran</p>')</script>",
    )

    rendered = render_page(page, tmp_path / "shot.png", width=800, height=1000, chromium=chromium)

    assert "Evolutionary HPO report" in rendered.text
    assert "The champion reached 91.3% test accuracy." in rendered.text
    assert "ga\t0.913" in rendered.text.splitlines()
    assert "script ran" in rendered.text  # the DOM is the one after scripts ran
    assert "font-family" not in rendered.text and "insertAdjacentHTML" not in rendered.text
    assert rendered.title == "Tiny report"

    assert len(rendered.images) == 1
    image = rendered.images[0]
    assert image.is_data and image.error is None
    assert image.alt == "Validation loss per evaluation"
    assert (image.format, image.mime, image.size) == ("PNG", "image/png", size)

    assert rendered.external_refs == []
    assert rendered.anchor_refs == ["http://127.0.0.1:5000/#/experiments/1"]

    assert rendered.screenshot.is_file() and rendered.screenshot_size == (800, 1000)
    with Image.open(rendered.screenshot) as shot:
        assert shot.format == "PNG"
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more than 65536 colours
        assert colours is None or len(colours) > 50  # anti-aliased text and a plot, not a blank page


def test_missing_sibling_image_is_an_external_ref(tmp_path: Path, chromium: str) -> None:
    page = write_page(
        tmp_path,
        "<h1>Report</h1><img src='plot.png' alt='Search curves'>"
        "<img src='http://example.com/remote.png' alt='remote' onerror=\"this.dataset.failed='yes'\">"
        "<div style=\"background: url('bg.png')\">styled</div>",
    )

    rendered = render_page(page, tmp_path / "shot.png", width=600, height=400, chromium=chromium)

    assert "Report" in rendered.text
    assert [(i.alt, i.src, i.external) for i in rendered.images] == [
        ("Search curves", "plot.png", True),
        ("remote", "http://example.com/remote.png", True),
    ]
    assert ExternalRef("img", "src", "plot.png") in rendered.external_refs
    assert ExternalRef("img", "src", "http://example.com/remote.png") in rendered.external_refs
    assert ExternalRef("div", "style", "bg.png") in rendered.external_refs
    # The network is blocked: the remote image failed to load instead of being fetched.
    assert 'data-failed="yes"' in rendered.dom


def test_blank_page_and_missing_page_are_errors(tmp_path: Path, chromium: str) -> None:
    blank = write_page(tmp_path, "", name="blank.html")
    with pytest.raises(BrowserError, match="flat colour"):
        render_page(blank, tmp_path / "blank.png", width=300, height=200, chromium=chromium)
    with pytest.raises(BrowserError, match="no such page"):
        render_page(tmp_path / "absent.html", tmp_path / "absent.png", chromium=chromium)
