"""``python -m pipeline.study.dataset_check``: make sure the study's dataset can be found before ``dvc repro``.

For FashionMNIST without ``data.root``, installs Debian's ``dataset-fashion-mnist`` when running as
root on Debian/Ubuntu, or prints the command to run; torchvision's download stays the fallback.
"""

from __future__ import annotations

import sys

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.data import ensure_debian_dataset


def main() -> None:
    try:
        config = load_config("params.yaml")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if config.data.dataset == "fashion_mnist" and config.data.root is None:
        print(ensure_debian_dataset())


if __name__ == "__main__":
    main()
