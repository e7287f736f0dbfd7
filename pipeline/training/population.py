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

A rung of multi-fidelity trains fused too: members that share a network and start at the same epoch
continue from their saved training states (weights, momentum, learning rate, history) and each
leaves a training state in the format a fit alone saves (a Lightning checkpoint), so any later rung
may resume it alone or in a group.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pipeline.config.loading import TRAINING_GENES
from pipeline.data import PreparedData, TensorBatches, TensorSplit
from pipeline.evaluation import EvaluationRecord, Proposal, Resume, StartCallback
from pipeline.space import genome_hash, genome_seed
from pipeline.task import Task
from pipeline.training.evaluator import (
    TrainingContext,
    _DriverSide,
    first_recorded_epoch,
    train_proposal,
    trained_epochs,
)
from pipeline.training.device import training_device
from pipeline.training.fit import fit_genome, make_trainer
from pipeline.training.lit_module import EPOCH_METRICS_KEY, optimizer_of, rescaled_rate

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
    # Its momentum buffers (parameter order) and learning rate when it left: what a rung's state keeps.
    momentum_state: list[torch.Tensor] | None = None
    lr_now: float | None = None


@dataclass
class SavedStart:
    """A member's start from a rung's saved training state (``read_training_state``)."""

    weights: dict[str, torch.Tensor]  # the network's state dict
    momentum: list[torch.Tensor | None]  # SGD's momentum buffer per parameter, in parameter order
    lr: float  # the learning rate its next epoch trains with
    history: list[dict[str, float]]  # the epochs trained so far
    initial_lr: float  # the learning-rate gene it was trained with (its schedule's base)


