"""Weight reuse (ga.weights: none | inherit | merge) measured on a real GA search, as the
weight-merge study did: fitness-evaluation time distribution (mean, median, skewness), epochs
trained and accuracy, per rule, with the same seed and budget.

Each rule runs the `ga_search` stage's code (`run_search_stage`) on the repository's prepared data
(run `dvc repro prepare` first) in a scratch MLflow store, with early stopping on, so that a child
that starts from trained weights can finish sooner.

    python benchmarks/weight_reuse.py --budget 16 --out benchmarks/weight_reuse.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import skew

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import parse_config  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.study.layout import repeat_files  # noqa: E402
from pipeline.study.search_stage import run_search_stage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def study_params(kind: str, budget: int, rule: str) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["budget"]["evaluations"] = budget
    params["ga"]["weights"] = rule
    params["ga"]["population_size"] = 4
    params["train"]["early_stopping"] = {"patience": 1, "min_delta": 0.005}
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 2, "high": 4}
    params["mlflow"]["experiment"] = f"weight-reuse-{rule}"
    params["study"] = {"repeats": 1, "seeds": None}  # one search per rule, seeded by params.yaml's seed
    if kind == "architecture":
        params["space"]["kind"] = "architecture"
        params["space"]["architecture"] = {"conv_layers": {"min": 1, "max": 3}, "fc_layers": {"min": 1, "max": 2},
                                           "conv": {"filters": [8, 16, 32]}, "fc": {"units": [32, 64, 128]}}  # fmt: skip
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--kind", choices=["hyperparameters", "architecture"], default="hyperparameters")
    parser.add_argument("--rules", nargs="+", default=["none", "inherit", "merge"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["DVC_ROOT"] = scratch
        for rule in args.rules:
            config = parse_config(study_params(args.kind, args.budget, rule))
            folder = Path(scratch) / rule
            (summary,) = run_search_stage("ga", config, ROOT / "data" / "prepared", folder / "results", folder / "ckpt")
            _, history_file = repeat_files(folder / "results", "ga", config.seed)
            history = json.loads(history_file.read_text())["evaluations"]
            times = np.array([r["train_seconds"] for r in history])
            children = [r for r in history if r["generation"]]
            rows[rule] = {
                "evaluations": len(history),
                "mean_seconds": float(times.mean()),
                "median_seconds": float(np.median(times)),
                "skewness": float(skew(times, bias=False)),
                "total_seconds": float(times.sum()),
                "mean_epochs_trained": float(np.mean([len(r["epochs"]) for r in history])),
                "children_mean_seconds": float(np.mean([r["train_seconds"] for r in children])) if children else None,
                "children_started_from_parents": sum(r["init"] != "scratch" for r in history),
                "best_val_acc": summary.get("best_val_acc"),
            }
    print(f"GA on {args.kind} genomes, budget {args.budget}, early stopping on; seconds per evaluation:")
    print(f"{'rule':8} {'mean':>6} {'median':>7} {'skew':>6} {'total':>7} {'epochs':>7} {'reused':>7} {'best acc':>9}")
    for rule, r in rows.items():
        print(f"{rule:8} {r['mean_seconds']:6.1f} {r['median_seconds']:7.1f} {r['skewness']:6.2f} {r['total_seconds']:7.0f} "
              f"{r['mean_epochs_trained']:7.2f} {r['children_started_from_parents']:7d} {r['best_val_acc']:9.4f}")  # fmt: skip
    if args.out is not None:
        write_json(args.out, {"kind": args.kind, "budget": args.budget, "rules": rows})


if __name__ == "__main__":
    main()
