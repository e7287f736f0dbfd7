"""DVC stages `<method>_search`: one registered search method (`python stages/search.py ga`) over
`space`, `budget.evaluations` trainings, on the shared evaluator."""

import sys
from pathlib import Path

from pipeline.search.registry import method_names
from pipeline.study.cli import stage_main
from pipeline.study.search_stage import run_search_stage


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in method_names():
        sys.exit(f"usage: python stages/search.py <method>, one of {method_names()} (pipeline.search.registry)")
    method = sys.argv[1]

    @stage_main
    def search(config):
        run_search_stage(method, config, prepared_dir=Path("data/prepared"), results_dir=Path("results"))

    search()


if __name__ == "__main__":
    main()
