"""Multi-fidelity over any evaluator: the rung schedule (``pipeline.search.fidelity``: successive
halving or ASHA) decides which candidate trains which rung; the wrapped evaluator (sequential, a
population, worker processes or Ray) trains each rung as a ``Proposal`` with a ``Resume``: to the
rung's epochs, on from the previous rung's saved training state, saving its own. Each rung resumes
bit-equal to one uninterrupted fit (``fit_genome``), wherever it trains.

Every rung a candidate reaches is kept under ``state_dir/<genome hash>/``: its record
(``rung-<k>.json``) and, while it may go on, its training state (``rung-<k>.ckpt``). A killed batch
resumes from them without training any finished rung again. The batch's records are yielded once
its last rung is done (a rung is ranked whole), each also kept as ``final.json`` until the runner
has committed it. The folder must be one every worker sees: this machine's, or a Ray cluster's
shared storage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from pipeline.evaluation import EvaluationRecord, Evaluator, Proposal, Resume, StartCallback, concurrency_of
from pipeline.jsonio import write_json
from pipeline.search.fidelity import AsynchronousHalving, RungJob, RungSchedule, successive_halving

if TYPE_CHECKING:
    from pipeline.config.sections import FidelityConfig

FINGERPRINT_FILE = "fingerprint"


@dataclasses.dataclass
class RungStats:
    """Where a search's worker time went under the rung schedule (for benchmarks): ``train_seconds``
    of the rungs trained here (fits only), ``wall_seconds`` of the batches, ``slots`` trained at once;
    idle worker seconds are ``slots * wall_seconds - train_seconds``."""

    slots: int = 1
    rungs_trained: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def idle_worker_seconds(self) -> float:
        return max(0.0, self.slots * self.wall_seconds - self.train_seconds)


class RungScheduledEvaluator:
    """Trains each batch rung by rung through ``inner``. ``fingerprint`` names what the kept rungs
    depend on (params, data, code): kept rungs of another fingerprint are deleted, never reused."""

    def __init__(self, inner: Evaluator, fidelity: FidelityConfig, state_dir: Path, fingerprint: str) -> None:
        schedule = RungSchedule.of(fidelity)
        if schedule is None:
            raise ValueError("RungScheduledEvaluator needs fidelity.rungs")
        self.inner = inner
        self.schedule = schedule
        self.state_dir = Path(state_dir)
        self.stats = RungStats(slots=concurrency_of(inner))
        self._stats_lock = threading.Lock()  # asynchronous rungs end in several threads
        marker = self.state_dir / FINGERPRINT_FILE
        if self.state_dir.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)

    @property
    def concurrency(self) -> int:
        return self.stats.slots

    def plan(self, proposal: Proposal) -> tuple[int, ...]:
        return self.schedule.plan(int(proposal.genome["epochs"]))

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        for position in range(len(proposals)):
            if on_start is not None:
                on_start(position)  # the whole batch trains together: every run is open until its rung is ranked
        kept = [self._kept_final(p) for p in proposals]
        pending = [i for i, record in enumerate(kept) if record is None]
        if pending:
            batch = [proposals[i] for i in pending]
            started = time.perf_counter()
            if self.schedule.asynchronous:
                records = self._asynchronous(batch)
            else:
                records = successive_halving([self.plan(p) for p in batch], self.schedule.eta,
                                             lambda jobs: self._train_rung(batch, jobs))  # fmt: skip
            self.stats.wall_seconds += time.perf_counter() - started
            for index, record in zip(pending, records):
                kept[index] = self._finish(proposals[index], record)
        for position, record in enumerate(kept):
            yield position, record
            self._forget(proposals[position])  # committed by the runner now: its rungs are not needed

    def close(self) -> None:
        self.inner.close()

    # -- the two schedules -------------------------------------------------------------------------------------------

    def _train_rung(self, batch: Sequence[Proposal], jobs: list[RungJob]) -> dict[int, EvaluationRecord]:
        """One rung of several candidates, all handed to the evaluator at once (a population groups
        them, workers and Ray share them out); rungs kept before a kill are not trained again."""
        records = {position: self._kept_rung(batch[position], rung) for position, rung, _ in jobs}
        todo = [job for job in jobs if records[job[0]] is None]
        requests = [self._request(batch[position], rung, epochs) for position, rung, epochs in todo]
        for index, record in self.inner.evaluate(requests):
            position, rung, _ = todo[index]
            records[position] = self._keep_rung(batch[position], rung, record)
        return records

    def _asynchronous(self, batch: Sequence[Proposal]) -> list[EvaluationRecord]:
        """ASHA: a free slot takes the scheduler's next job at once. With one slot it runs here, in
        order (reproducible); with more, each slot is a thread handing one request at a time to the
        evaluator (which trains it in a worker process or on a Ray node)."""
        schedule = AsynchronousHalving([self.plan(p) for p in batch], self.schedule.eta)
        if self.stats.slots == 1:
            while (job := schedule.next_job()) is not None:
                position, rung, _ = job
                schedule.report(position, rung, self._train_rung(batch, [job])[position])
            return schedule.records()
        running: dict[Future, RungJob] = {}
        with ThreadPoolExecutor(self.stats.slots, thread_name_prefix="rung") as slots:
            try:
                while True:
                    while len(running) < self.stats.slots and (job := schedule.next_job()) is not None:
                        running[slots.submit(self._train_rung, batch, [job])] = job
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        position, rung, _ = running.pop(future)
                        schedule.report(position, rung, future.result()[position])
            except BaseException:
                for future in running:
                    future.cancel()
                self.inner.close()  # no slot waits for the rest of its training
                raise
        return schedule.records()

    # -- one rung ----------------------------------------------------------------------------------------------------

    def _folder(self, proposal: Proposal) -> Path:
        return self.state_dir / proposal.genome_hash

    def _request(self, proposal: Proposal, rung: int, epochs: int) -> Proposal:
        folder = self._folder(proposal)
        resume = Resume(epochs=epochs, resume_from=folder / f"rung-{rung - 1}.ckpt" if rung > 0 else None,
                        save_to=folder / f"rung-{rung}.ckpt")  # fmt: skip
        return dataclasses.replace(proposal, resume=resume)

    def _kept_rung(self, proposal: Proposal, rung: int) -> EvaluationRecord | None:
        done = self._folder(proposal) / f"rung-{rung}.json"
        return EvaluationRecord.from_dict(json.loads(done.read_text())) if done.is_file() else None

    def _keep_rung(self, proposal: Proposal, rung: int, record: EvaluationRecord) -> EvaluationRecord:
        """The rung's record, with the training seconds of every rung so far; kept before the previous
        rung's state is dropped, so a kill between the two loses nothing."""
        folder = self._folder(proposal)
        with self._stats_lock:
            self.stats.rungs_trained += 1
            self.stats.train_seconds += record.train_seconds
        if rung > 0 and (previous := self._kept_rung(proposal, rung - 1)) is not None:
            record = dataclasses.replace(record, train_seconds=previous.train_seconds + record.train_seconds)
        record = dataclasses.replace(record, rung=rung)
        write_json(folder / f"rung-{rung}.json", record.to_dict())
        if rung > 0:
            (folder / f"rung-{rung - 1}.ckpt").unlink(missing_ok=True)  # the new state supersedes it
        return record

    # -- a candidate's end -------------------------------------------------------------------------------------------

    def _kept_final(self, proposal: Proposal) -> EvaluationRecord | None:
        final = self._folder(proposal) / "final.json"
        return EvaluationRecord.from_dict(json.loads(final.read_text())) if final.is_file() else None

    def _finish(self, proposal: Proposal, record: EvaluationRecord) -> EvaluationRecord:
        """Keep its final record; drop its training state. (Its weights, with ``ga.weights``, the
        evaluator kept as each rung ended: the last one kept is the rung it reached.)"""
        folder = self._folder(proposal)
        write_json(folder / "final.json", record.to_dict())
        for stale in folder.glob("rung-*.ckpt"):
            stale.unlink()
        return record

    def _forget(self, proposal: Proposal) -> None:
        shutil.rmtree(self._folder(proposal), ignore_errors=True)
