"""DVC stage `suite_report` of a benchmark study: ranks, Friedman and critical differences,
Bayesian verdicts and regret curves across the tasks (results/suite_report.md and .html)."""

import os
from pathlib import Path

from pipeline.benchmarks.config import load_suite
from pipeline.benchmarks.report import build_suite_report
from pipeline.study.cli import stage_main


def report(config):
    params = Path(os.environ.get("EVOHPO_PARAMS", "params.yaml"))
    summary = build_suite_report(config, Path("results"), params.read_text())
    print(summary["headline"].replace("**", ""))
    print("report written to results/suite_report.md and results/suite_report.html")


if __name__ == "__main__":
    stage_main(report, loader=load_suite)()
