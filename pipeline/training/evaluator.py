"""Evaluators: proposals in, ``EvaluationRecord``s out (``pipeline.evaluation.Evaluator``).

They only train: no MLflow, no checkpoint (the runner does both). Every backend trains a proposal
with ``train_proposal`` and the same ``TrainingContext``, so a genome scores the same in this
process, in a worker process or on a Ray node, as long as it gets as many threads. With
``ga.weights`` the driver keeps trained weights in a ``WeightStore`` and hands each child its
parents' weights; workers never need the store.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from pipeline.data import PreparedData, TensorBatches, TensorSplit
from pipeline.evaluation import EvaluationRecord, Proposal, Resume, StartCallback, evaluate_in_order
from pipeline.space import genome_hash, genome_seed
from pipeline.task import CLASSIFICATION, Task, task_of
from pipeline.training.device import training_device
from pipeline.training.models import BuilderSource, NetworkBuilder, freeze_conv_layers, network_builder
from pipeline.training.schedule import replay_schedule
from pipeline.training.weights import WeightStore, inherit_weights, merge_weights, transferable_fraction

if TYPE_CHECKING:
    from pipeline.config.sections import ModelConfig, StudyConfig, TrainConfig

StateDict = Mapping[str, torch.Tensor]


def fit_genome(*args: Any, **kwargs: Any) -> Any:
    """``pipeline.training.fit.fit_genome``, with Lightning imported at the first training: a stage
    that reuses every finished repeat never pays for that import (3 of its 7.6 s of start-up on
    2 CPU cores: ``benchmarks/stage_startup.py``)."""
    from pipeline.training.fit import fit_genome as fit_with_lightning

    return fit_with_lightning(*args, **kwargs)


@dataclass(frozen=True)
class TrainingContext:
    """What training any proposal needs besides the data: sent once to each worker."""

    space_kind: str
    model_config: ModelConfig
    train_config: TrainConfig
    study_seed: int
    image_shape: tuple[int, int, int]
    num_classes: int
    weights: str = "none"  # the rule children start from their parents' weights by
    threads: int | None = None  # torch threads of one fit; None: leave the process's setting
    task: Task = CLASSIFICATION  # the loss, and the validation metric that is the fitness
    builder: BuilderSource | None = None  # who builds the networks; None: the built-in of space_kind

    @classmethod
    def for_study(cls, config: StudyConfig, data: PreparedData, weights: str = "none") -> TrainingContext:
        """The context of a study's searches: its space, network, training settings and threads."""
        return cls(
            config.space.kind, config.model, config.train, config.seed, data.image_shape, data.num_classes, weights,
            config.execution.threads_per_evaluation, task_of(data.summary), BuilderSource.for_study(config),
        )  # fmt: skip

    def network_builder(self) -> NetworkBuilder:
        """genome -> its freshly initialised network."""
        return network_builder(
            self.builder or self.space_kind, self.model_config, self.image_shape, self.task.outputs(self.num_classes)
        )


def train_proposal(
    proposal: Proposal,
    context: TrainingContext,
    train: TensorSplit,
    val: TensorSplit,
    parents: Sequence[StateDict],
    resume: Resume | None = None,
) -> tuple[EvaluationRecord, dict[str, torch.Tensor] | None]:
    """One individual: its record (failed for any exception inside its training: divergence, out of
    memory, a network its genome cannot build), and its trained weights on the CPU when the weight
    rule keeps them. ``resume`` (default: the proposal's own): how far to train, from which saved
    state. A kill (``KeyboardInterrupt``, ``SystemExit``) propagates. The process's torch thread
    count is as it was afterwards: a later fit in this process must not depend on this one."""
    previous = torch.get_num_threads()
    if context.threads is not None and previous != context.threads:
        torch.set_num_threads(context.threads)
    try:
        return _train(proposal, context, train, val, parents, resume or proposal.resume or Resume())
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _train(
    proposal: Proposal,
    context: TrainingContext,
    train: TensorSplit,
    val: TensorSplit,
    parents: Sequence[StateDict],
    resume: Resume,
) -> tuple[EvaluationRecord, dict[str, torch.Tensor] | None]:
    genome = proposal.genome
    seed = genome_seed(context.study_seed, genome)
    build = context.network_builder()
    started = time.perf_counter()
    initial: dict[str, Any] = {"init": "scratch", "transferred_fraction": 0.0}
    try:
        outcome = fit_genome(
            genome,
            seed=seed,
            build_network=build,
            train_split=train,
            val_split=val,
            train_config=context.train_config,
            prepare_network=lambda network: initial.update(_initialise(network, proposal, context.weights, parents)),
            task=context.task,
            epochs=resume.epochs,
            resume_from=resume.resume_from,
            save_to=resume.save_to,
        )
    except Exception as exc:  # noqa: BLE001 - the individual's failure, not the search's
        _free_memory()
        return EvaluationRecord.failed(
            genome, seed, f"{type(exc).__name__}: {exc}", time.perf_counter() - started, **initial
        ), None
    history = outcome.module.epoch_metrics
    last = history[-1]
    record = EvaluationRecord(
        genome, genome_hash(genome), seed, "finished", last[context.task.val_key], last["val_loss"], last["train_loss"],
        outcome.seconds, trained_epochs(history, resume), None, **initial, maximize=context.task.maximize,
        first_epoch=first_recorded_epoch(resume),
    )  # fmt: skip
    state = None
    if context.weights != "none":
        state = {k: v.detach().cpu().clone() for k, v in outcome.module.network.state_dict().items()}
    return record, state


