"""What a dataset asks of a network: classification (fitness: validation accuracy, higher is better)
or regression (fitness: validation mean absolute error, lower is better).

Every search method, the champion and the report speak one *fitness*, higher is better: a task's
metric turned around when lower is better. So a regression study runs the same code path as a
classification one; only the metric's name, its direction and the loss differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # the report and the config read tasks without loading the training stack
    import torch


# The benchmark tables' families (``<family>/<dataset>`` task names; pipeline/benchmarks/tables.py
# reads them): family -> (the package's class name, its main metric, higher is better?, regret scale).
# Here, not in the benchmarks package, so that a trained study's stages can name a table's task
# without loading the tables. Regret scale: HPOLib's losses span orders of magnitude (diverged
# networks reach 1e2 where the best is 1e-5), so their regret is normalised on log10 of the loss,
# where a step from 1e-4 to 1e-5 weighs as much as one from 1e-3 to 1e-4; accuracies on their own scale.
TABLE_FAMILIES: dict[str, tuple[str, str, bool, str]] = {
    "hpobench": ("HPOBench", "val_acc", True, "linear"),
    "hpolib": ("HPOLib", "val_loss", False, "log"),
    "nasbench201": ("NASBench201", "val_acc", True, "linear"),
}


def is_table_name(name: object) -> bool:
    """Whether ``name`` names a benchmark table (``family/dataset``), known or not."""
    return isinstance(name, str) and "/" in name and name.split("/", 1)[0] in TABLE_FAMILIES


@dataclass(frozen=True)
class Task:
    kind: str  # "classification" or "regression"
    metric: str  # short name: logged as val_<metric> and test_<metric>
    label: str  # in words, for reports: "accuracy", "MAE"
    maximize: bool
    target_scale: float = 1.0  # regression: targets are standardised; errors are reported in the data's units

    @property
    def val_key(self) -> str:
        return f"val_{self.metric}"

    @property
    def test_key(self) -> str:
        return f"test_{self.metric}"

    @property
    def direction(self) -> str:
        return "higher is better" if self.maximize else "lower is better"

    def fitness(self, score: float | None) -> float:
        """The score as a fitness (higher is better); ``-inf`` for a missing or non-finite score."""
        if score is None or not math.isfinite(score):
            return -math.inf
        return score if self.maximize else -score

    def best(self, scores: Iterable[float]) -> float:
        """The best of some scores in the task's direction."""
        return max(scores) if self.maximize else min(scores)

    def outputs(self, num_classes: int) -> int:
        """Units of the network's last layer."""
        return num_classes if self.kind == "classification" else 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.kind == "classification":
            return F.cross_entropy(outputs, targets)
        return F.mse_loss(outputs.squeeze(-1), targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The metric over a batch: accuracy, or absolute error in the targets' own units."""
        if self.kind == "classification":
            return (outputs.argmax(dim=1) == targets).float().mean()
        return (outputs.squeeze(-1) - targets).abs().mean() * self.target_scale


CLASSIFICATION = Task("classification", "acc", "accuracy", maximize=True)
# The datasets whose targets are numbers, not classes (scikit-learn's bundled diabetes data).
REGRESSION_DATASETS = ("diabetes",)
# Datasets whose examples are rows of features, not images (a CSV table, any task).
TABLE_DATASETS = ("diabetes", "csv")


def task_of(summary: dict) -> Task:
    """The task of a prepared dataset (its ``dataset.json``)."""
    if summary.get("task") == "regression":
        return Task("regression", "mae", "MAE", maximize=False, target_scale=float(summary["target_std"]))
    return CLASSIFICATION


def task_of_dataset(dataset: str, declared: str = "auto") -> Task:
    """The task a dataset name implies, before it is prepared (the scale is the data's own); a
    benchmark table's (``hpolib/...``) is its table metric in its direction. ``declared``: a CSV
    table's ``data.task`` (``auto`` is resolved by ``prepare``: see ``with_prepared_task``)."""
    if "/" in dataset:
        _, metric, maximize, _ = TABLE_FAMILIES[dataset.split("/", 1)[0]]
        return Task("table", metric.removeprefix("val_"), metric, maximize=maximize)
    if dataset in REGRESSION_DATASETS or declared == "regression":
        return Task("regression", "mae", "MAE", maximize=False)
    return CLASSIFICATION
