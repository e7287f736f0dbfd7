"""One fit: a genome's network trained with its optimiser genes by a Lightning ``Trainer``.

Randomness (initial weights, dropout, input noise) comes from the genome's own seed, inside a
forked torch RNG, so a fit gives the same result whatever ran before it in the process, and
leaves the process's RNG as it found it. Batches are shuffled by their own seeded generator.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping

from pipeline.data import TensorBatches, TensorSplit
from pipeline.space import Genome
from pipeline.task import CLASSIFICATION, Task
from pipeline.training.lit_module import EPOCH_METRICS_KEY, LitClassifier, training_settings
from pipeline.training.models import NetworkBuilder

if TYPE_CHECKING:
    from pipeline.config.sections import EarlyStoppingConfig, TrainConfig

# Lightning prints device and hint lines for every Trainer; one per individual drowns the progress.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is an invalid value for `num_workers`.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


@dataclass
class FitOutcome:
    module: LitClassifier
    trainer: pl.Trainer
    seconds: float


def make_trainer(
    max_epochs: int, early_stopping: EarlyStoppingConfig | None = None, task: Task = CLASSIFICATION
) -> pl.Trainer:
    """A Trainer for short fits: no checkpoints, logger, progress bar or summary per individual."""
    callbacks = []
    if early_stopping is not None:
        callbacks.append(
            EarlyStopping(monitor=task.val_key, mode="max" if task.maximize else "min", patience=early_stopping.patience,
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


def fit_genome(
    genome: Genome,
    *,
    seed: int,
    build_network: NetworkBuilder,
    train_split: TensorSplit,
    val_split: TensorSplit,
    train_config: TrainConfig,
    epochs: int | None = None,
    prepare_network: Callable[[torch.nn.Module], None] | None = None,
    task: Task = CLASSIFICATION,
    resume_from: Path | None = None,
    save_to: Path | None = None,
) -> FitOutcome:
    """Train the genome's network with its optimiser settings to ``epochs`` (default: its epochs
    gene); raises on divergence.

    ``prepare_network`` sees the freshly (seeded) initialised network before training: where
    inherited weights are loaded and transferred layers frozen. ``resume_from``: a training state
    saved by an earlier, shorter fit of the same genome (``save_to``): weights, optimiser, scheduler,
    epoch counter, early-stopping state, the torch random state and the batch order continue from it,
    so training to 3 epochs in two fits ends bit-equal to one fit of 3 epochs (multi-fidelity).
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        network = build_network(genome)
        if prepare_network is not None:
            prepare_network(network)
        if train_config.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in network.modules()):
            network = network.to(memory_format=torch.channels_last)  # the parameters' values are kept
        module = LitClassifier(network, task=task, **training_settings(genome, train_config))
        trainer = make_trainer(epochs or genome["epochs"], train_config.early_stopping, task)
        # Epoch e's batch order is drawn from seed + e: a resumed fit continues at the saved epoch.
        first_epoch = saved_epochs(resume_from) if resume_from is not None else 0
        train_batches = TensorBatches(train_split, genome["batch_size"], shuffle=True, seed=seed,
                                      first_epoch=first_epoch)  # fmt: skip
        val_batches = TensorBatches(val_split, train_config.eval_batch_size, shuffle=False)
        started = time.perf_counter()
        trainer.fit(module, train_dataloaders=train_batches, val_dataloaders=val_batches,
                    ckpt_path=str(resume_from) if resume_from is not None else None, weights_only=True)  # fmt: skip
        if save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            partial = save_to.with_name(save_to.name + ".partial")
            trainer.save_checkpoint(partial, weights_only=False)  # the optimiser, scheduler and loops too
            partial.replace(save_to)  # whole or absent: a kill while saving leaves the last rung's state
        return FitOutcome(module, trainer, time.perf_counter() - started)


def saved_epochs(state_file: Path) -> int:
    """Epochs a saved training state (``fit_genome(save_to=...)``) has trained."""
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    return len(state[EPOCH_METRICS_KEY])
