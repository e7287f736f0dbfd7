"""DVC stage `random_search`: the random search over `space`, `budget.evaluations` trainings."""

from pathlib import Path

from pipeline.cli import stage_main
from pipeline.search import run_search_stage


@stage_main
def main(config):
    run_search_stage("random", config, prepared_dir=Path("data/prepared"), results_dir=Path("results"))


if __name__ == "__main__":
    main()
