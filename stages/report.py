"""DVC stage `report`: the comparison over repeats (statistics, tables, plots) from the search and
champion results, as Markdown and one self-contained HTML page, logged to MLflow."""

import os
from pathlib import Path

from pipeline.study.cli import stage_main
from pipeline.study.report_stage import run_report_stage


@stage_main
def main(config):
    params = Path(os.environ.get("EVOHPO_PARAMS", "params.yaml"))
    run_report_stage(config, Path("results"), params, Path("data/prepared"))
    print("report written to results/report.md and results/report.html (logged to MLflow's report run)")


if __name__ == "__main__":
    main()
