"""The one place that trains during a search: genome in, fitness (validation accuracy) out.

``Evaluator.evaluate`` takes a whole batch of requests (a generation, a slice of the grid), so a
parallel or vectorised implementation can replace the sequential loop behind the same call.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
import gc
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping

from pipeline.config import EarlyStoppingConfig, ModelConfig, TrainConfig
from pipeline.data import PreparedData, TensorBatches, TensorSplit
from pipeline.lit_module import DivergedError, LitClassifier
from pipeline.models import build_architecture_network, build_network, freeze_conv_layers
from pipeline.space import Genome, genome_hash, genome_seed
from pipeline.tracking import Tracker
from pipeline.weights import WeightStore, inherit_weights, merge_weights, transferable_fraction

# Lightning prints device and hint lines for every Trainer; one per individual drowns the progress.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is an invalid value for `num_workers`.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


@dataclass(frozen=True)
class EvaluationRequest:
    """One genome to train, with where its MLflow run goes and how it is tagged."""

    genome: Genome
    run_name: str
    parent_run_id: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    weight_parents: tuple[str, ...] = ()  # genome hashes whose trained weights the child may start from
    freeze_conv: int = 0  # leading conv layers kept frozen (phased growth)


@dataclass(frozen=True)
class EvaluationResult:
    genome: Genome
    genome_hash: str
    seed: int
    status: str  # "finished" or "failed"
    val_acc: float | None
    val_loss: float | None
    train_loss: float | None
    train_seconds: float
    epochs: list[dict[str, float]]
    failure: str | None = None
    run_id: str | None = None
    init: str = "scratch"  # "scratch", "inherit" or "merge": where the initial weights came from
    transferred_fraction: float = 0.0  # share of the initial weights taken from parents

    @property
    def fitness(self) -> float:
        """Validation accuracy; a failed individual ranks below every finished one."""
        return self.val_acc if self.status == "finished" and self.val_acc is not None else -math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EvaluationResult:
        """The result stored in a search record (a checkpoint or history entry)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


@dataclass
class FitOutcome:
    module: LitClassifier
    trainer: pl.Trainer
    seconds: float


def training_device() -> torch.device:
    """Where ``accelerator="auto"`` trains: the GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def make_trainer(max_epochs: int, early_stopping: EarlyStoppingConfig | None = None) -> pl.Trainer:
    """A Trainer for short fits: no checkpoints, logger, progress bar or summary per individual."""
    callbacks = []
    if early_stopping is not None:
        callbacks.append(
            EarlyStopping(monitor="val_acc", mode="max", patience=early_stopping.patience,
                          min_delta=early_stopping.min_delta, verbose=False)
        )  # fmt: skip
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def build_genome_network(
    genome: Genome, model_config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int
) -> torch.nn.Module:
    """The network a genome trains: its own layers for an architecture genome, else the study's CNN."""
    if "conv" in genome:
        return build_architecture_network(genome, image_shape, num_classes)
    return build_network(model_config, image_shape, num_classes)


def mlflow_params(genome: Genome) -> dict[str, Any]:
    """A genome as MLflow params: scalars as they are, layer lists as JSON plus their length."""
    params: dict[str, Any] = {}
    for key, value in genome.items():
        if isinstance(value, list):
            params[f"{key}_layers"] = len(value)
            params[key] = json.dumps(value, separators=(",", ":"))
        else:
            params[key] = value
    return params


def fit_genome(
    genome: Genome,
    *,
    seed: int,
    train_split: TensorSplit,
    val_split: TensorSplit,
    data: PreparedData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    epochs: int | None = None,
    prepare_network: Callable[[torch.nn.Module], None] | None = None,
) -> FitOutcome:
    """Train the genome's network with its optimiser settings; raises on divergence.

    ``prepare_network`` sees the freshly (seeded) initialised network before training: where
    inherited weights are loaded and transferred layers frozen.
    """
    pl.seed_everything(seed, workers=False, verbose=False)
    network = build_genome_network(genome, model_config, data.image_shape, data.num_classes)
    if prepare_network is not None:
        prepare_network(network)
    module = LitClassifier(
        network,
        learning_rate=genome["learning_rate"],
        momentum=genome["momentum"],
        weight_decay=genome["weight_decay"],
        lr_step_size=train_config.lr_step_size,
        lr_gamma=train_config.lr_gamma,
        noise_level=genome.get("noise_level", train_config.noise_level),
    )
    trainer = make_trainer(epochs or genome["epochs"], train_config.early_stopping)
    train_batches = TensorBatches(train_split, genome["batch_size"], shuffle=True, seed=seed)
    val_batches = TensorBatches(val_split, train_config.eval_batch_size, shuffle=False)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_batches, val_dataloaders=val_batches)
    return FitOutcome(module, trainer, time.perf_counter() - started)


