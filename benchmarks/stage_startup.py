"""What a stage process pays before it does any work: the seconds a fresh interpreter takes to import
a stage script (its ``main()`` does not run), alone (a stage that reuses every finished repeat, or
skips its method) and with Lightning (what a stage pays once it trains, and what every stage paid
when Lightning loaded at import). Runs alternate, one at a time; the median of ``--repeats`` is kept.

    python benchmarks/stage_startup.py --out benchmarks/stage_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import cpu_name  # noqa: E402

STAGE_SCRIPTS = ["stages/search.py", "stages/sensitivity.py", "stages/champion.py", "stages/report.py"]
IMPORT = (
    "import importlib.util, sys; sys.path.insert(0, {root!r}); {extra}"
    "spec = importlib.util.spec_from_file_location('stage', {script!r}); "
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
)


def seconds_to_import(script: str, with_lightning: bool) -> float:
    code = IMPORT.format(root=str(ROOT), script=str(ROOT / script), extra="import lightning.pytorch; " * with_lightning)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for script in STAGE_SCRIPTS:
        alone, with_lightning = [], []
        for _ in range(args.repeats):  # alternated: a drift in the machine's speed hits both alike
            alone.append(seconds_to_import(script, with_lightning=False))
            with_lightning.append(seconds_to_import(script, with_lightning=True))
        rows.append({"script": script, "alone_s": round(statistics.median(alone), 2),
                     "with_lightning_s": round(statistics.median(with_lightning), 2)})  # fmt: skip
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores; median of {args.repeats}")
    print("| stage script | import alone (s) | with Lightning (s) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        ratio = row["with_lightning_s"] / row["alone_s"]
        print(f"| `{row['script']}` | {row['alone_s']:.2f} | {row['with_lightning_s']:.2f} | {ratio:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
