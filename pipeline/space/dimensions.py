"""The search-space vocabulary: typed dimensions, genomes over them, and their hashes.

A genome is a plain ``dict`` from gene name to value, in the space's order. Operators treat genomes
as immutable and return new dicts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # annotations only: the config validates through this package, not the reverse
    from pipeline.config.sections import SpaceConfig

Genome = dict[str, Any]


@dataclass(frozen=True)
class FloatDimension:
    name: str
    low: float
    high: float
    log: bool = False

    def sample(self, rng: np.random.Generator) -> float:
        return self.from_unit(rng.random())

    def to_unit(self, value: float) -> float:
        """Map a value to [0, 1] on the dimension's own (log or linear) scale."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, unit: float) -> float:
        unit = min(max(float(unit), 0.0), 1.0)
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        # Rounding can overshoot an end by an ulp; clamp so every value stays in the space.
        return float(min(max(value, self.low), self.high))

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.low <= value <= self.high

    def levels(self, count: int) -> list[float]:
        """The centres of ``count`` equal cells of the range (geometric when log).

        Cell centres, not end points: a 2-level learning-rate grid over [1e-4, 1] tries 1e-3 and
        1e-1 rather than the two extremes.
        """
        return [self.from_unit((i + 0.5) / count) for i in range(count)]

    @property
    def max_levels(self) -> float:
        return math.inf

    def distribution(self) -> Any:
        if self.log:
            return stats.loguniform(self.low, self.high)
        return stats.uniform(self.low, self.high - self.low)


@dataclass(frozen=True)
class IntDimension:
    name: str
    low: int
    high: int
    log: bool = False

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            return self.from_unit(rng.random())
        return int(rng.integers(self.low, self.high + 1))

    def to_unit(self, value: int) -> float:
        if self.high == self.low:
            return 0.5
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, unit: float) -> int:
        unit = min(max(float(unit), 0.0), 1.0)
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return int(min(max(round(value), self.low), self.high))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def levels(self, count: int) -> list[int]:
        """The values at the centres of ``count`` equal cells of the range; distinct while
        ``count <= max_levels``."""
        if self.log:
            # Nearest unused integer to each geometric cell centre: ``count`` distinct values.
            unused = list(range(self.low, self.high + 1))
            picked = []
            for i in range(count):
                target = (i + 0.5) / count
                nearest = min(unused, key=lambda v: abs(self.to_unit(v) - target))
                unused.remove(nearest)
                picked.append(nearest)
            return sorted(picked)
        return [self.low + int((i + 0.5) / count * self.max_levels) for i in range(count)]

    @property
    def max_levels(self) -> int:
        return self.high - self.low + 1

    def distribution(self) -> Any:
        if self.log:
            # A log-uniform integer: ParameterSampler accepts any object with .rvs().
            return _RoundedLogUniform(self)
        return stats.randint(self.low, self.high + 1)


@dataclass(frozen=True)
class ChoiceDimension:
    name: str
    values: tuple[Any, ...]
    # Listed in a meaningful order (a benchmark table's learning rates): a Gaussian step moves to a
    # neighbouring value instead of redrawing. Off for plain choices, whose order says nothing.
    ordered: bool = False

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def to_unit(self, value: Any) -> float:
        if len(self.values) == 1:
            return 0.5
        return self.values.index(value) / (len(self.values) - 1)

    def from_unit(self, unit: float) -> Any:
        index = round(min(max(float(unit), 0.0), 1.0) * (len(self.values) - 1))
        return self.values[index]

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def levels(self, count: int) -> list[Any]:
        """``count`` of the choices, spread evenly over the list."""
        if count >= len(self.values):
            return list(self.values)
        picks = np.linspace(0, len(self.values) - 1, count) if count > 1 else [len(self.values) // 2]
        return [self.values[int(round(i))] for i in picks]

    @property
    def max_levels(self) -> int:
        return len(self.values)

    def distribution(self) -> list[Any]:
        return list(self.values)


Dimension = Union[FloatDimension, IntDimension, ChoiceDimension]


@dataclass(frozen=True)
class _RoundedLogUniform:
    dimension: IntDimension

    def rvs(self, random_state: Any = None) -> int:
        unit = stats.uniform.rvs(random_state=random_state)
        return self.dimension.from_unit(unit)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of dimensions; genomes list their genes in this order."""

    kind: ClassVar[str] = "hyperparameters"

    dimensions: tuple[Dimension, ...]

    @classmethod
    def from_config(cls, config: SpaceConfig) -> SearchSpace:
        dims: list[Dimension] = []
        for name, gene in config.genes.items():
            if gene.type == "float":
                dims.append(FloatDimension(name, float(gene.low), float(gene.high), gene.log))
            elif gene.type == "int":
                dims.append(IntDimension(name, gene.low, gene.high, gene.log))
            elif gene.type == "choice":
                dims.append(ChoiceDimension(name, tuple(gene.values)))
        return cls(tuple(dims))

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def __getitem__(self, name: str) -> Dimension:
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    def sample(self, rng: np.random.Generator) -> Genome:
        """One genome drawn uniformly (log-uniformly on log dimensions)."""
        return {dim.name: dim.sample(rng) for dim in self.dimensions}

    def contains(self, genome: Genome) -> bool:
        return list(genome) == self.names and all(d.contains(genome[d.name]) for d in self.dimensions)

    def repair(self, genome: Genome) -> tuple[Genome, list[str]]:
        """Every genome of a hyperparameter space is trainable: nothing to repair."""
        return genome, []

    def diversity(self, genomes: list[Genome]) -> float:
        """Mean over genes of the standard deviation of the genes' unit-scale values, in [0, 0.5]
        (0 = clones)."""
        if len(genomes) < 2:
            return 0.0
        units = np.array([[dim.to_unit(g[dim.name]) for dim in self.dimensions] for g in genomes])
        return float(units.std(axis=0).mean())

    def canonical(self, genome: dict[str, Any]) -> Genome:
        """Reorder a genome to the space's order and turn numpy scalars into Python values."""
        return {dim.name: python_scalar(genome[dim.name], dim) for dim in self.dimensions}


def python_scalar(value: Any, dim: Dimension) -> Any:
    """``value`` as the Python type of ``dim``'s genes (float, int, or a choice's own value, not numpy's)."""
    if isinstance(dim, FloatDimension):
        return float(value)
    if isinstance(dim, IntDimension):
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def genome_hash(genome: Genome) -> str:
    """A short, stable id of a genome: equal genes, equal hash, whatever their key order."""
    text = json.dumps(genome, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def genome_seed(study_seed: int, genome: Genome, hash_: str | None = None) -> int:
    """The training seed of a genome: same study seed and genes, same initial weights and batches
    (``hash_``: the genome's hash, when the caller has it)."""
    digest = hashlib.sha256(f"{study_seed}:{hash_ or genome_hash(genome)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
