"""DVC stages `<method>_suite` of a benchmark study: one method (or the tuned GA, `ga_tuned`) over
every benchmark table and seed (`python ../../stages/suite_search.py ga`)."""

import sys
from pathlib import Path

from pipeline.benchmarks.config import load_suite
from pipeline.benchmarks.suite import run_suite_stage, suite_methods
from pipeline.study.cli import stage_main


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/suite_search.py <method>")
    method = sys.argv[1]

    def search(config):
        if method not in suite_methods(config):
            sys.exit(
                f"error: {method!r} is not a method of this suite; it runs {suite_methods(config)} "
                "(suite.methods, suite.sensitivity.enabled)"
            )
        run_suite_stage(method, config, results_dir=Path("results"))

    stage_main(search, loader=load_suite)()


if __name__ == "__main__":
    main()
