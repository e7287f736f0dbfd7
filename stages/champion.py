"""DVC stage `champion`: retrain each method's best at full fidelity, test it, register the best."""

from pathlib import Path

from pipeline.study.champion import run_champion_stage
from pipeline.study.cli import stage_main


@stage_main
def main(config):
    result = run_champion_stage(
        config, prepared_dir=Path("data/prepared"), results_dir=Path("results"), model_path=Path("models/champion.pt")
    )
    best, metric = result["champion"], result["metric"]
    print(
        f"champion: {best['method']}'s best of seed {best['seed']} (chosen by {result['chosen_by']}), "
        f"test {metric['label']} {best[metric['test']]:.4f} ({best['model_uri']})"
    )


if __name__ == "__main__":
    main()
