"""Where evaluations run, measured on the same work in one run: one process (2 threads), two local
worker processes (1 thread each), and Ray tasks on a local cluster of the same 2 CPUs (1 CPU each).

Work: ``--evaluations`` genomes drawn from the default search space with epochs fixed to 1, trained
on the repository's prepared data (run ``dvc repro prepare`` first) through the search stage's
runner with a scratch MLflow store, as a random search. Prints a table and writes JSON.

    python benchmarks/execution_backends.py --evaluations 8 --out benchmarks/execution_backends.json
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray reads its authentication settings when imported: the cluster below uses a fresh token.
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import cpu_name  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.study.search_stage import run_search_stage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "one process, 2 threads": {"backend": "local", "workers": 1, "threads_per_evaluation": 2},
    "2 local workers, 1 thread each": {"backend": "local", "workers": 2, "threads_per_evaluation": 1},
    "Ray, local 2-CPU cluster, 1 CPU each": {"backend": "ray", "ray": {"address": None, "num_cpus": 1}},
}


def params(evaluations: int, execution: dict, address: str | None) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["budget"]["evaluations"] = evaluations
    raw["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": 1}
    if execution["backend"] == "ray":
        execution = {**execution, "ray": {**execution["ray"], "address": address}}
    raw["execution"] = execution
    raw["mlflow"]["experiment"] = "execution-backends"
    raw["study"] = {"repeats": 1, "seeds": None}  # one search per way
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_cli, "start", "--head", "--port", "6399", "--num-cpus", "2", "--disable-usage-stats",
                    "--include-dashboard=false"], check=True, capture_output=True)  # fmt: skip
    rows = []
    try:
        for way, execution in WAYS.items():
            with tempfile.TemporaryDirectory() as scratch:
                os.environ["DVC_ROOT"] = scratch
                config = parse_config(params(args.evaluations, execution, "127.0.0.1:6399"))
                started = time.perf_counter()
                (summary,) = run_search_stage("random", config, ROOT / "data" / "prepared", Path(scratch) / "r",
                                              Path(scratch) / "c")  # fmt: skip
                seconds = time.perf_counter() - started
            rows.append({
                "way": way, "evaluations": summary["evaluations"], "seconds": round(seconds, 1),
                "evaluations/hour": round(summary["evaluations"] * 3600 / seconds), "best val acc": summary["best_val_acc"],
            })  # fmt: skip
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True)
    table = pd.DataFrame(rows)
    base = table.loc[0, "evaluations/hour"]
    table["ratio to one process"] = (table["evaluations/hour"] / base).round(2)
    machine = f"{os.cpu_count()}-core {cpu_name()}, torch {torch.__version__}"
    print(f"{machine}; {args.evaluations} evaluations of 1 epoch each, as a random search")
    print(table.to_markdown(index=False))
    if args.out:
        write_json(args.out, {"machine": machine, "evaluations": args.evaluations, "rows": table.to_dict("records")})


if __name__ == "__main__":
    main()
