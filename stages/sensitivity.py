"""DVC stage `ga_sensitivity`: the GA's own settings (population size, generations, mutation rate,
input noise) varied one at a time, each searched over repeats; off unless `sensitivity.enabled`."""

from pathlib import Path

from pipeline.study.cli import stage_main
from pipeline.study.sensitivity import run_sensitivity_stage


@stage_main
def main(config):
    summary = run_sensitivity_stage(config, Path("data/prepared"), Path("results/sensitivity"),
                                    Path("checkpoints/sensitivity"))  # fmt: skip
    if summary["enabled"]:
        print(f"sensitivity: {len(summary['rows'])} value(s) searched; results/sensitivity/sensitivity.md")
    else:
        print("sensitivity: off (sensitivity.enabled: false in params.yaml)")


if __name__ == "__main__":
    main()