@dataclass(frozen=True)
class Retrained:
    """A configuration trained at full fidelity and tested: its scores (the task's validation and test
    metrics, both losses, ``train_seconds``, ``epochs``), each epoch's metrics, and the network."""

    scores: dict[str, float]
    epoch_metrics: list[dict[str, float]]
    network: torch.nn.Module


def retrain_and_test(
    genome: dict,
    seed: int,
    context: TrainingContext,
    splits: Mapping[str, TensorSplit],
    epochs: int,
    schedule: Sequence[dict[str, Any]] | None = None,
) -> Retrained:
    """The champion's training: ``genome`` from scratch for ``epochs`` epochs with ``seed`` (or, for
    PBT, its ``schedule`` replayed from scratch with the study seed), on the same network builder,
    training settings, task and threads as every evaluation of the context, then tested on
    ``splits["test"]``. Raises on a failed fit (a champion's failure is its caller's to record)."""
    previous = torch.get_num_threads()
    if context.threads is not None and previous != context.threads:
        torch.set_num_threads(context.threads)
    try:
        build = context.network_builder()
        if schedule:
            outcome = replay_schedule(schedule, study_seed=context.study_seed, build_network=build,
                                      train_split=splits["train"], val_split=splits["val"],
                                      train_config=context.train_config, task=context.task)  # fmt: skip
        else:
            outcome = fit_genome(genome, seed=seed, build_network=build, train_split=splits["train"],
                                 val_split=splits["val"], train_config=context.train_config, epochs=epochs,
                                 task=context.task)  # fmt: skip
        test_batches = TensorBatches(splits["test"], context.train_config.eval_batch_size, shuffle=False)
        (test_metrics,) = outcome.trainer.test(outcome.module, dataloaders=test_batches, verbose=False)
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
    history = outcome.module.epoch_metrics
    task = context.task
    scores = {
        task.val_key: history[-1][task.val_key],
        "val_loss": history[-1]["val_loss"],
        task.test_key: float(test_metrics[task.test_key]),
        "test_loss": float(test_metrics["test_loss"]),
        "train_seconds": outcome.seconds,
        "epochs": len(history),
    }
    return Retrained(scores, list(history), outcome.module.network)


def first_recorded_epoch(resume: Resume | None) -> int:
    """The epoch a record's first entry is: 0, or ``resume.start_epoch`` for one interval of a longer
    training (PBT's), whose record keeps only the epochs it trained."""
    return (resume.start_epoch or 0) if resume is not None else 0


def trained_epochs(history: list[dict[str, float]], resume: Resume | None) -> list[dict[str, float]]:
    """The epochs a record keeps: the whole history, or only those past ``resume.start_epoch``."""
    return history[first_recorded_epoch(resume) :]


def _initialise(
    network: torch.nn.Module, proposal: Proposal, rule: str, parents: Sequence[StateDict]
) -> dict[str, Any]:
    """Start ``network`` from its parents' trained weights by ``rule``; freeze the transferred conv
    layers. Returns how it was initialised."""
    if rule == "none" or not parents:
        return {"init": "scratch", "transferred_fraction": 0.0}
    own = network.state_dict()
    if rule == "inherit":
        state, taken = inherit_weights(own, parents[0])  # the fitter parent
    else:
        state, taken = merge_weights(own, list(parents))
    network.load_state_dict(state)
    if proposal.freeze_conv:
        freeze_conv_layers(network, proposal.freeze_conv)
    return {"init": rule, "transferred_fraction": transferable_fraction(own, taken)}


