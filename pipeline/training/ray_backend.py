"""The Ray backend (``execution.backend: ray``): evaluations as Ray tasks on a cluster.

The driver (the stage process) keeps the search, the checkpoint and MLflow; workers only train.
The data goes into Ray's object store once and reaches each node once; a child's parents' weights
travel with its task. A task whose worker dies is retried by Ray (``execution.ray.max_retries``),
then recorded FAILED with the reason; a cluster that goes away stops the stage with one line, and
``dvc repro`` resumes from the checkpoint. Ray is an optional extra (``requirements-ray.txt``):
imported only when this backend is used.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from pipeline.data import PreparedData, TensorSplit
from pipeline.errors import ExecutionError, first_line
from pipeline.evaluation import EvaluationRecord, Proposal, StartCallback
from pipeline.space import genome_seed
from pipeline.training.evaluator import TrainingContext, _DriverSide, train_proposal
from pipeline.training.device import training_device
from pipeline.training.weights import WeightStore

if TYPE_CHECKING:
    from pipeline.config.sections import RayConfig

# Seconds between checks that the cluster is still there while waiting for results.
POLL_SECONDS = 5.0


def _train_task(
    proposal: Proposal, context: TrainingContext, train: TensorSplit, val: TensorSplit, parents: list
) -> tuple[EvaluationRecord, Any]:
    """One evaluation on a Ray worker: the data to this worker's device, then the shared training."""
    device = training_device()
    return train_proposal(proposal, context, train.to(device), val.to(device), parents)


def _probe(address: str | None, timeout: float = 10.0) -> None:
    """Fail in seconds, not after Ray's minutes of reconnecting, when nothing listens at ``host:port``."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    with socket.create_connection((host, int(port)), timeout=timeout):
        pass


class RayEvaluator(_DriverSide):
    """Submits a batch's proposals as Ray tasks, as many at once as the cluster has room for, and
    yields each record as it finishes (the runner commits them in proposal order)."""

    def __init__(
        self, data: PreparedData, context: TrainingContext, weight_store: WeightStore | None = None, *,
        ray_config: RayConfig,
    ) -> None:  # fmt: skip
        import ray  # the optional extra: only a study that asks for Ray needs it

        if context.threads is None:  # as many torch threads as CPUs the task holds
            context = dataclasses.replace(context, threads=max(1, int(ray_config.num_cpus)))
        super().__init__(context, weight_store)
        self.ray = ray
        self.where = ray_config.address or "a local Ray instance"
        self._started_here = not ray.is_initialized()
        try:
            if self._started_here:
                _probe(ray_config.address)
                ray.init(address=ray_config.address, logging_level="ERROR", log_to_driver=False)
            cpus = ray.cluster_resources().get("CPU", 1.0)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever Ray raises (it may even exit), no cluster
            raise ExecutionError(
                f"Ray cluster at {self.where} is not reachable ({first_line(exc)}); start it (`ray start --head`), "
                "fix execution.ray.address, or set the same RAY_AUTH_TOKEN as the cluster"
            ) from None
        # As many tasks in flight as the cluster can run at once: "started" means a worker has it.
        self.window = max(1, int(cpus // ray_config.num_cpus))
        # The data enters the object store once; each node fetches it once, not once per evaluation.
        self._train = ray.put(data.load("train"))
        self._val = ray.put(data.load("val"))
        self._context = ray.put(context)
        self._task = ray.remote(_train_task).options(
            num_cpus=ray_config.num_cpus, num_gpus=ray_config.num_gpus, max_retries=ray_config.max_retries,
            retry_exceptions=False,
        )  # fmt: skip

    def evaluate(
        self, proposals: Sequence[Proposal], on_start: StartCallback | None = None
    ) -> Iterator[tuple[int, EvaluationRecord]]:
        ray = self.ray
        queue = list(range(len(proposals)))
        running: dict[Any, int] = {}
        try:
            while queue or running:
                while queue and len(running) < self.window:
                    position = queue.pop(0)
                    if on_start is not None:
                        on_start(position)
                    proposal = proposals[position]
                    ref = self._task.remote(
                        proposal, self._context, self._train, self._val, self.parent_states(proposal)
                    )
                    running[ref] = position
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                if not done:
                    self._check_cluster()
                    continue
                ref = done[0]
                position = running.pop(ref)
                yield position, self._result(ref, proposals[position])
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            raise

    @property
    def concurrency(self) -> int:
        """Evaluations trained at once: as many tasks as the cluster has room for."""
        return self.window

    def close(self) -> None:
        """Disconnect (a local instance this evaluator started stops with it; a cluster stays up)."""
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def _result(self, ref: Any, proposal: Proposal) -> EvaluationRecord:
        ray = self.ray
        try:
            record, state = ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.RayTaskError,
                ray.exceptions.ObjectLostError) as exc:  # fmt: skip
            # Ray has retried it max_retries times: the individual fails, the search goes on.
            seed = genome_seed(self.context.study_seed, proposal.genome)
            return EvaluationRecord.failed(proposal.genome, seed, f"Ray worker failed: {first_line(exc)}", 0.0)
        except ray.exceptions.RaySystemError as exc:
            raise self._gone(exc) from None
        return self.keep(record, state)

    def _check_cluster(self) -> None:
        try:
            alive = [node for node in self.ray.nodes() if node.get("Alive")]
        except Exception as exc:  # noqa: BLE001 - the head cannot be asked: it is gone
            raise self._gone(exc) from None
        if not alive:
            raise self._gone(RuntimeError("no node is alive"))

    def _gone(self, exc: BaseException) -> ExecutionError:
        return ExecutionError(
            f"the Ray cluster at {self.where} went away ({first_line(exc)}); restart it and run "
            "`dvc repro` again: the search resumes from its checkpoint"
        )
