"""``params.yaml``: its sections as typed, frozen models (``sections``) and the loader that
validates a whole file before any work (``loading``), naming the dotted key of every fault."""

from __future__ import annotations

from pipeline.config.loading import DATASET_IMAGE_SHAPES, gene_errors, load_config, parse_config
from pipeline.config.sections import (
    ArchitectureConfig,
    BudgetConfig,
    ChampionConfig,
    ChoiceGene,
    DataConfig,
    EarlyStoppingConfig,
    FidelityConfig,
    FloatGene,
    GAConfig,
    IntGene,
    ModelConfig,
    OperatorConfig,
    PhasesConfig,
    SpaceConfig,
    StudyConfig,
    TrainConfig,
)
from pipeline.errors import ConfigError

__all__ = [
    "ArchitectureConfig", "BudgetConfig", "ChampionConfig", "ChoiceGene", "ConfigError", "DATASET_IMAGE_SHAPES",
    "DataConfig", "EarlyStoppingConfig", "FidelityConfig", "FloatGene", "GAConfig", "IntGene", "ModelConfig", "OperatorConfig", "PhasesConfig", "SpaceConfig",
    "StudyConfig", "TrainConfig", "gene_errors", "load_config", "parse_config",
]  # fmt: skip
