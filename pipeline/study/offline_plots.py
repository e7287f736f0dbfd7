"""An HTML template for ``dvc plots show`` that draws offline: DVC's default page loads Vega,
Vega-Lite and Vega-Embed from a CDN (a blank page without a network); this one inlines them, bundled
by ``vl-convert-python`` (a PyPI package, no network at run time). ``.dvc/config`` names it
(``plots.html_template``), so plain ``dvc plots show`` uses it; ``make install`` writes it.

    python -m pipeline.study.offline_plots .dvc/offline_plots.html
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>evohpo: DVC plots</title>
    <script>{bundle}</script>
    <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    """The page, with ``vegaEmbed``, ``vegaLite`` and ``vega`` defined by the inlined bundle and
    DVC's ``{plot_divs}`` placeholder where the plots go."""
    import vl_convert

    # The bundle must not contain DVC's placeholders (DVC replaces them with str.replace).
    bundle = vl_convert.javascript_bundle().replace("{plot_divs}", "{ plot_divs}").replace("{scripts}", "{ scripts}")
    return PAGE.format(bundle=bundle.replace("</script>", "<\\/script>"))


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path(".dvc/offline_plots.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(offline_template())
    print(f"wrote {target} (dvc plots show draws offline with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
