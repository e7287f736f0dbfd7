"""DVC stage `report`: comparison tables and plots from the search and champion results."""

from pathlib import Path

from pipeline.study.cli import stage_main
from pipeline.study.report import build_report


@stage_main
def main(config):
    build_report(Path("results"), study_name=config.mlflow.experiment)
    print("report written to results/report.md and results/report.html")


if __name__ == "__main__":
    main()