def _free_memory() -> None:
    """Release what a failed fit held, so an out-of-memory individual does not starve the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _DriverSide:
    """What every evaluator keeps in the driver: the context and the weight store."""

    def __init__(self, context: TrainingContext, weight_store: WeightStore | None) -> None:
        if context.weights != "none" and weight_store is None:
            raise ValueError(f"weights={context.weights!r} needs a weight_store to keep trained weights in")
        self.context = context
        self.weight_store = weight_store

    def parent_states(self, proposal: Proposal) -> list[dict[str, torch.Tensor]]:
        """The stored weights of the proposal's parents, fitter first (a failed parent left none)."""
        if self.context.weights == "none" or self.weight_store is None:
            return []
        states = [self.weight_store.load(h) for h in proposal.parents]
        return [s for s in states if s is not None]

    def close(self) -> None:
        """Nothing to release in this process."""

    def keep(self, record: EvaluationRecord, state: dict[str, torch.Tensor] | None) -> EvaluationRecord:
        # Saved before the record is checkpointed: a resumed search finds every finished parent's weights.
        if state is not None and self.weight_store is not None:
            self.weight_store.save(record.genome_hash, state)
        return record


class SequentialEvaluator(_DriverSide):
    """Trains on the prepared ``train`` split and scores on ``val``, one proposal after another, here."""

    def __init__(self, data: PreparedData, context: TrainingContext, weight_store: WeightStore | None = None) -> None:
        super().__init__(context, weight_store)
        # Held on the training device for the whole search: batches are cut there, nothing is copied per step.
        self.train_split = data.load("train").to(training_device())
        self.val_split = data.load("val").to(training_device())

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        return evaluate_in_order(proposals, on_start, self.train)

    def train(self, proposal: Proposal) -> EvaluationRecord:
        record, state = train_proposal(
            proposal, self.context, self.train_split, self.val_split, self.parent_states(proposal)
        )
        return self.keep(record, state)


# -- worker processes on this machine ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # in a worker process: its context and data, loaded once


def _exit_when_orphaned(parent_pid: int, every_seconds: float = 1.0) -> None:
    """A worker whose parent died without closing the pool (kill -9, the out-of-memory killer) exits
    within ``every_seconds`` instead of holding its memory for good; portable, unlike prctl."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def _start_worker(prepared: str, context: TrainingContext, parent_pid: int) -> None:
    _exit_when_orphaned(parent_pid)
    data = PreparedData.open(prepared)
    device = training_device()
    _WORKER.update(context=context, train=data.load("train").to(device), val=data.load("val").to(device))
    if context.threads is not None:
        torch.set_num_threads(context.threads)


def _train_in_worker(proposal: Proposal, parents: list[dict[str, torch.Tensor]]) -> tuple[EvaluationRecord, Any]:
    return train_proposal(proposal, _WORKER["context"], _WORKER["train"], _WORKER["val"], parents)


class WorkerPoolEvaluator(_DriverSide):
    """Trains up to ``workers`` proposals at once in worker processes of this machine, each loading
    the data once and training with ``threads`` torch threads (default: the cores split evenly).
    A worker that dies breaks the pool: it is restarted and the evaluations in flight run again,
    each at most ``retries`` times more before it is recorded FAILED."""

    retries = 1

    def __init__(
        self, data: PreparedData, context: TrainingContext, weight_store: WeightStore | None = None, *, workers: int
    ) -> None:
        if context.threads is None:
            context = dataclasses.replace(context, threads=max(1, (os.cpu_count() or 1) // workers))
        super().__init__(context, weight_store)
        self.workers = workers
        self.prepared = str(Path(data.folder).resolve())
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # asynchronous rungs submit from one thread per worker

    @property
    def concurrency(self) -> int:
        """Evaluations trained at once: one per worker."""
        return self.workers

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker, initargs=(self.prepared, self.context, os.getpid()),
                )  # fmt: skip
            return self._pool

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        queue = list(range(len(proposals)))
        running: dict[Future, int] = {}
        broken = {position: 0 for position in queue}
        try:
            while queue or running:
                # At most one evaluation per worker in flight: "started" means a worker has it.
                while queue and len(running) < self.workers:
                    position = queue.pop(0)
                    if on_start is not None and broken[position] == 0:
                        on_start(position)
                    running[self._submit(proposals[position])] = position
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    position = running.pop(future)
                    try:
                        record, state = future.result()
                    except BrokenProcessPool:
                        self.close()  # unusable now: the next submit starts a fresh pool
                        broken[position] += 1
                        if broken[position] <= self.retries:
                            queue.insert(0, position)
                            continue
                        genome = proposals[position].genome
                        record, state = EvaluationRecord.failed(
                            genome, genome_seed(self.context.study_seed, genome),
                            "worker process died during the evaluation (killed, or out of memory)", 0.0,
                        ), None  # fmt: skip
                    yield position, self.keep(record, state)
        except BaseException:
            self.close()
            raise

    def _submit(self, proposal: Proposal) -> Future:
        parents = self.parent_states(proposal)
        try:
            return self._executor().submit(_train_in_worker, proposal, parents)
        except BrokenProcessPool:  # a worker died since the last result: the futures in flight will say so too
            self.close()
            return self._executor().submit(_train_in_worker, proposal, parents)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
