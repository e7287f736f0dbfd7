"""Where our evaluator's time goes, against the best bare PyTorch loop of the same work.

In one run, on the same genomes (the default space, 1 epoch on ``--train-size`` FashionMNIST
images, validation on ``--val-size``): ours (``fit_genome``, the Lightning evaluator) with the
network in the default memory layout and in ``channels_last``, and the bare loop of
``throughput.py`` in both layouts. Then ours (``channels_last``) is run under ``cProfile`` and its time split into
the network's forward and backward passes, the optimiser step, validation, the Trainer's start
and Lightning's own loop (the rest of ``Trainer.fit``).

    python benchmarks/profile_evaluator.py --out benchmarks/profile_evaluator.json
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput  # noqa: E402

from pipeline.config import TrainConfig, load_config  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.space import genome_seed  # noqa: E402
from pipeline.training.fit import fit_genome  # noqa: E402
from pipeline.training.models import network_builder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Cumulative times of these functions ("file:function" endings). Lightning runs the training step
# and the backward pass inside the optimiser's step (its closure), so the update alone is the step
# less those two.
NEEDLES = {
    "trainer_init": ("trainer.py:__init__",),
    "fit": ("trainer.py:fit",),
    "optimiser_step": ("sgd.py:step",),
    "backward": ("autograd/__init__.py:backward",),
    "training_step": ("lit_module.py:training_step",),
    "validation_step": ("lit_module.py:validation_step",),
}


def fit_all(genomes: list[dict], splits: dict, channels_last: bool) -> None:
    build = network_builder("hyperparameters", load_config(ROOT / "params.yaml").model, (1, 28, 28), 10)
    for genome in genomes:
        fit_genome(
            genome, seed=genome_seed(0, genome), build_network=build, train_split=splits["train"],
            val_split=splits["val"], train_config=TrainConfig(channels_last=channels_last),
        )  # fmt: skip


def timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def cumulative(stats: pstats.Stats, needles: tuple[str, ...]) -> float:
    """Seconds spent in (and under) the functions whose ``file:function`` ends with a needle,
    counting only their outermost calls (recursion or nesting is not counted twice)."""
    total = 0.0
    for (filename, _, function), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{filename}:{function}"
        if any(key.endswith(needle) for needle in needles):
            total += cumtime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--individuals", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    genomes = [{**g, "epochs": 1} for g in throughput.benchmark_genomes(args.individuals, 1, 0)]
    splits = throughput.tensor_splits(args.train_size, args.val_size)
    model = load_config(ROOT / "params.yaml").model
    fit_all(genomes[:1], splits, False)  # warm-up: imports, first-call allocations
    ways = {
        "ours, contiguous": lambda: fit_all(genomes, splits, False),
        "ours, channels_last": lambda: fit_all(genomes, splits, True),
        "bare, contiguous": lambda: throughput.run_bare(genomes, splits, "cpu", False, model),
        "bare, channels_last": lambda: throughput.run_bare(genomes, splits, "cpu", True, model),
    }
    # Interleaved rounds, the best of each way: a shared machine's noise only ever adds time.
    rounds = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way, work in ways.items():
            rounds[way].append(timed(work))
    seconds = {way: min(times) for way, times in rounds.items()}
    best_bare = min(seconds["bare, contiguous"], seconds["bare, channels_last"])
    print(f"{len(genomes)} genomes, 1 epoch on {args.train_size} images, validation on {args.val_size}; "
          f"{throughput.cpu_name()} , {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'way':22} {'seconds (best of ' + str(args.rounds) + ')':>18} {'vs best bare':>12}")
    for way, s in seconds.items():
        print(f"{way:22} {s:18.2f} {best_bare / s:11.2f}x")
    profiler = cProfile.Profile()
    profiler.enable()
    fit_all(genomes, splits, True)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = cumulative(stats, ("profile_evaluator.py:fit_all",))
    t = {name: cumulative(stats, needles) for name, needles in NEEDLES.items()}
    split = {
        "training forward and loss (training_step)": t["training_step"],
        "backward pass": t["backward"],
        "SGD update": t["optimiser_step"] - t["training_step"] - t["backward"],
        "validation (forward, loss, metric, self.log)": t["validation_step"],
        "Lightning's loop, hooks and logging (rest of Trainer.fit)": t["fit"]
        - t["optimiser_step"]
        - t["validation_step"],
        "Trainer start (Trainer.__init__)": t["trainer_init"],
        "network build, seeding, batches outside fit": total - t["fit"] - t["trainer_init"],
    }
    print(f"\nours (channels_last) under cProfile: {total:.1f} s")
    for label, s in split.items():
        print(f"  {label:58} {s:6.2f} s {100 * s / total:5.1f}%")
    if args.out is not None:
        write_json(args.out, {"cpu": throughput.cpu_name(), "threads": torch.get_num_threads(), "seconds": seconds, "rounds": rounds,
                              "profile_seconds": total, "profile_split": split})  # fmt: skip


if __name__ == "__main__":
    main()
