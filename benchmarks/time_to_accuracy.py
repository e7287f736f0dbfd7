"""Time to accuracy: training seconds until a search's best-so-far validation accuracy first reaches
T, for the plain GA, the GA with multi-fidelity (successive halving), the GA with fidelity and
weight inheritance (also at population 9), random search, random search with fidelity, and
Population Based Training (8 members, 1-epoch intervals to 9 epochs); over several seeds.

The default study's data sizes and network (run `python stages/prepare.py` first: data/prepared),
its hyperparameter ranges with the epochs gene widened to 1-9 (fidelity pays where a full training
is several times the first rung), rungs at 1, 3 and 9 epochs, eta 3. T is the plain GA's median
final best at 16 evaluations. Every method has the same epoch budget (budget.epochs, default 80:
about the plain GA's 16 evaluations of 5 epochs on average); "final best at equal epochs" is the
best accuracy among the evaluations that finished within that many epochs.

Training seconds are summed per evaluation in commit order (with fidelity, an evaluation's seconds
are all its rungs'); the runner's wall clock is also recorded. No MLflow: the runner and evaluators
of the search stages, in this process, one training at a time.

    python benchmarks/time_to_accuracy.py --seeds 5 --out benchmarks/time_to_accuracy.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import cpu_name  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.data import PreparedData  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.search.registry import get_method  # noqa: E402
from pipeline.space import make_space  # noqa: E402
from pipeline.study.runner import SearchRunner  # noqa: E402
from pipeline.study.search_stage import epoch_cost  # noqa: E402
from pipeline.training.backends import make_evaluator  # noqa: E402
from pipeline.training.weights import WeightStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLAIN_EVALUATIONS = 16  # T is the plain GA's median final best at this many evaluations
FIDELITY = {"rungs": [1, 3, 9], "eta": 3, "ranking": "rung"}
# name -> (method, fidelity on, ga.weights, ga.population_size: None keeps the default study's)
VARIANTS = {
    "GA": ("ga", False, "none", None),
    "GA + fidelity": ("ga", True, "none", None),
    "GA + fidelity + inherit": ("ga", True, "inherit", None),
    "random": ("random", False, "none", None),
    "random + fidelity": ("random", True, "none", None),
    # eta^2 = 9 candidates: each generation one whole successive-halving bracket (9 -> 3 -> 1)
    "GA + fidelity, population 9": ("ga", True, "none", 9),
    "GA + fidelity + inherit, population 9": ("ga", True, "inherit", 9),
    # Population Based Training: 8 members x 9 epochs (the horizon) = 72 epochs, within the budget
    "PBT": ("pbt", False, "none", None),
}
PBT_SETTINGS = {"population_size": 8, "perturbation_interval": 1}
DEFAULT_VARIANTS = list(VARIANTS)[:5]


def variant_params(
    method: str, fidelity: bool, weights: str, population: int | None, seed: int, epochs_budget: int
) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = seed
    if population is not None:
        params["ga"]["population_size"] = population
    params["space"]["genes"]["epochs"] = {"type": "int", "low": 1, "high": 9}
    params["ga"]["weights"] = weights
    params["budget"] = {"evaluations": 200 if fidelity else PLAIN_EVALUATIONS, "epochs": epochs_budget}
    if method == "ga" and not fidelity:
        params["budget"]["epochs"] = None  # the reference: 16 evaluations, whatever their epochs
    params["fidelity"] = FIDELITY if fidelity else {"rungs": None}
    params["execution"] = {"evaluator": "sequential"}
    params["pbt"] = PBT_SETTINGS
    if method == "pbt":
        params["budget"] = {"evaluations": 200, "epochs": epochs_budget}
    params["study"] = {"repeats": 1, "seeds": None}
    return params


def run_variant(name: str, seed: int, epochs_budget: int, data: PreparedData, scratch: Path) -> dict:
    method, fidelity, weights, population = VARIANTS[name]
    config = parse_config(variant_params(method, fidelity, weights, population, seed, epochs_budget))
    space = make_space(config.space, data.image_shape)
    folder = scratch / f"{name}-{seed}".replace(" ", "")
    store = WeightStore(folder / "weights") if weights != "none" else None
    fidelity_state = (folder / "fidelity", "benchmark") if fidelity else None
    evaluator = make_evaluator(config, data, weights, store, fidelity_state)
    strategy = get_method(method).build(config, space)
    if hasattr(strategy, "state_dir"):  # PBT's members' training states between intervals
        strategy.state_dir = folder / "states"
    runner = SearchRunner(strategy, evaluator, config.budget.evaluations, epoch_budget=config.budget.epochs,
                          epoch_cost=epoch_cost(config, method))  # fmt: skip
    started = time.perf_counter()
    try:
        records = runner.run()
    finally:
        evaluator.close()
    return {
        "variant": name,
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
        "evaluations": [
            {
                "val_acc": r.val_score,
                "epochs": len(r.epochs),
                "train_seconds": r.train_seconds,
                "stopped_early": r.stopped_early,
                "genome_epochs": r.genome["epochs"],
            }
            for r in records
        ],  # fmt: skip
    }


def trajectory(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative training seconds, cumulative epochs and best-so-far accuracy after each evaluation."""
    evaluations = run["evaluations"]
    seconds = np.cumsum([e["train_seconds"] for e in evaluations])
    epochs = np.cumsum([e["epochs"] for e in evaluations])
    scores = [e["val_acc"] if e["val_acc"] is not None else -math.inf for e in evaluations]
    return seconds, epochs, np.maximum.accumulate(scores)