def read_training_state(path: Path) -> SavedStart:
    """The parts of a fit's saved training state (``fit_genome(save_to=...)``) a population resumes."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("network."): v for k, v in saved["state_dict"].items() if k.startswith("network.")}
    optimizer = saved["optimizer_states"][0]
    count = len(optimizer["param_groups"][0]["params"])
    momentum = [optimizer["state"].get(i, {}).get("momentum_buffer") for i in range(count)]
    group = optimizer["param_groups"][0]
    return SavedStart(weights, momentum, float(group["lr"]), list(saved[EPOCH_METRICS_KEY]),
                      float(group.get("initial_lr", group["lr"])))  # fmt: skip


def write_training_state(path: Path, template: dict, member: Member, batches: int, val_batches: int) -> None:
    """Save ``member``'s training state as a fit alone saves it: ``template`` (a fit of the same
    network, batch size and optimiser) with this member's weights, momentum, learning rate, schedule,
    history and epoch counters, so ``fit_genome(resume_from=path)`` or a later group resumes it."""
    epochs = len(member.history)
    saved = copy.deepcopy(template)
    saved["state_dict"] = {f"network.{k}": v for k, v in (member.state or {}).items()}
    saved["epoch"], saved["global_step"] = epochs, epochs * batches
    loop = saved["loops"]["fit_loop"]
    loop["epoch_loop.state_dict"]["_batches_that_stepped"] = epochs * batches
    for counters in (loop["epoch_loop.batch_progress"], loop["epoch_loop.automatic_optimization.optim_progress"]
                     ["optimizer"]["step"], loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
                     ["zero_grad"]):  # fmt: skip
        counters["total"] = {k: epochs * batches for k in counters["total"]}
        counters["current"] = {k: batches for k in counters["current"]}
    for counters in (loop["epoch_progress"], loop["epoch_loop.scheduler_progress"]):
        counters["total"] = {k: epochs for k in counters["total"]}
    loop["epoch_progress"]["current"] = {k: epochs for k in loop["epoch_progress"]["current"]}
    loop["epoch_loop.scheduler_progress"]["current"] = {k: 1 for k in loop["epoch_loop.scheduler_progress"]["current"]}
    validation = loop["epoch_loop.val_loop.batch_progress"]  # the last epoch's validation batches
    validation["total"] = {k: val_batches for k in validation["total"]}
    validation["current"] = {k: val_batches for k in validation["current"]}
    optimizer = saved["optimizer_states"][0]
    group = optimizer["param_groups"][0]
    group.update(lr=member.lr_now, initial_lr=member.lr, momentum=member.momentum, weight_decay=member.weight_decay)
    if member.momentum > 0 and member.momentum_state is not None:
        optimizer["state"] = {i: {"momentum_buffer": b} for i, b in enumerate(member.momentum_state)}
    else:
        optimizer["state"] = {}  # torch's SGD keeps no buffer without momentum
    scheduler = saved["lr_schedulers"][0]
    scheduler.update(base_lrs=[member.lr], last_epoch=epochs, _step_count=epochs + 1, _last_lr=[member.lr_now])
    saved[EPOCH_METRICS_KEY] = list(member.history)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(saved, partial)
    partial.replace(path)  # whole or absent, as a fit alone saves it


class _MemberBatches:
    """Each member's own shuffled batches, step by step: at step ``i`` of epoch ``e`` member ``k``
    gets the ``i``-th batch of ``torch.randperm(n, generator=Generator(seed_k + e))`` (as
    ``TensorBatches`` gives it alone)."""

    def __init__(self, split: TensorSplit, batch_size: int, seeds: Sequence[int], first_epoch: int = 0) -> None:
        self.split, self.batch_size, self.seeds = split, batch_size, list(seeds)
        self._epoch = first_epoch  # a resumed rung continues the members' batch orders

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

    def __init__(self, networks: list[nn.Module], members: list[Member], train: TensorSplit, context: TrainingContext,
                 first_epoch: int = 0, momentum: list[list[torch.Tensor | None]] | None = None):  # fmt: skip
        super().__init__()
        self.first_epoch = first_epoch  # the epochs the members trained before this fit (a resumed rung)
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
        for index, buffers in enumerate(momentum or []):  # a resumed member's saved buffers
            for key, buffer in zip(self.params, buffers):
                if buffer is not None:
                    self.momentum_buffers[key][index] = buffer
        # Double precision, as torch.optim holds them (Python floats); cast where they meet the weights.
        # The rate each member's next epoch trains with: its gene's, or a resumed rung's scheduled rate.
        self.lr = torch.tensor([m.lr if m.lr_now is None else m.lr_now for m in members], dtype=torch.float64)
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
    def epoch(self) -> int:
        """The members' epoch, counted from their first (a resumed rung's fit starts past 0)."""
        return self.first_epoch + self.current_epoch

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
                why = f"training loss became {losses[k].item()} at epoch {self.epoch}, batch {batch_idx}"
                self.members[self.active[k]].failure = f"DivergedError: {why}"
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
                member.failure = f"DivergedError: validation loss became {val_loss} at epoch {self.epoch}"
                done.append(False)
                continue
            member.history.append({
                "train_loss": float(sums["train"][k] / max(float(sums["train_count"][k]), 1.0)),
                "val_loss": val_loss,
                self.task.val_key: float(sums["val_score"][k] / sums["val_count"][k]),
                "lr": float(self.lr[k]),
            })  # fmt: skip
            done.append(len(member.history) < member.epochs)
        # StepLR, as torch's chainable form computes it: multiplied at each step boundary (before the
        # members that are done leave, so a saved state holds the rate its next epoch trains with).
        if (self.first_epoch + self.current_epoch + 1) % self.lr_step_size == 0:
            self.lr = self.lr * self.lr_gamma
        self._keep(torch.tensor(done))
        if not self.active:
            self.trainer.should_stop = True

    def _keep(self, keep: torch.Tensor) -> None:
        """Members not kept leave the group: their weights are saved, their slices dropped."""
        keep = keep.to(torch.bool).cpu()
        for k in (~keep).nonzero().flatten().tolist():
            member = self.members[self.active[k]]
            member.state = {name: p[k].detach().cpu().clone() for name, p in {**self.params, **self.buffers_}.items()}
            member.momentum_state = [b[k].detach().cpu().clone() for b in self.momentum_buffers.values()]
            member.lr_now = float(self.lr[k])  # after the epoch's schedule step: the rate of its next epoch
        index = keep.nonzero().flatten().to(self.lr.device)
        self.active = [a for a, kept in zip(self.active, keep.tolist()) if kept]
        with torch.no_grad():
            self.params = {k: v.index_select(0, index).detach().requires_grad_(True) for k, v in self.params.items()}
            self.buffers_ = {k: v.index_select(0, index) for k, v in self.buffers_.items()}
            self.momentum_buffers = {k: v.index_select(0, index) for k, v in self.momentum_buffers.items()}
        self.lr, self.momentum, self.weight_decay = (
            t.index_select(0, index) for t in (self.lr, self.momentum, self.weight_decay)
        )
        self._sums = {k: v.index_select(0, index.to(v.device)) for k, v in self._sums.items()}

    def configure_optimizers(self) -> None:
        return None  # the fused update in training_step is the optimiser


def train_group(
    proposals: Sequence[Proposal],
    positions: Sequence[int],
    context: TrainingContext,
    train: TensorSplit,
    val: TensorSplit,
    starts: Mapping[int, SavedStart] | None = None,
    templates: dict[tuple, dict] | None = None,
) -> tuple[list[Member], float]:
    """Train the proposals at ``positions`` together; their members (history, failure, weights) and
    the seconds the group's fit took. Rungs of multi-fidelity (``proposal.resume``) train to their
    rung's epochs, from their saved states (all at the same epoch; ``starts`` by position when the
    caller has read them already), and save their states. ``templates`` keeps the state templates of
    earlier groups by ``group_key``, so a network trains its one-batch template once."""
    build = context.network_builder()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    members, networks, momentum = [], [], []
    for position in positions:
        proposal = proposals[position]
        genome, resume = proposal.genome, proposal.resume
        seed = genome_seed(context.study_seed, genome)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the initial weights it gets alone
            networks.append(build(genome))
        rates = (genome.get(name, getattr(context.train_config, name)) for name in ("momentum", "weight_decay"))
        member = Member(position, genome, seed, (resume and resume.epochs) or genome["epochs"], genome["learning_rate"],
                        *rates)  # fmt: skip
        start = (starts or {}).get(position)
        if start is None and resume and resume.resume_from:
            start = read_training_state(resume.resume_from)
        if start is not None:
            networks[-1].load_state_dict(start.weights)
            member.history, member.lr_now = list(start.history), rescaled_rate(start.lr, start.initial_lr, member.lr)
        momentum.append(start.momentum if start is not None else [])
        members.append(member)
    first_epoch = len(members[0].history)
    if any(len(m.history) != first_epoch for m in members):
        raise ValueError("the members of a group must start at the same epoch")
    seeds = [m.seed for m in members]
    module = PopulationModule(networks, members, train, context, first_epoch, momentum)
    trainer = make_trainer(max(m.epochs for m in members) - first_epoch)
    batches = _MemberBatches(train, members[0].genome["batch_size"], seeds, first_epoch)
    val_batches = TensorBatches(val, context.train_config.eval_batch_size, shuffle=False)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(min(seeds))  # the dropout and noise draws of the group
        trainer.fit(module, train_dataloaders=batches, val_dataloaders=val_batches)
    seconds = time.perf_counter() - started
    saving = [m for m in members if m.failure is None and m.history and _save_to(proposals[m.position])]
    if saving:
        first = proposals[saving[0].position]
        templates = {} if templates is None else templates
        key = group_key(first.genome)
        if key not in templates:
            templates[key] = _state_template(first, context, train, val)
        template = templates[key]
        for member in saving:
            write_training_state(_save_to(proposals[member.position]), template, member, len(batches), len(val_batches))
    return members, seconds


def _save_to(proposal: Proposal) -> Path | None:
    return proposal.resume.save_to if proposal.resume is not None else None


def _state_template(proposal: Proposal, context: TrainingContext, train: TensorSplit, val: TensorSplit) -> dict:
    """A training state as a fit alone saves it, for the group's network, batch size and optimiser:
    one epoch of one batch (what ``write_training_state`` fills with each member's own state)."""
    genome = {**proposal.genome, "epochs": 1}
    one_batch = TensorSplit(train.images[: genome["batch_size"]], train.labels[: genome["batch_size"]])
    one_row = TensorSplit(val.images[:1], val.labels[:1])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "template.ckpt"
        fit_genome(genome, seed=0, build_network=context.network_builder(), train_split=one_batch, val_split=one_row,
                   train_config=context.train_config, task=context.task, save_to=path)  # fmt: skip
        return torch.load(path, map_location="cpu", weights_only=True)


def plan_groups(
    proposals: Sequence[Proposal], max_size: int, start_epochs: Mapping[int, int] | None = None
) -> list[list[int]]:
    """Positions of the proposals that train together: by architecture, batch size and optimiser (and
    for rungs of multi-fidelity, ``start_epochs``: the epoch each resumes at, 0 when absent), in order
    of first appearance, at most ``max_size`` to a group."""
    start_epochs = start_epochs or {}
    buckets: dict[tuple, list[int]] = {}
    for position, proposal in enumerate(proposals):
        buckets.setdefault((*group_key(proposal.genome), start_epochs.get(position, 0)), []).append(position)
    return [positions[i : i + max_size] for positions in buckets.values() for i in range(0, len(positions), max_size)]


def member_record(member: Member, seconds: float, task: Task, resume: Resume | None = None) -> EvaluationRecord:
    genome = member.genome
    if member.failure is not None or len(member.history) <= first_recorded_epoch(resume):
        reason = member.failure or "left the group without a finished epoch"
        return EvaluationRecord.failed(genome, member.seed, reason, seconds)
    last = member.history[-1]
    return EvaluationRecord(
        genome, genome_hash(genome), member.seed, "finished", last[task.val_key], last["val_loss"],
        last["train_loss"], seconds, trained_epochs(member.history, resume), maximize=task.maximize,
        first_epoch=first_recorded_epoch(resume),
    )  # fmt: skip


class PopulationEvaluator(_DriverSide):
    """Trains each group of a batch (``plan_groups``) in one fit, here; a group of one, a network
    with BatchNorm, or a group whose fit fails as a whole trains member by member as
    ``SequentialEvaluator`` does. Rungs of multi-fidelity train in groups too (``train_group``),
    except with early stopping. Weight reuse (``ga.weights``) is not supported."""

    def __init__(self, data: PreparedData, context: TrainingContext, *, max_group_size: int = 16) -> None:
        if context.weights != "none":
            raise ValueError(f"the population evaluator trains from scratch only, not with weights={context.weights!r}")
        super().__init__(context, None)
        self.max_group_size = max_group_size
        self.templates: dict[tuple, dict] = {}  # a network's training-state template, made once (fused rungs)
        self.train_split = data.load("train").to(training_device())
        self.val_split = data.load("val").to(training_device())

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        # Resumed rungs' saved states, read once: their epochs group them, their contents start them.
        starts = {position: read_training_state(p.resume.resume_from) for position, p in enumerate(proposals)
                  if p.resume is not None and p.resume.resume_from is not None}  # fmt: skip
        start_epochs = {position: len(start.history) for position, start in starts.items()}
        for positions in plan_groups(proposals, self.max_group_size, start_epochs):
            for position in positions:
                if on_start is not None:
                    on_start(position)
            yield from self._train(proposals, positions, starts)

    def _train(
        self, proposals: Sequence[Proposal], positions: list[int], starts: Mapping[int, SavedStart]
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        if len(positions) > 1 and self._vectorisable(proposals[positions[0]]):
            try:
                members, seconds = train_group(proposals, positions, self.context, self.train_split, self.val_split,
                                               starts, self.templates)  # fmt: skip
            except Exception:  # noqa: BLE001 - the group as a whole failed (out of memory, ...): one at a time
                pass
            else:
                epochs = [max(len(m.history), 1) for m in members]
                for member, share in zip(members, epochs):
                    yield member.position, member_record(member, seconds * share / sum(epochs), self.context.task,
                                                         proposals[member.position].resume)  # fmt: skip
                return
        for position in positions:
            record, _ = train_proposal(proposals[position], self.context, self.train_split, self.val_split, [])
            yield position, record

    def _vectorisable(self, proposal: Proposal) -> bool:
        if "noise_level" in proposal.genome:
            return False  # the fused fit adds one noise level to every member: a gene of its own trains alone
        if proposal.resume is not None and self.context.train_config.early_stopping is not None:
            return False  # the fused fit has no early stopping, whose state a rung would have to carry on
        if (
            optimizer_of(proposal.genome, self.context.train_config) != "sgd"
            or self.context.train_config.lr_schedule != "step"
        ):
            return False  # the fused update is SGD with StepLR: Adam, AdamW and other schedules train one by one
        build = self.context.network_builder()
        try:
            return not has_batch_norm(build(proposal.genome))
        except Exception:  # noqa: BLE001 - an unbuildable genome fails in the member-by-member path
            return False
