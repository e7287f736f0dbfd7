"""Each GA operator's effect, one change at a time from the defaults, on a synthetic fitness landscape.

Training is replaced by a cheap deterministic function of the genome (a noisy, multi-modal
landscape over the default search space with one known optimum), so every operator variant can be
run over many seeds in seconds. What it measures is the GA's search dynamics (how fast each variant
finds good genomes per evaluation), not accuracy on real data: the real study is `dvc repro`.

    python benchmarks/ga_operators.py --seeds 30 --budget 48 --out benchmarks/ga_operators.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import parse_config  # noqa: E402
from pipeline.evaluation import FunctionEvaluator  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.search.ga import GeneticSearch  # noqa: E402
from pipeline.space import SearchSpace  # noqa: E402
from pipeline.study.runner import run_strategy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# One change at a time from params.yaml's `ga` section.
VARIANTS: dict[str, dict] = {
    "defaults (truncation, uniform, resample 0.2)": {},
    "selection: tournament size 3": {"selection": {"name": "tournament", "size": 3}},
    "selection: roulette": {"selection": {"name": "roulette"}},
    "selection: rank": {"selection": {"name": "rank"}},
    "crossover: one_point": {"crossover": {"name": "one_point"}},
    "crossover: two_point": {"crossover": {"name": "two_point"}},
    "crossover: blend alpha 0.5": {"crossover": {"name": "blend", "alpha": 0.5}},
    "crossover probability 0.5": {"crossover": {"name": "uniform", "swap_prob": 0.5, "probability": 0.5}},
    "mutation: gaussian sigma 0.1": {"mutation": {"name": "gaussian", "rate": 0.2, "sigma": 0.1}},
    "mutation: adaptive 0.1-0.6": {"mutation": {"name": "adaptive", "rate": 0.1, "max_rate": 0.6}},
    "mutation rate 0.05": {"mutation": {"name": "resample", "rate": 0.05}},
    "mutation rate 0.5": {"mutation": {"name": "resample", "rate": 0.5}},
    "elites 0": {"elites": 0},
    "random survival 0.4": {"survival": {"fraction": 0.4, "immigrants": 0}},
    "1 immigrant per generation": {"survival": {"fraction": 0.0, "immigrants": 1}},
}


def landscape(genome: dict, space: SearchSpace) -> float:
    """In [0, 1]: a smooth peak (learning rate 0.03, momentum 0.9, little weight decay, batch 64,
    3 epochs) with ripples, so selection pressure and exploration both matter."""
    unit = np.array([dim.to_unit(genome[dim.name]) for dim in space.dimensions])
    optimum = np.array([space[n].to_unit(v) for n, v in
                        (("learning_rate", 0.03), ("momentum", 0.9), ("weight_decay", 0.0),
                         ("batch_size", 64), ("epochs", 3))])  # fmt: skip
    distance = float(np.sqrt(((unit - optimum) ** 2).mean()))
    ripples = 0.05 * math.cos(12 * math.pi * float(unit.sum()))
    return max(0.0, 1.0 - distance + ripples - 0.05)


def run_variant(changes: dict, seeds: int, budget: int) -> dict[str, float]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ga"] = {**params["ga"], **changes}
    params["budget"]["evaluations"] = budget
    config = parse_config(params)
    space = SearchSpace.from_config(config.space)
    finals, at_half = [], []
    for seed in range(seeds):
        evaluator = FunctionEvaluator(lambda genome: landscape(genome, space))
        records = run_strategy(GeneticSearch(space, config.ga, budget=budget, seed=seed), evaluator, budget)
        best = np.maximum.accumulate([r.fitness for r in records])
        finals.append(best[-1])
        at_half.append(best[len(best) // 2 - 1])
    return {
        "best_mean": float(np.mean(finals)),
        "best_sd": float(np.std(finals, ddof=1)),
        "best_at_half_budget_mean": float(np.mean(at_half)),
        "seeds": seeds,
        "budget": budget,
    }


def random_search_baseline(seeds: int, budget: int) -> dict[str, float]:
    space = SearchSpace.from_config(parse_config(yaml.safe_load((ROOT / "params.yaml").read_text())).space)
    finals = []
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        finals.append(max(landscape(space.sample(rng), space) for _ in range(budget)))
    return {"best_mean": float(np.mean(finals)), "best_sd": float(np.std(finals, ddof=1)), "seeds": seeds,
            "budget": budget, "best_at_half_budget_mean": float("nan")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ga_operators.json")
    args = parser.parse_args()
    rows = {"random search (reference)": random_search_baseline(args.seeds, args.budget)}
    rows |= {name: run_variant(changes, args.seeds, args.budget) for name, changes in VARIANTS.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["sem"] = table["best_sd"] / np.sqrt(table["seeds"])
    print(table[["best_mean", "sem", "best_at_half_budget_mean"]].round(4).to_markdown())
    write_json(args.out, {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                          for name, row in rows.items()})  # fmt: skip


if __name__ == "__main__":
    main()
