"""Search spaces: typed dimensions, genomes over them and their hashes (``dimensions``), and the
variable-length architecture genomes (``architecture``). numpy and scipy only: no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pipeline.space.architecture import ArchitectureSpace, InfeasibleGenome
from pipeline.space.dimensions import (
    ChoiceDimension,
    Dimension,
    FloatDimension,
    Genome,
    IntDimension,
    SearchSpace,
    genome_hash,
    genome_seed,
)

if TYPE_CHECKING:  # annotations only: the config validates through this package, not the reverse
    from pipeline.config.sections import SpaceConfig

Space = SearchSpace | ArchitectureSpace

__all__ = [
    "ArchitectureSpace", "ChoiceDimension", "Dimension", "FloatDimension", "Genome", "InfeasibleGenome",
    "IntDimension", "SearchSpace", "Space", "genome_hash", "genome_seed", "make_space",
]  # fmt: skip


def make_space(config: SpaceConfig, image_shape: Sequence[int]) -> Space:
    """The search space of ``space.kind``: hyperparameters, or whole architectures for these images."""
    if config.kind == "architecture":
        return ArchitectureSpace.from_config(config, image_shape)
    return SearchSpace.from_config(config)
