"""DVC stage `suite_sensitivity` of a benchmark study: the GA's settings one at a time on the
suite's tasks, over seeds of their own; the best of each makes the tuned GA (`ga_tuned`)."""

from pathlib import Path

from pipeline.benchmarks.config import load_suite
from pipeline.benchmarks.suite import run_suite_sensitivity
from pipeline.study.cli import stage_main


def sensitivity(config):
    if not config.suite.sensitivity.enabled:
        print("suite.sensitivity.enabled is false: nothing to tune")
        return
    chosen = run_suite_sensitivity(config, results_dir=Path("results"))["ga"]
    print(
        f"tuned GA: population {chosen['population_size']}, mutation {chosen['mutation']}, "
        f"selection {chosen['selection']}"
    )


if __name__ == "__main__":
    stage_main(sensitivity, loader=load_suite)()
