"""DVC stage `prepare`: find the dataset, split it (seeded, stratified) and store the tensors."""

from pathlib import Path

from pipeline.study.cli import stage_main
from pipeline.data import prepare_dataset


@stage_main
def main(config):
    summary = prepare_dataset(config.data, config.seed, out_dir=Path("data/prepared"), download_dir=Path("data/raw"))
    print(f"prepared {summary['dataset']}: {summary['sizes']}")


if __name__ == "__main__":
    main()
