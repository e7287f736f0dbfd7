"""Where evaluations run, measured on the same work in one run: one process (2 threads), two local
worker processes (1 thread each), and Ray tasks on a local cluster of the same 2 CPUs (1 CPU each).

Work: ``--evaluations`` genomes drawn from the default search space with epochs fixed to 1, trained
on the repository's prepared data (run ``dvc repro prepare`` first) through the search stage's
runner with a scratch MLflow store, as a random search. Prints a table and writes JSON.

Then multi-fidelity (``--fidelity-evaluations``, 0 to skip): genomes of 3 epochs, rungs [1, 2],
eta 3, scheduled over each backend (synchronous halving in one process, on 2 workers, on Ray and on
the population evaluator; asynchronous halving, ASHA, on 2 workers), with each way's idle worker
seconds (slots x wall seconds - seconds inside fits) and, in one process, the share of its time
spent saving and loading rung states.

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
from pipeline.training import backends  # noqa: E402
from pipeline.training.fidelity import RungScheduledEvaluator  # noqa: E402
from pipeline.training import fit, population  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.strategies import Strategy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ONE_PROCESS = {"backend": "local", "workers": 1, "threads_per_evaluation": 2}
TWO_WORKERS = {"backend": "local", "workers": 2, "threads_per_evaluation": 1}
RAY = {"backend": "ray", "ray": {"address": None, "num_cpus": 1}}
WAYS = {
    "one process, 2 threads": ONE_PROCESS,
    "2 local workers, 1 thread each": TWO_WORKERS,
    "Ray, local 2-CPU cluster, 1 CPU each": RAY,
}
# Multi-fidelity: (execution, fidelity.mode) per way.
FIDELITY_WAYS = {
    "synchronous halving, one process": (ONE_PROCESS, "synchronous"),
    "synchronous halving, 2 workers": (TWO_WORKERS, "synchronous"),
    "synchronous halving, Ray (2 CPUs)": (RAY, "synchronous"),
    "synchronous halving, population evaluator": ({**ONE_PROCESS, "evaluator": "population"}, "synchronous"),
    "asynchronous halving (ASHA), 2 workers": (TWO_WORKERS, "asynchronous"),
}


def params(evaluations: int, execution: dict, address: str | None, epochs: int = 1) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["budget"]["evaluations"] = evaluations
    raw["space"]["genes"]["epochs"] = {"type": "int", "low": epochs, "high": epochs}
    if execution["backend"] == "ray":
        execution = {**execution, "ray": {**execution["ray"], "address": address}}
    raw["execution"] = execution
    raw["mlflow"]["experiment"] = "execution-backends"
    raw["study"] = {"repeats": 1, "seeds": None}  # one search per way
    return raw


def search(raw: dict) -> tuple[dict, float]:
    """One random search on the prepared data in a scratch store: its summary and seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["DVC_ROOT"] = scratch
        config = parse_config(raw)
        started = time.perf_counter()
        (summary,) = run_search_stage("random", config, ROOT / "data" / "prepared", Path(scratch) / "r",
                                      Path(scratch) / "c")  # fmt: skip
        return summary, time.perf_counter() - started


class StateIO:
    """Seconds spent saving training states (``Trainer.save_checkpoint``, or a population's
    ``write_training_state``) and loading them (a resumed fit's checkpoint read, a population's
    ``read_training_state``, and the epoch count a fit alone reads first), in this process (a fused rung's
    one-batch template fit saves through ``Trainer.save_checkpoint``: counted too)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.patches = [(Trainer, "save_checkpoint"), (Strategy, "load_checkpoint"), (fit, "saved_epochs"),
                        # a population's fused rungs read and write the same states by hand
                        (population, "read_training_state"), (population, "write_training_state")]  # fmt: skip

    def __enter__(self) -> StateIO:
        self.originals = [getattr(owner, name) for owner, name in self.patches]
        for (owner, name), original in zip(self.patches, self.originals):
            setattr(owner, name, self._timed(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for (owner, name), original in zip(self.patches, self.originals):
            setattr(owner, name, original)

    def _timed(self, original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def fidelity_rows(evaluations: int, address: str) -> list[dict]:
    """Each multi-fidelity way on the same genomes; the rung evaluator's own counts (``RungStats``)."""
    evaluators: list[RungScheduledEvaluator] = []

    class Counted(RungScheduledEvaluator):  # the search stage builds it: keep a hand on its counts
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            evaluators.append(self)

    backends.RungScheduledEvaluator = Counted
    rows = []
    try:
        for way, (execution, mode) in FIDELITY_WAYS.items():
            raw = params(evaluations, execution, address, epochs=3)
            raw["fidelity"] = {"rungs": [1, 2], "eta": 3, "ranking": "rung", "mode": mode}
            with StateIO() as state_io:
                summary, seconds = search(raw)
            stats = evaluators[-1].stats
            rows.append({
                "way": way, "evaluations": summary["evaluations"], "rungs trained": stats.rungs_trained,
                "epochs trained": summary["epochs_trained"], "seconds": round(seconds, 1),
                "evaluations/hour": round(summary["evaluations"] * 3600 / seconds), "slots": stats.slots,
                "idle worker seconds": round(stats.idle_worker_seconds, 1),
                "idle share": round(stats.idle_worker_seconds / (stats.slots * stats.wall_seconds), 3),
                # Only measurable in this process: worker processes and Ray tasks save and load there.
                "state save+load share": round(state_io.seconds / seconds, 3) if execution is not TWO_WORKERS
                and execution is not RAY else None,
                "best val acc": summary["best_val_acc"],
            })  # fmt: skip
    finally:
        backends.RungScheduledEvaluator = RungScheduledEvaluator
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=8)
    parser.add_argument("--fidelity-evaluations", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_cli, "start", "--head", "--port", "6399", "--num-cpus", "2", "--disable-usage-stats",
                    "--include-dashboard=false"], check=True, capture_output=True)  # fmt: skip
    rows, fidelity = [], []
    try:
        for way, execution in WAYS.items():
            summary, seconds = search(params(args.evaluations, execution, "127.0.0.1:6399"))
            rows.append({
                "way": way, "evaluations": summary["evaluations"], "seconds": round(seconds, 1),
                "evaluations/hour": round(summary["evaluations"] * 3600 / seconds), "best val acc": summary["best_val_acc"],
            })  # fmt: skip
        if args.fidelity_evaluations:
            fidelity = fidelity_rows(args.fidelity_evaluations, "127.0.0.1:6399")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True)
    table = pd.DataFrame(rows)
    base = table.loc[0, "evaluations/hour"]
    table["ratio to one process"] = (table["evaluations/hour"] / base).round(2)
    machine = f"{os.cpu_count()}-core {cpu_name()}, torch {torch.__version__}"
    print(f"{machine}; {args.evaluations} evaluations of 1 epoch each, as a random search")
    print(table.to_markdown(index=False))
    payload = {"machine": machine, "evaluations": args.evaluations, "rows": table.to_dict("records")}
    if fidelity:
        print(f"\nMulti-fidelity: {args.fidelity_evaluations} evaluations of 3 epochs, rungs [1, 2], eta 3, as a "
              "random search (one batch)")  # fmt: skip
        print(pd.DataFrame(fidelity).to_markdown(index=False))
        payload |= {"fidelity_evaluations": args.fidelity_evaluations, "fidelity_rows": fidelity}
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
