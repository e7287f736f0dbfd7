"""Render an HTML page in headless Chromium (Debian's ``chromium``) and read back what it shows.

A test helper, not a fixture module: ``from tests.browser import render_page, require_chromium``.

``render_page`` runs Chromium twice on a ``file://`` URL with the network blocked (every host name
resolves to nothing and every request goes to a dead proxy), so a page that needs the network
visibly fails instead of quietly fetching:

* once with ``--screenshot`` (a PNG of the first ``width`` x ``height`` pixels),
* once with ``--dump-dom`` (the DOM after scripts ran),

then parses the DOM with the stdlib's ``html.parser``: the visible text, every ``<img>`` (data: URIs
decoded with Pillow, from the page itself), and every reference to something outside the page.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes

from PIL import Image

REQUIRE_ENV = "EVOHPO_REQUIRE_BROWSER"
INSTALL_HINT = "install it with: sudo apt-get install chromium, or run make test as root"

# Headless, no sandbox (tests run as root in containers), no GPU, a throwaway profile, and no network:
# host names resolve to nothing and any request that still goes out hits a closed local port.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--virtual-time-budget=5000",
)

# Tags whose content is never shown as text.
_HIDDEN_TAGS = {"script", "style", "noscript", "template", "head", "title"}
# Tags that start a new line of visible text.
_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "caption",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "tr",
    "ul",
}
_CELL_TAGS = {"td", "th"}
# Elements whose src/href/... make the browser load something (anchors are links, not resources).
_RESOURCE_ATTRS = {"src", "href", "srcset", "poster", "data", "background"}
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(['"])(.*?)\1""", re.IGNORECASE)
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or produced no usable screenshot / DOM."""


@dataclass(frozen=True)
class ImageInfo:
    """One ``<img>`` of the rendered DOM."""

    alt: str | None
    src: str  # the src attribute, shortened to 80 characters for data: URIs
    is_data: bool  # src is a data: URI (embedded in the page)
    mime: str | None = None  # data: URIs only, e.g. "image/png"
    format: str | None = None  # Pillow's format of the decoded bytes ("PNG"), or "SVG"
    size: tuple[int, int] | None = None  # decoded (width, height) in pixels; None for SVG or errors
    error: str | None = None  # why a data: URI could not be decoded

    @property
    def external(self) -> bool:
        return not self.is_data


@dataclass(frozen=True)
class ExternalRef:
    """A reference in the rendered DOM to something outside the page (not data:, not #fragment)."""

    tag: str
    attr: str  # "src", "href", "srcset", ..., "style" (CSS url()) or "css" (a <style> block)
    url: str


@dataclass
class RenderedPage:
    text: str  # visible text of the rendered DOM (no script/style/head), one line per block
    title: str  # <title> text
    images: list[ImageInfo]
    external_refs: list[ExternalRef]  # resources the page would load: img/script/link/iframe/source/CSS url()
    anchor_refs: list[str]  # <a>/<area> hrefs that leave the page (allowed: e.g. MLflow UI links)
    screenshot: Path
    screenshot_size: tuple[int, int]
    dom: str = field(repr=False)

    @property
    def data_images(self) -> list[ImageInfo]:
        return [image for image in self.images if image.is_data]


def chromium_path() -> str | None:
    """Debian's Chromium (``/usr/bin/chromium``), else whatever ``chromium``/``chromium-browser`` is on PATH."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_required() -> bool:
    """``EVOHPO_REQUIRE_BROWSER`` set to anything but ''/0/false/no: a missing Chromium fails the test."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    """Chromium's path, or skip the calling test (fail it when ``EVOHPO_REQUIRE_BROWSER=1``)."""
    import pytest

    path = chromium_path()
    if path is None:
        message = f"Debian's chromium is not installed ({INSTALL_HINT})"
        if browser_required():
            pytest.fail(f"{message}; {REQUIRE_ENV} is set, so the browser test may not be skipped")
        pytest.skip(message)
    return path


def render_page(
    html_path: Path,
    screenshot_path: Path,
    width: int = 1200,
    height: int = 2400,
    timeout: float = 120,
    *,
    chromium: str | None = None,
    require_nonblank: bool = True,
) -> RenderedPage:
    """Screenshot ``html_path`` and dump its rendered DOM with headless Chromium, network blocked.

    Raises ``BrowserError`` (with the tail of Chromium's stderr) when Chromium is missing, fails, times
    out without output, writes no decodable screenshot, or (``require_nonblank``) a screenshot of one
    flat colour.
    """
    binary = chromium or chromium_path()
    if binary is None:
        raise BrowserError(f"Debian's chromium is not installed ({INSTALL_HINT})")
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise BrowserError(f"no such page: {html_path}")
    screenshot_path = Path(screenshot_path).resolve()
    screenshot_path.parent.mkdir(parents=True, exist_ok=True)
    screenshot_path.unlink(missing_ok=True)
    url = html_path.as_uri()

    _, _, shot_err = _run_chromium(
        binary,
        [f"--screenshot={screenshot_path}", f"--window-size={width},{height}", url],
        timeout,
        done=lambda out: _png_complete(screenshot_path),
    )
    shot_size = _check_screenshot(screenshot_path, shot_err, require_nonblank)

    _, dom, dom_err = _run_chromium(
        binary,
        [f"--window-size={width},{height}", "--dump-dom", url],
        timeout,
        done=lambda out: b"</html>" in out.lower(),
    )
    dom_text = dom.decode("utf-8", errors="replace")
    if "<html" not in dom_text.lower():
        raise BrowserError(f"chromium --dump-dom printed no document for {url}{_tail(dom_err)}")

    parser = _DomParser()
    parser.feed(dom_text)
    parser.close()
    return RenderedPage(
        text=parser.visible_text(),
        title=" ".join("".join(parser.title_parts).split()),
        images=[_image_info(attrs) for attrs in parser.img_attrs],
        external_refs=parser.external_refs,
        anchor_refs=parser.anchor_refs,
        screenshot=screenshot_path,
        screenshot_size=shot_size,
        dom=dom_text,
    )


# --- running Chromium -----------------------------------------------------------------------------


def _run_chromium(binary: str, args: list[str], timeout: float, done) -> tuple[int | None, bytes, bytes]:
    """Run Chromium in its own process group; on timeout kill the group, and accept the run if ``done``.

    Headless Chromium sometimes writes its output and then lingers: a timeout with the output complete
    is a success, a timeout without it an error.
    """
    with tempfile.TemporaryDirectory(prefix="evohpo-chromium-", ignore_cleanup_errors=True) as profile:
        command = [binary, *BASE_FLAGS, f"--user-data-dir={profile}", *args]
        env = dict(os.environ, HOME=profile)  # keep ~/.config, ~/.cache and crash dumps out of the real home
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = _drain(proc)
            if done(out):
                return None, out, err
            raise BrowserError(f"chromium timed out after {timeout:g}s: {' '.join(args)}{_tail(err)}") from None
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                _drain(proc)
        # The browser may leave helper processes behind in its group: end them with it.
        _kill_group(proc)
    if proc.returncode != 0 and not done(out):
        raise BrowserError(f"chromium exited with {proc.returncode}: {' '.join(args)}{_tail(err)}")
    return proc.returncode, out, err


def _drain(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """What a killed Chromium had written; never waits long on pipes a stray helper keeps open."""
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return b"", b""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(stderr: bytes, lines: int = 25) -> str:
    """The last lines of Chromium's stderr, without the D-Bus noise of a container."""
    text = stderr.decode("utf-8", errors="replace").splitlines()
    useful = [line for line in text if "dbus" not in line.lower() and "unexpected operator" not in line]
    tail = (useful or text)[-lines:]
    return ("\n--- chromium stderr (tail) ---\n" + "\n".join(tail)) if tail else " (no stderr)"


def _png_complete(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _check_screenshot(path: Path, stderr: bytes, require_nonblank: bool) -> tuple[int, int]:
    if not path.is_file() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot at {path}{_tail(stderr)}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG":
                raise BrowserError(f"screenshot {path} is {image.format}, not PNG")
            size = image.size
            extrema = image.convert("RGB").getextrema()
    except (OSError, ValueError, SyntaxError) as exc:
        raise BrowserError(f"screenshot {path} does not decode: {exc}{_tail(stderr)}") from exc
    if require_nonblank and all(low == high for low, high in extrema):
        raise BrowserError(f"screenshot {path} is one flat colour {tuple(low for low, _ in extrema)}: nothing rendered")
    return size


# --- reading the DOM ------------------------------------------------------------------------------


def _is_local(url: str) -> bool:
    url = url.strip()
    return url == "" or url.startswith("#") or url.lower().startswith("data:")


def _srcset_urls(value: str) -> list[str]:
    # "a.png 1x, b.png 2x": data: URIs contain commas, so split on ", " followed by a new candidate.
    urls = []
    for candidate in re.split(r",\s+(?=\S)", value.strip()):
        parts = candidate.strip().split()
        if parts:
            urls.append(parts[0])
    return urls


def _css_urls(css: str) -> list[str]:
    return [match.group(2) for match in _CSS_URL.finditer(css)] + [m.group(2) for m in _CSS_IMPORT.finditer(css)]


class _DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hidden_depth = 0
        self.stack: list[str] = []
        self.in_title = False
        self.in_style = False
        self.chunks: list[str] = []
        self.title_parts: list[str] = []
        self.img_attrs: list[dict[str, str | None]] = []
        self.external_refs: list[ExternalRef] = []
        self.anchor_refs: list[str] = []

    # tags
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag in _VOID_TAGS:
            if tag in _BLOCK_TAGS and not self.hidden_depth:
                self.chunks.append("\n")
            return
        self.stack.append(tag)
        if tag in _HIDDEN_TAGS:
            self.hidden_depth += 1
        self.in_title = self.in_title or tag == "title"
        self.in_style = self.in_style or tag == "style"
        if not self.hidden_depth and (tag in _BLOCK_TAGS):
            self.chunks.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag in _BLOCK_TAGS and not self.hidden_depth:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS or tag not in self.stack:
            return
        while self.stack:
            open_tag = self.stack.pop()
            if open_tag in _HIDDEN_TAGS:
                self.hidden_depth -= 1
            if open_tag == "title":
                self.in_title = False
            if open_tag == "style":
                self.in_style = False
            if not self.hidden_depth:
                if open_tag in _BLOCK_TAGS:
                    self.chunks.append("\n")
                elif open_tag in _CELL_TAGS:
                    self.chunks.append(" \t ")
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
        if self.in_style:
            for url in _css_urls(data):
                if not _is_local(url):
                    self.external_refs.append(ExternalRef("style", "css", url))
        if not self.hidden_depth:
            # Source line breaks are spaces, except in <pre>: lines come from block tags only.
            self.chunks.append(data if "pre" in self.stack else re.sub(r"\s+", " ", data))

    # references
    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs}
        if tag == "img":
            self.img_attrs.append(values)
        for name, value in attrs:
            if value is None:
                continue
            if name == "style":
                for url in _css_urls(value):
                    if not _is_local(url):
                        self.external_refs.append(ExternalRef(tag, "style", url))
                continue
            if name not in _RESOURCE_ATTRS:
                continue
            urls = _srcset_urls(value) if name == "srcset" else [value]
            for url in urls:
                if _is_local(url):
                    continue
                if tag in ("a", "area") and name == "href":
                    self.anchor_refs.append(url.strip())
                else:
                    self.external_refs.append(ExternalRef(tag, name, url.strip()))

    def visible_text(self) -> str:
        text = "".join(self.chunks)
        lines = []
        for line in text.split("\n"):
            cells = [" ".join(cell.split()) for cell in line.split("\t")]
            joined = "\t".join(cell for cell in cells if cell)
            if joined:
                lines.append(joined)
        return "\n".join(lines)


def _image_info(attrs: dict[str, str | None]) -> ImageInfo:
    src = (attrs.get("src") or "").strip()
    alt = attrs.get("alt")
    if not src.lower().startswith("data:"):
        return ImageInfo(alt=alt, src=src, is_data=False)
    short = src if len(src) <= 80 else src[:77] + "..."
    header, sep, payload = src[5:].partition(",")
    if not sep:
        return ImageInfo(alt=alt, src=short, is_data=True, error="data: URI without a comma")
    params = header.split(";")
    mime = params[0].strip().lower() or "text/plain"
    try:
        if any(p.strip().lower() == "base64" for p in params[1:]):
            raw = base64.b64decode(re.sub(r"\s+", "", unquote_to_bytes(payload).decode("ascii")), validate=True)
        else:
            raw = unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        return ImageInfo(alt=alt, src=short, is_data=True, mime=mime, error=f"bad data: payload: {exc}")
    if mime == "image/svg+xml":
        ok = b"<svg" in raw[:4096].lower()
        return ImageInfo(
            alt=alt,
            src=short,
            is_data=True,
            mime=mime,
            format="SVG",
            error=None if ok else "SVG data: URI holds no <svg>",
        )
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return ImageInfo(alt=alt, src=short, is_data=True, mime=mime, format=image.format, size=image.size)
    except (OSError, ValueError, SyntaxError) as exc:
        return ImageInfo(alt=alt, src=short, is_data=True, mime=mime, error=f"does not decode as an image: {exc}")


def local_server_dom(url: str, *, chromium: str | None = None, virtual_time_ms: int = 25_000,
                     timeout: float = 120) -> str:  # fmt: skip
    """The DOM of a page served on this machine's loopback (an MLflow UI) after its scripts ran for
    ``virtual_time_ms`` of virtual time. Host names still resolve to nothing; only the loopback
    address in ``url`` is reached (the proxy flags that block loopback are left out,
    and the resolver rule spares 127.0.0.1)."""
    binary = chromium or chromium_path()
    if binary is None:
        raise BrowserError(f"Debian's chromium is not installed ({INSTALL_HINT})")
    if not url.startswith("http://127.0.0.1:"):
        raise BrowserError(f"not a loopback address: {url}")
    flags = [f for f in BASE_FLAGS if not f.startswith(("--proxy-", "--virtual-time-budget", "--host-resolver-rules"))]
    flags.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="evohpo-chromium-", ignore_cleanup_errors=True) as profile:
        command = [binary, *flags, f"--user-data-dir={profile}", f"--virtual-time-budget={virtual_time_ms}",
                   "--window-size=1600,1200", "--dump-dom", url]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=timeout, env=dict(os.environ, HOME=profile),
                              start_new_session=True)  # fmt: skip
    dom = done.stdout.decode("utf-8", errors="replace")
    if "<html" not in dom.lower():
        raise BrowserError(f"chromium --dump-dom printed no document for {url}{_tail(done.stderr)}")
    return dom