class Evaluator:
    """Trains genomes on the prepared ``train`` split and scores them on ``val``."""

    def __init__(
        self,
        data: PreparedData,
        *,
        model_config: ModelConfig,
        train_config: TrainConfig,
        study_seed: int,
        tracker: Tracker | None = None,
        weights: str = "none",
        weight_store: WeightStore | None = None,
    ) -> None:
        if weights != "none" and weight_store is None:
            raise ValueError(f"weights={weights!r} needs a weight_store to keep trained weights in")
        self.weights = weights
        self.weight_store = weight_store
        self.data = data
        self.model_config = model_config
        self.train_config = train_config
        self.study_seed = study_seed
        self.tracker = tracker
        # Held on the training device for the whole search: batches are cut there, nothing is copied per step.
        self.train_split = data.load("train").to(training_device())
        self.val_split = data.load("val").to(training_device())
        # Results of a killed run of this stage, handed back instead of training (per genome, in order).
        self._replay: dict[str, deque[EvaluationResult]] = defaultdict(deque)

    def preload(self, results: Iterable[EvaluationResult]) -> None:
        for result in results:
            self._replay[result.genome_hash].append(result)

    def evaluate(
        self,
        requests: Sequence[EvaluationRequest],
        on_result: Callable[[EvaluationResult], None] | None = None,
    ) -> list[EvaluationResult]:
        """Train every request; results in request order. ``on_result`` sees each as it finishes."""
        results = []
        for request in requests:
            queued = self._replay.get(genome_hash(request.genome))
            result = queued.popleft() if queued else self._evaluate_one(request)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    def _evaluate_one(self, request: EvaluationRequest) -> EvaluationResult:
        genome = request.genome
        hash_ = genome_hash(genome)
        seed = genome_seed(self.study_seed, genome)
        run_id = None
        if self.tracker is not None:
            run_id = self.tracker.start_run(
                request.run_name,
                parent_id=request.parent_run_id,
                params={**mlflow_params(genome), "seed": seed},
                tags={**request.tags, "genome_hash": hash_},
            )
        started = time.perf_counter()
        initial = {"init": "scratch", "transferred_fraction": 0.0}
        try:
            outcome = fit_genome(
                genome,
                seed=seed,
                train_split=self.train_split,
                val_split=self.val_split,
                data=self.data,
                model_config=self.model_config,
                train_config=self.train_config,
                prepare_network=lambda network: initial.update(self._initialise(network, request)),
            )
        except Exception as exc:  # noqa: BLE001
            # Any failure inside one individual's training (divergence, out of memory, a model its
            # genome cannot build) is that individual's, not the search's.
            reason = f"{type(exc).__name__}: {exc}"
            _free_memory()
            result = EvaluationResult(
                genome, hash_, seed, "failed", None, None, None, time.perf_counter() - started, [], reason, run_id,
                **initial,
            )  # fmt: skip
            if self.tracker is not None and run_id is not None:
                self.tracker.set_tags(run_id, {"failure_reason": reason[:5000]})
                self.tracker.log_metrics(run_id, {"train_seconds": result.train_seconds})
                self.tracker.end_run(run_id, "FAILED")
            return result
        except BaseException:
            # Killed (Ctrl-C, SIGTERM): the run did not fail, it was stopped; a resume retrains it.
            if self.tracker is not None and run_id is not None:
                self.tracker.end_run(run_id, "KILLED")
            raise
        history = outcome.module.epoch_metrics
        last = history[-1]
        result = EvaluationResult(
            genome, hash_, seed, "finished", last["val_acc"], last["val_loss"], last["train_loss"],
            outcome.seconds, history, None, run_id, **initial,
        )  # fmt: skip
        if self.weight_store is not None:
            # Saved before the result is checkpointed: a resumed search finds every finished parent's weights.
            self.weight_store.save(hash_, outcome.module.network.state_dict())
        if self.tracker is not None and run_id is not None:
            for epoch, metrics in enumerate(history):
                self.tracker.log_metrics(run_id, metrics, step=epoch)
            self.tracker.log_metrics(
                run_id,
                {"final_val_acc": last["val_acc"], "final_val_loss": last["val_loss"], "train_seconds": outcome.seconds,
                 "epochs_trained": len(history), "transferred_fraction": initial["transferred_fraction"]},
            )  # fmt: skip
            self.tracker.set_tags(run_id, {"init": initial["init"]})
            self.tracker.end_run(run_id, "FINISHED")
        return result

    def _initialise(self, network: torch.nn.Module, request: EvaluationRequest) -> dict[str, Any]:
        """Start ``network`` from its parents' trained weights by the ``weights`` rule; freeze the
        transferred conv layers. Returns how it was initialised."""
        parents = [self.weight_store.load(h) for h in request.weight_parents] if self.weight_store else []
        parents = [p for p in parents if p is not None]  # a failed parent left no weights
        if self.weights == "none" or not parents:
            return {"init": "scratch", "transferred_fraction": 0.0}
        own = network.state_dict()
        if self.weights == "inherit":
            state, taken = inherit_weights(own, parents[0])  # the fitter parent
        else:
            state, taken = merge_weights(own, parents)
        network.load_state_dict(state)
        if request.freeze_conv:
            freeze_conv_layers(network, request.freeze_conv)
        return {"init": self.weights, "transferred_fraction": transferable_fraction(own, taken)}


def _free_memory() -> None:
    """Release what a failed fit held, so an out-of-memory individual does not starve the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