def seconds_to(run: dict, target: float) -> float:
    seconds, _, best = trajectory(run)
    reached = np.flatnonzero(best >= target)
    return float(seconds[reached[0]]) if reached.size else math.inf


def best_within(run: dict, epochs_budget: int) -> float:
    _, epochs, best = trajectory(run)
    inside = np.flatnonzero(epochs <= epochs_budget)
    return float(best[inside[-1]]) if inside.size else math.nan


def summarise(runs: list[dict], epochs_budget: int) -> tuple[float, dict[str, dict]]:
    plain_final = [trajectory(r)[2][-1] for r in runs if r["variant"] == "GA"]
    target = float(np.median(plain_final))
    table = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        to_target = np.array([seconds_to(r, target) for r in mine])
        final = np.array([best_within(r, epochs_budget) for r in mine])
        table[name] = {
            "seeds": len(mine),
            "reached_T": int(np.isfinite(to_target).sum()),
            "median_seconds_to_T": float(np.median(to_target)),
            "seconds_to_T": to_target.tolist(),
            "median_final_best": float(np.nanmedian(final)),
            "final_best_min": float(np.nanmin(final)),
            "final_best_max": float(np.nanmax(final)),
            "median_epochs_trained": float(np.median([trajectory(r)[1][-1] for r in mine])),
            "median_evaluations": float(np.median([len(r["evaluations"]) for r in mine])),
            "median_train_seconds": float(np.median([trajectory(r)[0][-1] for r in mine])),
        }
    return target, table


def plot(runs: list[dict], target: float, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name in dict.fromkeys(r["variant"] for r in runs):
        for k, run in enumerate(r for r in runs if r["variant"] == name):
            seconds, _, best = trajectory(run)
            ax.step(seconds, best, where="post", color=colours[name], alpha=0.7, label=name if k == 0 else None)
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"T = {target:.3f}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("best-so-far validation accuracy")
    ax.set_title("Time to accuracy (one line per seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs-budget", type=int, default=80)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    data = PreparedData.open(ROOT / "data" / "prepared")
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for name in args.variants:
                run = run_variant(name, seed, args.epochs_budget, data, Path(scratch))
                runs.append(run)
                _, epochs, best = trajectory(run)
                print(f"seed {seed} {name:28} {len(run['evaluations']):3d} evaluations {int(epochs[-1]):3d} epochs "
                      f"best {best[-1]:.4f} {run['wall_seconds']:6.1f} s", flush=True)  # fmt: skip
    target, table = summarise(runs, args.epochs_budget)
    print(f"\nT = {target:.4f} (the plain GA's median final best at {PLAIN_EVALUATIONS} evaluations); "
          f"{args.seeds} seeds; final best within {args.epochs_budget} epochs")  # fmt: skip
    print(f"{'variant':28} {'reached T':>9} {'median s to T':>13} {'vs GA':>6} {'final best (min-max)':>22} "
          f"{'epochs':>6} {'evals':>5}")  # fmt: skip
    plain = table["GA"]["median_seconds_to_T"] if "GA" in table else math.nan
    for name, row in table.items():
        ratio = row["median_seconds_to_T"] / plain if math.isfinite(plain) and plain > 0 else math.nan
        print(f"{name:28} {row['reached_T']:>4}/{row['seeds']:<4} {row['median_seconds_to_T']:13.1f} {ratio:6.2f} "
              f"{row['median_final_best']:.4f} ({row['final_best_min']:.3f}-{row['final_best_max']:.3f}) "
              f"{row['median_epochs_trained']:6.0f} {row['median_evaluations']:5.0f}")  # fmt: skip
    if args.out is not None:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
        write_json(args.out, {"machine": machine, "target": target, "epochs_budget": args.epochs_budget,
                              "table": table, "runs": runs})  # fmt: skip
    if args.plot is not None:
        plot(runs, target, args.plot)


if __name__ == "__main__":
    main()
