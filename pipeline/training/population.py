"""A population trained at once: the members of a batch that share an architecture and a batch size
train together in one Lightning fit of one LightningModule, their parameters stacked
(``torch.func.stack_module_state``) and their forward pass vectorised (``functional_call`` under
``vmap``), each with its own learning rate, momentum, weight decay and StepLR schedule in one fused
SGD update (per-member coefficient tensors: ``torch.optim`` takes one learning rate per parameter
group, not per stacked slice). A member whose epochs are done, or whose loss diverges, leaves the
group; the others go on.

Each member starts from the weights it would start from alone (its network built under its own
seed) and sees its own batches in its own order (its seed's shuffle), so without dropout a member
trained in a group ends with the weights it ends with alone, within float tolerance (the fused
update rounds like ``torch.optim.SGD`` up to the last bits). Dropout masks are drawn from the
group's generator under ``vmap(randomness="different")``, not from the member's: with dropout the
members train as well, but not bit for bit as alone.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pipeline.config.loading import TRAINING_GENES
from pipeline.data import PreparedData, TensorBatches, TensorSplit
from pipeline.evaluation import EvaluationRecord, Proposal, StartCallback
from pipeline.space import genome_hash, genome_seed
from pipeline.task import Task
from pipeline.training.evaluator import TrainingContext, _DriverSide, train_proposal
from pipeline.training.fit import make_trainer, training_device
from pipeline.training.lit_module import optimizer_of

# The fused update in training_step is the optimiser: Lightning's note that there is none is expected.
warnings.filterwarnings("ignore", message=".*`configure_optimizers` returned `None`.*")


def group_key(genome: dict[str, Any]) -> tuple:
    """Members that can train together: the same network (an architecture genome's layers, a user's
    builder's genes, or the fixed network) and the same batch size and optimiser."""
    network = tuple((name, repr(value)) for name, value in genome.items() if name not in TRAINING_GENES)
    return (*network, genome["batch_size"], genome.get("optimizer"))


def has_batch_norm(network: nn.Module) -> bool:
    """BatchNorm's running statistics cannot be updated under ``vmap``."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


@dataclass
class Member:
    position: int  # in the proposals of the batch
    genome: dict[str, Any]
    seed: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    history: list[dict[str, float]] = field(default_factory=list)
    failure: str | None = None
    state: dict[str, torch.Tensor] | None = None  # its trained weights, once it has left the group


class _MemberBatches:
    """Each member's own shuffled batches, step by step: at step ``i`` of epoch ``e`` member ``k``
    gets the ``i``-th batch of ``torch.randperm(n, generator=Generator(seed_k + e))`` (as
    ``TensorBatches`` gives it alone)."""

    def __init__(self, split: TensorSplit, batch_size: int, seeds: Sequence[int]) -> None:
        self.split, self.batch_size, self.seeds = split, batch_size, list(seeds)
        self._epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n = len(self.split)
        orders = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s + self._epoch))
                              for s in self.seeds]).to(self.split.images.device)  # fmt: skip
        self._epoch += 1
        for start in range(0, n, self.batch_size):
            yield orders[:, start : start + self.batch_size]  # [members, batch]: indices into the split


class PopulationModule(pl.LightningModule):
    """The members of one group, stacked; trained by hand (manual optimisation, one fused update)."""

    def __init__(self, networks: list[nn.Module], members: list[Member], train: TensorSplit, context: TrainingContext):
        super().__init__()
        self.automatic_optimization = False
        self.members = members
        self.active = list(range(len(members)))  # indices into members, in stack order
        self.train_split = train
        self.task = context.task
        self.lr_step_size, self.lr_gamma = context.train_config.lr_step_size, context.train_config.lr_gamma
        self.noise_level = context.train_config.noise_level
        # The network's structure without weights; held outside the module's children, so Lightning
        # does not move it (meta tensors have no data to move): the weights are the stacked tensors.
        self._structure = (copy.deepcopy(networks[0]).to("meta"),)
        params, buffers = stack_module_state(networks)
        self.params = {k: v.detach().clone() for k, v in params.items()}
        self.buffers_ = {k: v.detach().clone() for k, v in buffers.items()}
        self.momentum_buffers = {k: torch.zeros_like(v) for k, v in self.params.items()}
        # Double precision, as torch.optim holds them (Python floats); cast where they meet the weights.
        self.lr = torch.tensor([m.lr for m in members], dtype=torch.float64)
        self.momentum = torch.tensor([m.momentum for m in members], dtype=torch.float64)
        self.weight_decay = torch.tensor([m.weight_decay for m in members], dtype=torch.float64)
        self._sums: dict[str, torch.Tensor] = {}

    def on_fit_start(self) -> None:
        # Plain tensors, not registered parameters: moved here, once the module is on its device.
        device = self.device
        for store in (self.params, self.buffers_, self.momentum_buffers):
            for key in store:
                store[key] = store[key].to(device)
        self.params = {k: v.requires_grad_(True) for k, v in self.params.items()}
        self.lr, self.momentum, self.weight_decay = (t.to(device) for t in (self.lr, self.momentum, self.weight_decay))

    @property
    def base(self) -> nn.Module:
        return self._structure[0]

    # -- the vectorised forward pass --------------------------------------------------------------

    def _forward_one(self, params: dict, buffers: dict, images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (images,))

    def forward_members(self, images: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Outputs ``[members, batch, ...]``: ``images`` per member ``[members, batch, ...]``, or
        one batch for every member (``shared``)."""
        in_dims = (0, 0, None if shared else 0)
        return vmap(self._forward_one, in_dims=in_dims, randomness="different")(self.params, self.buffers_, images)

    # -- training ---------------------------------------------------------------------------------

    def training_step(self, indices: torch.Tensor, batch_idx: int) -> None:
        rows = indices[self.active]  # each active member's own batch
        images, labels = self.train_split.images[rows], self.train_split.labels[rows]
        if self.noise_level > 0:
            images = images + self.noise_level * torch.randn_like(images)
        self.base.train()
        outputs = self.forward_members(images)
        losses = torch.stack([self.task.loss(outputs[k], labels[k]) for k in range(len(self.active))])
        # Members share no operation: a diverged member's NaN reaches only its own gradients.
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        self._fused_sgd(grads)
        batch = labels.shape[1]
        self._sums["train"] = self._sums.get("train", torch.zeros_like(losses)) + losses.detach() * batch
        self._sums["train_count"] = self._sums.get("train_count", torch.zeros_like(losses)) + batch
        diverged = ~torch.isfinite(losses.detach())
        if diverged.any():
            for k in diverged.nonzero().flatten().tolist():
                self.members[self.active[k]].failure = (
                    f"DivergedError: training loss became {losses[k].item()} at epoch {self.current_epoch}, "
                    f"batch {batch_idx}"
                )
            self._keep(~diverged)
            if not self.active:
                self.trainer.should_stop = True

    @torch.no_grad()
    def _fused_sgd(self, grads: Sequence[torch.Tensor]) -> None:
        """``torch.optim.SGD`` (dampening 0, not Nesterov) with one learning rate, momentum and
        weight decay per member: each coefficient a ``[members, 1, ...]`` tensor."""
        for (key, param), grad in zip(self.params.items(), grads):
            shape = (-1,) + (1,) * (param.dim() - 1)

            def per_member(values: torch.Tensor) -> torch.Tensor:
                return values.view(shape).to(param.dtype)

            step = grad + per_member(self.weight_decay) * param
            buffer = self.momentum_buffers[key]
            buffer.mul_(per_member(self.momentum)).add_(step)
            param.sub_(per_member(self.lr) * buffer)

    # -- validation and the end of an epoch -------------------------------------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.base.eval()
        with torch.no_grad():
            outputs = self.forward_members(images, shared=True)
        losses = torch.stack([self.task.loss(o, labels) for o in outputs])
        scores = torch.stack([self.task.score(o, labels) for o in outputs])
        n = len(labels)
        for name, values in (("val_loss", losses), ("val_score", scores)):
            self._sums[name] = self._sums.get(name, torch.zeros_like(values)) + values * n
        self._sums["val_count"] = self._sums.get("val_count", torch.zeros_like(losses)) + n

    def on_train_epoch_end(self) -> None:
        if not self.active or "val_count" not in self._sums:
            return
        sums = {k: v.detach().cpu() for k, v in self._sums.items()}
        self._sums = {}
        done = []
        for k, index in enumerate(self.active):
            member = self.members[index]
            val_loss = float(sums["val_loss"][k] / sums["val_count"][k])
            if not math.isfinite(val_loss):
                member.failure = f"DivergedError: validation loss became {val_loss} at epoch {self.current_epoch}"
                done.append(False)
                continue
            member.history.append({
                "train_loss": float(sums["train"][k] / max(float(sums["train_count"][k]), 1.0)),
                "val_loss": val_loss,
                self.task.val_key: float(sums["val_score"][k] / sums["val_count"][k]),
                "lr": float(self.lr[k]),
            })  # fmt: skip
            done.append(len(member.history) < member.epochs)
        self._keep(torch.tensor(done))
        # StepLR, as torch's chainable form computes it: multiplied at each step boundary.
        if (self.current_epoch + 1) % self.lr_step_size == 0:
            self.lr = self.lr * self.lr_gamma
        if not self.active:
            self.trainer.should_stop = True

    def _keep(self, keep: torch.Tensor) -> None:
        """Members not kept leave the group: their weights are saved, their slices dropped."""
        keep = keep.to(torch.bool).cpu()
        for k in (~keep).nonzero().flatten().tolist():
            member = self.members[self.active[k]]
            member.state = {name: p[k].detach().cpu().clone() for name, p in {**self.params, **self.buffers_}.items()}
        index = keep.nonzero().flatten().to(self.lr.device)
        self.active = [a for a, kept in zip(self.active, keep.tolist()) if kept]
        with torch.no_grad():
            self.params = {k: v.index_select(0, index).detach().requires_grad_(True) for k, v in self.params.items()}
            self.buffers_ = {k: v.index_select(0, index) for k, v in self.buffers_.items()}
            self.momentum_buffers = {k: v.index_select(0, index) for k, v in self.momentum_buffers.items()}
        self.lr, self.momentum, self.weight_decay = (t.index_select(0, index) for t in (self.lr, self.momentum,
                                                                                       self.weight_decay))
        self._sums = {k: v.index_select(0, index.to(v.device)) for k, v in self._sums.items()}

    def configure_optimizers(self) -> None:
        return None  # the fused update in training_step is the optimiser


def train_group(
    proposals: Sequence[Proposal], positions: Sequence[int], context: TrainingContext, train: TensorSplit,
    val: TensorSplit,
) -> tuple[list[Member], float]:
    """Train the proposals at ``positions`` together; their members (history, failure, weights) and
    the seconds the group's fit took."""
    build = context.network_builder()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    members, networks = [], []
    for position in positions:
        genome = proposals[position].genome
        seed = genome_seed(context.study_seed, genome)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the initial weights it gets alone
            networks.append(build(genome))
        momentum, weight_decay = (genome.get(name, getattr(context.train_config, name))
                                  for name in ("momentum", "weight_decay"))  # fmt: skip
        members.append(Member(position, genome, seed, genome["epochs"], genome["learning_rate"], momentum, weight_decay))
    seeds = [m.seed for m in members]
    module = PopulationModule(networks, members, train, context)
    trainer = make_trainer(max(m.epochs for m in members))
    batches = _MemberBatches(train, members[0].genome["batch_size"], seeds)
    val_batches = TensorBatches(val, context.train_config.eval_batch_size, shuffle=False)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(min(seeds))  # the dropout and noise draws of the group
        trainer.fit(module, train_dataloaders=batches, val_dataloaders=val_batches)
    return members, time.perf_counter() - started


def plan_groups(proposals: Sequence[Proposal], max_size: int) -> list[list[int]]:
    """Positions of the proposals that train together: by architecture and batch size, in order of
    first appearance, at most ``max_size`` to a group."""
    buckets: dict[tuple, list[int]] = {}
    for position, proposal in enumerate(proposals):
        buckets.setdefault(group_key(proposal.genome), []).append(position)
    return [positions[i : i + max_size] for positions in buckets.values() for i in range(0, len(positions), max_size)]


def member_record(member: Member, seconds: float, task: Task) -> EvaluationRecord:
    genome = member.genome
    if member.failure is not None or not member.history:
        reason = member.failure or "left the group without a finished epoch"
        return EvaluationRecord.failed(genome, member.seed, reason, seconds)
    last = member.history[-1]
    return EvaluationRecord(
        genome, genome_hash(genome), member.seed, "finished", last[task.val_key], last["val_loss"],
        last["train_loss"], seconds, member.history, maximize=task.maximize,
    )  # fmt: skip


class PopulationEvaluator(_DriverSide):
    """Trains each group of a batch (``plan_groups``) in one fit, here; a group of one, a network
    with BatchNorm, or a group whose fit fails as a whole trains member by member as
    ``SequentialEvaluator`` does, and so does a rung of multi-fidelity (it saves and resumes a
    training state of its own). Weight reuse (``ga.weights``) is not supported."""

    def __init__(self, data: PreparedData, context: TrainingContext, *, max_group_size: int = 16) -> None:
        if context.weights != "none":
            raise ValueError(f"the population evaluator trains from scratch only, not with weights={context.weights!r}")
        super().__init__(context, None)
        self.max_group_size = max_group_size
        self.train_split = data.load("train").to(training_device())
        self.val_split = data.load("val").to(training_device())

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        for positions in plan_groups(proposals, self.max_group_size):
            for position in positions:
                if on_start is not None:
                    on_start(position)
            yield from self._train(proposals, positions)

    def _train(self, proposals: Sequence[Proposal], positions: list[int]) -> Iterator[tuple[int, EvaluationRecord]]:
        if len(positions) > 1 and self._vectorisable(proposals[positions[0]]):
            try:
                members, seconds = train_group(proposals, positions, self.context, self.train_split, self.val_split)
            except Exception:  # noqa: BLE001 - the group as a whole failed (out of memory, ...): one at a time
                pass
            else:
                epochs = [max(len(m.history), 1) for m in members]
                for member, share in zip(members, epochs):
                    yield member.position, member_record(member, seconds * share / sum(epochs), self.context.task)
                return
        for position in positions:
            record, _ = train_proposal(proposals[position], self.context, self.train_split, self.val_split, [])
            yield position, record

    def _vectorisable(self, proposal: Proposal) -> bool:
        if proposal.resume is not None:
            return False  # a rung of multi-fidelity saves or resumes its own training state: trained alone
        if optimizer_of(proposal.genome, self.context.train_config) != "sgd" or \
                self.context.train_config.lr_schedule != "step":
            return False  # the fused update is SGD with StepLR: Adam, AdamW and other schedules train one by one
        build = self.context.network_builder()
        try:
            return not has_batch_norm(build(proposal.genome))
        except Exception:  # noqa: BLE001 - an unbuildable genome fails in the member-by-member path
            return False
