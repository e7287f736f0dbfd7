"""The multi-fidelity evaluator: successive halving over each batch (``pipeline.search.fidelity``),
each rung a fit resumed from the previous rung's saved training state.

Every rung a candidate reaches is kept under ``state_dir/<genome hash>/``: its record
(``rung-<k>.json``) and, while it may go on, its training state (``rung-<k>.ckpt``: weights,
optimiser, scheduler, epoch, random state). A killed batch resumes from them without training any
finished rung again. The batch's records are yielded once its last rung is done (successive halving
ranks whole rungs), each also kept as ``final.json`` until the runner has committed it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from pipeline.data import PreparedData
from pipeline.evaluation import EvaluationRecord, Proposal, StartCallback
from pipeline.jsonio import write_json
from pipeline.search.fidelity import rung_epochs, successive_halving
from pipeline.training.evaluator import Resume, SequentialEvaluator, TrainingContext, train_proposal
from pipeline.training.weights import WeightStore

if TYPE_CHECKING:
    from pipeline.config.sections import FidelityConfig

FINGERPRINT_FILE = "fingerprint"


class FidelityEvaluator(SequentialEvaluator):
    """Trains a batch by successive halving in this process. ``fingerprint`` names what the kept
    rungs depend on (params, data, code): kept rungs of another fingerprint are deleted, never reused."""

    def __init__(
        self,
        data: PreparedData,
        context: TrainingContext,
        fidelity: FidelityConfig,
        state_dir: Path,
        fingerprint: str,
        weight_store: WeightStore | None = None,
    ) -> None:
        if fidelity.rungs is None:
            raise ValueError("FidelityEvaluator needs fidelity.rungs")
        super().__init__(data, context, weight_store)
        self.fidelity = fidelity
        self.state_dir = Path(state_dir)
        marker = self.state_dir / FINGERPRINT_FILE
        if self.state_dir.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)

    def plan(self, proposal: Proposal) -> tuple[int, ...]:
        return rung_epochs(self.fidelity.rungs, int(proposal.genome["epochs"]))

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        for position in range(len(proposals)):
            if on_start is not None:
                on_start(position)  # the whole batch trains together: every run is open until its rung is ranked
        kept = [self._kept_final(p) for p in proposals]
        pending = [i for i, record in enumerate(kept) if record is None]
        if pending:
            plans = [self.plan(proposals[i]) for i in pending]

            def train_to(index: int, rung: int, epochs: int) -> EvaluationRecord:
                return self._train_to_rung(proposals[pending[index]], rung, plans[index])

            for index, record in zip(pending, successive_halving(plans, self.fidelity.eta, train_to)):
                kept[index] = self._finish(proposals[index], record)
        for position, record in enumerate(kept):
            yield position, record
            self._forget(proposals[position])  # committed by the runner now: its rungs are not needed

    # -- one rung ----------------------------------------------------------------------------------------------------

    def _folder(self, proposal: Proposal) -> Path:
        return self.state_dir / proposal.genome_hash

    def _train_to_rung(self, proposal: Proposal, rung: int, plan: tuple[int, ...]) -> EvaluationRecord:
        folder = self._folder(proposal)
        done = folder / f"rung-{rung}.json"
        if done.is_file():
            return EvaluationRecord.from_dict(json.loads(done.read_text()))  # trained before a kill
        previous = None
        if rung > 0:
            previous = EvaluationRecord.from_dict(json.loads((folder / f"rung-{rung - 1}.json").read_text()))
        resume = Resume(
            epochs=plan[rung],
            resume_from=folder / f"rung-{rung - 1}.ckpt" if rung > 0 else None,
            save_to=folder / f"rung-{rung}.ckpt",
        )  # fmt: skip
        record, _ = train_proposal(proposal, self.context, self.train_split, self.val_split,
                                   self.parent_states(proposal), resume)  # fmt: skip
        if previous is not None:  # the training seconds of every rung so far
            record = dataclasses.replace(record, train_seconds=previous.train_seconds + record.train_seconds)
        record = dataclasses.replace(record, rung=rung)
        write_json(done, record.to_dict())
        if rung > 0:
            (folder / f"rung-{rung - 1}.ckpt").unlink(missing_ok=True)  # the new state supersedes it
        return record

    # -- a candidate's end -------------------------------------------------------------------------------------------

    def _kept_final(self, proposal: Proposal) -> EvaluationRecord | None:
        final = self._folder(proposal) / "final.json"
        return EvaluationRecord.from_dict(json.loads(final.read_text())) if final.is_file() else None

    def _finish(self, proposal: Proposal, record: EvaluationRecord) -> EvaluationRecord:
        """Keep its trained weights (the weight rule's), then its final record; drop its training state."""
        folder = self._folder(proposal)
        state_file = folder / f"rung-{record.rung}.ckpt"
        if record.finished and self.context.weights != "none" and state_file.is_file():
            saved = torch.load(state_file, map_location="cpu", weights_only=True)["state_dict"]
            self.keep(record, {k.removeprefix("network."): v for k, v in saved.items() if k.startswith("network.")})
        write_json(folder / "final.json", record.to_dict())
        for stale in folder.glob("rung-*.ckpt"):
            stale.unlink()
        return record

    def _forget(self, proposal: Proposal) -> None:
        shutil.rmtree(self._folder(proposal), ignore_errors=True)
