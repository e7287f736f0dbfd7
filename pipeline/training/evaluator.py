"""The sequential evaluator: trains proposals one after another in this process.

It only trains: proposals in, ``EvaluationRecord``s out (``pipeline.evaluation.Evaluator``). No
MLflow, no checkpoint: the runner does both. With ``ga.weights`` it starts a child from its
parents' trained weights (kept in a ``WeightStore`` by genome hash) and saves its own.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from pipeline.data import PreparedData
from pipeline.evaluation import EvaluationRecord, Proposal, StartCallback
from pipeline.space import genome_hash, genome_seed
from pipeline.training.fit import fit_genome, training_device
from pipeline.training.models import freeze_conv_layers, network_builder
from pipeline.training.weights import WeightStore, inherit_weights, merge_weights, transferable_fraction

if TYPE_CHECKING:
    from pipeline.config.sections import ModelConfig, TrainConfig


class SequentialEvaluator:
    """Trains genomes on the prepared ``train`` split and scores them on ``val``, one at a time."""

    def __init__(
        self,
        data: PreparedData,
        *,
        space_kind: str,
        model_config: ModelConfig,
        train_config: TrainConfig,
        study_seed: int,
        weights: str = "none",
        weight_store: WeightStore | None = None,
    ) -> None:
        if weights != "none" and weight_store is None:
            raise ValueError(f"weights={weights!r} needs a weight_store to keep trained weights in")
        self.weights = weights
        self.weight_store = weight_store
        self.train_config = train_config
        self.study_seed = study_seed
        self.build_network = network_builder(space_kind, model_config, data.image_shape, data.num_classes)
        # Held on the training device for the whole search: batches are cut there, nothing is copied per step.
        self.train_split = data.load("train").to(training_device())
        self.val_split = data.load("val").to(training_device())

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        for position, proposal in enumerate(proposals):
            if on_start is not None:
                on_start(position)
            yield position, self.train(proposal)

    def train(self, proposal: Proposal) -> EvaluationRecord:
        """One individual: a finished record, or a failed one for any exception inside its training
        (divergence, out of memory, a network its genome cannot build). A kill (``KeyboardInterrupt``,
        ``SystemExit``) is not the individual's failure and propagates."""
        genome = proposal.genome
        seed = genome_seed(self.study_seed, genome)
        started = time.perf_counter()
        initial: dict[str, Any] = {"init": "scratch", "transferred_fraction": 0.0}
        try:
            outcome = fit_genome(
                genome,
                seed=seed,
                build_network=self.build_network,
                train_split=self.train_split,
                val_split=self.val_split,
                train_config=self.train_config,
                prepare_network=lambda network: initial.update(self._initialise(network, proposal)),
            )
        except Exception as exc:  # noqa: BLE001
            _free_memory()
            return EvaluationRecord.failed(
                genome, seed, f"{type(exc).__name__}: {exc}", time.perf_counter() - started, **initial
            )
        history = outcome.module.epoch_metrics
        last = history[-1]
        if self.weight_store is not None:
            # Saved before the record is checkpointed: a resumed search finds every finished parent's weights.
            self.weight_store.save(genome_hash(genome), outcome.module.network.state_dict())
        return EvaluationRecord(
            genome, genome_hash(genome), seed, "finished", last["val_acc"], last["val_loss"], last["train_loss"],
            outcome.seconds, history, None, **initial,
        )  # fmt: skip

    def _initialise(self, network: torch.nn.Module, proposal: Proposal) -> dict[str, Any]:
        """Start ``network`` from its parents' trained weights by the ``weights`` rule; freeze the
        transferred conv layers. Returns how it was initialised."""
        parents = [self.weight_store.load(h) for h in proposal.parents] if self.weight_store else []
        parents = [p for p in parents if p is not None]  # a failed parent left no weights
        if self.weights == "none" or not parents:
            return {"init": "scratch", "transferred_fraction": 0.0}
        own = network.state_dict()
        if self.weights == "inherit":
            state, taken = inherit_weights(own, parents[0])  # the fitter parent
        else:
            state, taken = merge_weights(own, parents)
        network.load_state_dict(state)
        if proposal.freeze_conv:
            freeze_conv_layers(network, proposal.freeze_conv)
        return {"init": self.weights, "transferred_fraction": transferable_fraction(own, taken)}


def _free_memory() -> None:
    """Release what a failed fit held, so an out-of-memory individual does not starve the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
