"""The LightningModule every evaluation trains: the genome's optimiser (the studies' SGD, or Adam,
AdamW) and learning-rate schedule (the studies' StepLR, cosine annealing or none), on the task's loss
(cross-entropy, or squared error on standardised targets), scored by the task's metric."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import nn

from pipeline.task import CLASSIFICATION, Task

if TYPE_CHECKING:
    from pipeline.config.sections import TrainConfig


# Keys this module adds to a Lightning checkpoint, so a resumed fit continues bit-equal.
EPOCH_METRICS_KEY = "evohpo_epoch_metrics"
RNG_KEY = "evohpo_torch_rng"
CUDA_RNG_KEY = "evohpo_cuda_rng"


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class LitClassifier(pl.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        *,
        learning_rate: float,
        momentum: float,
        weight_decay: float,
        lr_step_size: int = 1,
        lr_gamma: float = 0.7,
        noise_level: float = 0.0,
        task: Task = CLASSIFICATION,
        optimizer: str = "sgd",
        lr_schedule: str = "step",
        total_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.network = network
        self.task = task
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.noise_level = noise_level
        self.optimizer_name = optimizer
        self.lr_schedule = lr_schedule
        self.total_epochs = total_epochs  # cosine anneals over the genome's epochs, whatever rung a fit stops at
        self._train_loss_sum = 0.0
        self._train_count = 0
        # Per-epoch summary, filled at the end of each training epoch: train_loss, val_loss, the
        # task's validation metric (val_acc or val_mae) and lr.
        self.epoch_metrics: list[dict[str, float]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.noise_level > 0:
            # Data augmentation (study 002): fresh Gaussian noise on every training batch.
            images = images + self.noise_level * torch.randn_like(images)
        loss = self.task.loss(self(images), labels)
        # A diverged individual must fail fast and be recorded, not train on garbage.
        if not torch.isfinite(loss):
            raise DivergedError(f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}")
        self._train_loss_sum += loss.detach() * len(labels)
        self._train_count += len(labels)
        return loss

    def _evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        images, labels = batch
        outputs = self(images)
        loss = self.task.loss(outputs, labels)
        self.log(f"{prefix}_loss", loss, on_epoch=True, batch_size=len(labels))
        self.log(
            f"{prefix}_{self.task.metric}", self.task.score(outputs, labels), on_epoch=True, batch_size=len(labels)
        )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "test")

    def on_train_epoch_start(self) -> None:
        # Read before the epoch-end scheduler step, so "lr" is the rate this epoch trained with.
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self) -> None:
        # Validation of this epoch has run by now (it runs at the end of the training epoch).
        metrics = {key: float(self.trainer.callback_metrics[key]) for key in ("val_loss", self.task.val_key)}
        train_loss = float(self._train_loss_sum / max(self._train_count, 1))
        if not math.isfinite(metrics["val_loss"]):
            raise DivergedError(f"validation loss became {metrics['val_loss']} at epoch {self.current_epoch}")
        self.epoch_metrics.append({"train_loss": train_loss, **metrics, "lr": self._epoch_lr})
        self._train_loss_sum, self._train_count = 0.0, 0

    def on_train_start(self) -> None:
        # Runs after a resumed fit restored the optimiser and scheduler, whose saved settings would
        # otherwise overwrite the genome's: a PBT member explored to new ones trains with those.
        if self.trainer.ckpt_path is not None:
            self._apply_settings()

    def _apply_settings(self) -> None:
        """This module's learning rate, momentum and weight decay on the restored optimiser; the
        learning rate's schedule goes on from where it was, scaled to the new base rate."""
        optimizer = self.trainer.optimizers[0]
        for group in optimizer.param_groups:
            group["lr"] = rescaled_rate(group["lr"], group.get("initial_lr", group["lr"]), self.learning_rate)
            if "initial_lr" in group:
                group["initial_lr"] = self.learning_rate
            if "momentum" in group and self.optimizer_name == "sgd":
                group["momentum"] = self.momentum
            group["weight_decay"] = self.weight_decay
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning saves weights, optimiser, scheduler and loops; the random stream of dropout and
        # input noise, and the per-epoch history, are this module's to carry.
        checkpoint[EPOCH_METRICS_KEY] = list(self.epoch_metrics)
        checkpoint[RNG_KEY] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint[CUDA_RNG_KEY] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_metrics = list(checkpoint[EPOCH_METRICS_KEY])
        torch.set_rng_state(checkpoint[RNG_KEY])
        if CUDA_RNG_KEY in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint[CUDA_RNG_KEY])

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's documented return shape
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(), lr=self.learning_rate, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:  # Adam and AdamW with their default betas: momentum is SGD's
            kind = torch.optim.Adam if self.optimizer_name == "adam" else torch.optim.AdamW
            optimizer = kind(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.lr_schedule == "none":
            return optimizer
        if self.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.total_epochs, 1))
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def rescaled_rate(rate: float, old_base: float, new_base: float) -> float:
    """The scheduled rate of a schedule whose base rate changes from ``old_base`` to ``new_base``
    mid-training (PBT's explore): the same share of the new base. Unchanged when the base is."""
    return rate if old_base == new_base else rate * (new_base / old_base)


def optimizer_of(genome: Mapping[str, Any], train_config: TrainConfig) -> str:
    """The optimiser a genome trains with: its ``optimizer`` gene, else ``train.optimizer``."""
    return str(genome.get("optimizer", train_config.optimizer))


def training_settings(genome: Mapping[str, Any], train_config: TrainConfig) -> dict[str, Any]:
    """``LitClassifier``'s settings for a genome: its genes, ``train``'s values for the genes it lacks."""
    return {
        "learning_rate": genome["learning_rate"],
        "momentum": genome.get("momentum", train_config.momentum),
        "weight_decay": genome.get("weight_decay", train_config.weight_decay),
        "lr_step_size": train_config.lr_step_size,
        "lr_gamma": train_config.lr_gamma,
        "noise_level": genome.get("noise_level", train_config.noise_level),
        "optimizer": optimizer_of(genome, train_config),
        "lr_schedule": train_config.lr_schedule,
        "total_epochs": int(genome["epochs"]),
    }
