"""DVC stage `champion`: retrain each method's best at full fidelity, test it, register the best."""

from pathlib import Path

from pipeline.study.champion import run_champion_stage
from pipeline.study.cli import stage_main


@stage_main
def main(config):
    result = run_champion_stage(
        config, prepared_dir=Path("data/prepared"), results_dir=Path("results"), model_path=Path("models/champion.pt")
    )
    best = result["champion"]
    print(f"champion: {best['method']}'s best of seed {best['seed']} (chosen by validation accuracy), "
          f"test accuracy {best['test_acc']:.4f} ({best['model_uri']})")


if __name__ == "__main__":
    main()
