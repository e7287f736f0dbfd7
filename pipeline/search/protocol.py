"""The ask/tell protocol every search method speaks (as evosax, Optuna and pymoo do).

A strategy proposes a batch of genomes (``ask``), is told what each scored (``tell``), and says
why it stopped (``stop_reason``). It never trains, logs or saves: the runner
(``pipeline.study.runner``) owns the duplicate-genome cache, the budget, the checkpoint, tracking
and progress, so one loop drives every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from pipeline.evaluation import Proposal, Scored
from pipeline.space.dimensions import Genome

if TYPE_CHECKING:
    from pipeline.config.sections import StudyConfig
    from pipeline.space import Space


@dataclass(frozen=True)
class Group:
    """Proposals tracked together under one MLflow run of their own: the GA's generation."""

    number: int
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """What one ``ask`` returns. The runner trains each proposal whose genome it has not evaluated
    yet, while the budget lasts and at most ``max_trainings`` of them (a strategy's own cap, such as
    a phase's share of the budget); the rest are told from the cache, or ``None`` when past the budget."""

    proposals: tuple[Proposal, ...]
    group: Group | None = None
    max_trainings: int | None = None


@dataclass(frozen=True)
class GroupReport:
    """What a strategy reports of a finished group: logged on the group's run, and at
    ``step = group number`` on the stage's run."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    stage_metrics: Mapping[str, float] = field(default_factory=dict)


class Strategy(Protocol):
    """A search method. Deterministic given its seed and what it is told: a resumed search replays
    the checkpointed results through it and reaches the same state."""

    stop_reason: str

    def ask(self) -> Batch | None:
        """The next batch to evaluate; ``None`` once the search is over (``stop_reason`` says why).
        Asking again before ``tell`` returns the same batch."""

    def tell(self, scored: Sequence[Scored | None]) -> GroupReport | None:
        """One entry per proposal of the last batch, in order: its score, or ``None`` when the
        budget ran out before it could be trained."""

    def stage_params(self) -> dict[str, Any]:
        """Params of the stage's MLflow run that only the strategy knows (e.g. the grid's size)."""

    def summary(self) -> dict[str, Any]:
        """Fields the stage's results JSON adds to the runner's (the GA: generations, stop reason)."""

    def history(self) -> list[dict[str, Any]]:
        """Per-group history for the history file (the GA's generations); empty for others."""


class FixedBatch:
    """A strategy that proposes a fixed list of genomes in one batch, then stops (grid and random
    search). Subclasses name their ``method``: the runs' names and ``method`` tag."""

    method = ""

    def __init__(self, genomes: Sequence[Genome], stop_reason: str) -> None:
        self.genomes = list(genomes)
        self._told = False
        self._reason = stop_reason
        self.stop_reason = ""

    def ask(self) -> Batch | None:
        if self._told:
            return None
        proposals = tuple(
            Proposal(g, f"{self.method}-{i:03d}", {"method": self.method, "index": i})
            for i, g in enumerate(self.genomes)
        )
        return Batch(proposals)

    def tell(self, scored: Sequence[Scored | None]) -> GroupReport | None:
        self._told = True
        self.stop_reason = self._reason
        return None

    def stage_params(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def history(self) -> list[dict[str, Any]]:
        return []


@dataclass(frozen=True)
class Method:
    """A search method, declared in its strategy's module as ``METHOD`` and registered by name
    (``pipeline.search.registry``): its name (``<name>_search`` stage and results files), the label
    the report shows, how to build its strategy for a study, and the ``params.yaml`` sections of its
    own settings (besides the shared ``seed``, ``model``, ``space``, ``budget`` and ``train``), which
    its results depend on."""

    name: str
    label: str
    build: Callable[[StudyConfig, Space], Strategy]
    settings_sections: tuple[str, ...] = ()
    # The rule by which its proposals start from their parents' trained weights (``ga.weights``).
    weight_rule: Callable[[StudyConfig], str] = lambda config: "none"
    # Its proposals are intervals of longer trainings that carry their own ``Resume`` (PBT): no rungs
    # are scheduled over them (``fidelity`` is not its), and it cannot search a benchmark table.
    trains_in_intervals: bool = False
