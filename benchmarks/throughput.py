"""Evaluations per hour: the naive way, ours, the bare PyTorch loop and populations trained at once,
on the same work, in one process and one run.

Work: ``--individuals`` genomes of the default search space (params.yaml), each trained for
``--epochs`` epoch(s) on ``--train-size`` FashionMNIST training images and validated on
``--val-size`` test images.

- naive: torchvision's ``FashionMNIST`` dataset with ``ToTensor``/``Normalize`` per sample through a
  ``DataLoader``, a default Lightning ``Trainer`` per individual (progress bar, checkpointing,
  sanity check, model summary, logger), one after another;
- ours: the pipeline's evaluator path (``pipeline.training.fit.fit_genome``): the split held as
  normalised tensors (on the device), batches by indexing, a Trainer without per-individual
  overhead;
- bare: the best plain PyTorch loop of the same work (training and per-epoch validation on the
  in-memory tensors, batches by indexing, SGD + StepLR), no Lightning, in the default memory
  layout and in ``channels_last``: the rate an evaluator can approach;
- population (``--group-sizes``): ``pipeline.training.population`` trains the genomes in groups of
  that size at once (stacked parameters under ``vmap``, one fused SGD update), against the same
  genomes trained one after another by our sequential evaluator and by the bare loop; with the
  studies' network and a small one (8/16 channels, 32 hidden units). All genomes of this part
  share one batch size (``--population-batch-size``), so that every group is full.

It prints a table and writes JSON with the device, evaluations per hour, training samples per
second and peak memory of each way, their ratio, the network's FLOPs per training sample and the
fraction of the device's measured matmul peak that training reaches.

    python benchmarks/throughput.py --device cpu --out benchmarks/throughput_cpu.json
    python benchmarks/throughput.py --device cpu --modes population --group-sizes 4 8 16 --out ...
"""

from __future__ import annotations

import argparse
import gzip
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402

from pipeline.config import ModelConfig, TrainConfig, load_config  # noqa: E402
from pipeline.data import TensorSplit, locate_fashion_mnist, read_idx  # noqa: E402
from pipeline.training.fit import fit_genome  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.training.lit_module import LitClassifier  # noqa: E402
from pipeline.training.models import build_network, network_builder  # noqa: E402
from pipeline.space import SearchSpace, genome_seed  # noqa: E402
from pipeline.evaluation import Proposal  # noqa: E402
from pipeline.training.evaluator import TrainingContext  # noqa: E402
from pipeline.training.population import train_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# FashionMNIST's training-set pixel statistics (as torchvision examples use them).
MEAN, STD = 0.2860, 0.3530


class PeakMemory:
    """Peak device memory (CUDA) or peak resident set size above the start (CPU) while inside."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._base = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def benchmark_genomes(count: int, epochs: int, seed: int) -> list[dict]:
    """``count`` genomes of the default space, each trained for ``epochs`` epochs."""
    space = SearchSpace.from_config(load_config(ROOT / "params.yaml").space)
    rng = np.random.default_rng(seed)
    return [{**space.sample(rng), "epochs": epochs} for _ in range(count)]


def raw_fashion_mnist(folder: Path) -> Path:
    """A torchvision-style root (``FashionMNIST/raw/*-ubyte``) made from the local IDX files."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in locate_fashion_mnist(None, folder / "download").values():
        target = raw / path.name.removesuffix(".gz")
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        else:
            shutil.copy(path, target)
    return folder


def run_naive(genomes: list[dict], root: Path, train_size: int, val_size: int, device: str, log_dir: Path) -> None:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train = Subset(datasets.FashionMNIST(str(root), train=True, transform=transform), range(train_size))
    val = Subset(datasets.FashionMNIST(str(root), train=False, transform=transform), range(val_size))
    model_config = load_config(ROOT / "params.yaml").model
    for genome in genomes:
        pl.seed_everything(genome_seed(0, genome), verbose=False)
        module = LitClassifier(
            build_network(model_config, (1, 28, 28), 10),
            learning_rate=genome["learning_rate"], momentum=genome["momentum"],
            weight_decay=genome["weight_decay"],
        )  # fmt: skip
        trainer = pl.Trainer(accelerator=device, devices=1, max_epochs=genome["epochs"], default_root_dir=str(log_dir))
        trainer.fit(
            module,
            DataLoader(train, batch_size=genome["batch_size"], shuffle=True),
            DataLoader(val, batch_size=genome["batch_size"]),
        )


def run_ours(genomes: list[dict], splits: dict[str, TensorSplit], device: str) -> None:
    build = network_builder("hyperparameters", load_config(ROOT / "params.yaml").model, (1, 28, 28), 10)
    for genome in genomes:
        fit_genome(
            genome, seed=genome_seed(0, genome), build_network=build, train_split=splits["train"],
            val_split=splits["val"], train_config=TrainConfig(),
        )  # fmt: skip


def bare_fit(
    genome: dict, splits: dict[str, TensorSplit], model: ModelConfig, device: str, channels_last: bool
) -> None:
    """One evaluation as plain PyTorch: the same network, seed, optimiser, schedule, batches and
    per-epoch validation as ``fit_genome``, without Lightning."""
    seed = genome_seed(0, genome)
    torch.manual_seed(seed)
    network = build_network(model, (1, 28, 28), 10).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=layout)
    train_images = splits["train"].images.to(device).contiguous(memory_format=layout)
    train_labels = splits["train"].labels.to(device)
    val_images = splits["val"].images.to(device).contiguous(memory_format=layout)
    val_labels = splits["val"].labels.to(device)
    optimiser = torch.optim.SGD(network.parameters(), lr=genome["learning_rate"], momentum=genome["momentum"],
                                weight_decay=genome["weight_decay"])  # fmt: skip
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=1, gamma=0.7)
    n, batch = len(train_labels), genome["batch_size"]
    for epoch in range(genome["epochs"]):
        network.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).to(device)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(network(train_images[index]), train_labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
        network.eval()
        with torch.inference_mode():
            for start in range(0, len(val_labels), 1000):
                logits = network(val_images[start : start + 1000])
                torch.nn.functional.cross_entropy(logits, val_labels[start : start + 1000])
                (logits.argmax(1) == val_labels[start : start + 1000]).float().mean().item()


def run_bare(genomes: list[dict], splits: dict[str, TensorSplit], device: str, channels_last: bool,
             model: ModelConfig | None = None) -> None:  # fmt: skip
    model = model or load_config(ROOT / "params.yaml").model
    for genome in genomes:
        bare_fit(genome, splits, model, device, channels_last)


def run_sequential(genomes: list[dict], splits: dict[str, TensorSplit], model: ModelConfig) -> None:
    build = network_builder("hyperparameters", model, (1, 28, 28), 10)
    for genome in genomes:
        fit_genome(genome, seed=genome_seed(0, genome), build_network=build, train_split=splits["train"],
                   val_split=splits["val"], train_config=TrainConfig())  # fmt: skip


def run_population(genomes: list[dict], splits: dict[str, TensorSplit], model: ModelConfig, group_size: int) -> None:
    context = TrainingContext("hyperparameters", model, TrainConfig(), 0, (1, 28, 28), 10)
    proposals = [Proposal(g, f"g{i}") for i, g in enumerate(genomes)]
    for start in range(0, len(proposals), group_size):
        train_group(proposals, list(range(start, min(start + group_size, len(proposals)))), context,
                    splits["train"], splits["val"])  # fmt: skip


NETWORKS = {"studies": None, "small": ModelConfig(conv_channels=[8, 16], hidden_units=32)}


def population_part(args: argparse.Namespace, splits: dict[str, TensorSplit], genomes: list[dict]) -> dict[str, Any]:
    """Sequential (ours), bare and population at each group size, per network, on genomes that share
    one batch size."""
    same_batch = [{**g, "batch_size": args.population_batch_size} for g in genomes]
    trained = sum(g["epochs"] for g in same_batch) * args.train_size
    part: dict[str, Any] = {"batch_size": args.population_batch_size}
    for name, model in NETWORKS.items():
        model = model or load_config(ROOT / "params.yaml").model
        rows: dict[str, Any] = {}
        seconds, peak = timed(args.device, lambda: run_sequential(same_batch, splits, model))
        rows["sequential"] = _figures(len(same_batch), trained, seconds, peak)
        seconds, peak = timed(args.device, lambda: run_bare(same_batch, splits, args.device, args.channels_last_bare,
                                                            model))  # fmt: skip
        rows["bare"] = _figures(len(same_batch), trained, seconds, peak)
        for size in args.group_sizes:
            seconds, peak = timed(args.device, lambda: run_population(same_batch, splits, model, size))
            rows[f"population_{size}"] = _figures(len(same_batch), trained, seconds, peak)
            rows[f"population_{size}"]["vs_sequential"] = rows["sequential"]["seconds"] / seconds
            rows[f"population_{size}"]["vs_bare"] = rows["bare"]["seconds"] / seconds
        part[name] = rows
    return part


def tensor_splits(train_size: int, val_size: int) -> dict[str, TensorSplit]:
    files = locate_fashion_mnist(None, Path(tempfile.gettempdir()) / "evohpo-download")

    def split(images_key: str, labels_key: str, size: int) -> TensorSplit:
        images = torch.from_numpy(read_idx(files[images_key])[:size]).float().div_(255).sub_(MEAN).div_(STD)
        return TensorSplit(images.unsqueeze(1), torch.from_numpy(read_idx(files[labels_key])[:size]).long())

    return {
        "train": split("train_images", "train_labels", train_size),
        "val": split("test_images", "test_labels", val_size),
    }


def flops_per_training_sample(device: str, batch: int = 64) -> float:
    """Forward + backward FLOPs of the default network per image (PyTorch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    network = build_network(load_config(ROOT / "params.yaml").model, (1, 28, 28), 10).to(device)
    images = torch.randn(batch, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(network(images), labels).backward()
    return counter.get_total_flops() / batch


def measured_peak_flops(device: str, size: int = 2048, repeats: int = 10) -> float:
    """FP32 matmul FLOP/s this device reaches (the yardstick for training's share of the peak)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def timed(device: str, work: Callable[[], None]) -> tuple[float, int]:
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds, memory.peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--individuals", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--val-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=["naive", "ours", "bare", "population"],
                        default=["naive", "ours", "bare"])  # fmt: skip
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--population-batch-size", type=int, default=64)
    parser.add_argument("--channels-last-bare", action="store_true", help="population part: bare loop in channels_last")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    genomes = benchmark_genomes(args.individuals, args.epochs, args.seed)
    trained_samples = sum(g["epochs"] for g in genomes) * args.train_size
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "work": {"individuals": len(genomes), "epochs": args.epochs, "train_size": args.train_size,
                 "val_size": args.val_size, "trained_samples": trained_samples},
        "torch": torch.__version__,
    }  # fmt: skip
    if "naive" in args.modes:
        with tempfile.TemporaryDirectory() as scratch:
            root = raw_fashion_mnist(Path(scratch))
            seconds, peak = timed(args.device, lambda: run_naive(genomes, root, args.train_size, args.val_size,
                                                                 args.device, Path(scratch) / "logs"))  # fmt: skip
        results["naive"] = _figures(len(genomes), trained_samples, seconds, peak)
    splits = tensor_splits(args.train_size, args.val_size)
    if "ours" in args.modes:
        seconds, peak = timed(args.device, lambda: run_ours(genomes, splits, args.device))
        results["ours"] = _figures(len(genomes), trained_samples, seconds, peak)
    if "bare" in args.modes:
        for layout in ("contiguous", "channels_last"):
            seconds, peak = timed(
                args.device, lambda: run_bare(genomes, splits, args.device, layout == "channels_last")
            )
            results[f"bare_{layout}"] = _figures(len(genomes), trained_samples, seconds, peak)
        results["bare"] = max((results[f"bare_{k}"] for k in ("contiguous", "channels_last")),
                              key=lambda r: r["evals_per_hour"])  # fmt: skip
    if "naive" in results and "ours" in results:
        results["ratio"] = results["ours"]["evals_per_hour"] / results["naive"]["evals_per_hour"]
    if "bare" in results and "ours" in results:
        results["ours_vs_bare"] = results["ours"]["evals_per_hour"] / results["bare"]["evals_per_hour"]
    flops = flops_per_training_sample(args.device)
    peak_flops = measured_peak_flops(args.device)
    results["flops_per_training_sample"] = flops
    results["device_peak_flops_measured"] = peak_flops
    for way in WAYS:
        if way in results:
            results[way]["fraction_of_peak"] = flops * results[way]["train_samples_per_second"] / peak_flops
    if "population" in args.modes:
        results["population"] = population_part(args, splits, genomes)
    print_table(results)
    if args.out is not None:
        write_json(args.out, results)


def _figures(evaluations: int, samples: int, seconds: float, peak_bytes: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "evals_per_hour": evaluations / seconds * 3600,
        "train_samples_per_second": samples / seconds,  # validation included in the time, not the count
        "peak_memory_mb": peak_bytes / 2**20,
    }


WAYS = ("naive", "ours", "bare_contiguous", "bare_channels_last")


def print_table(results: dict[str, Any]) -> None:
    print(f"device: {results['device']}; work: {results['work']}")
    print(f"{'':19} {'seconds':>9} {'evals/hour':>11} {'train samples/s':>16} {'peak MB':>9} {'of peak':>8}")
    for way in WAYS:
        if way in results:
            r = results[way]
            print(f"{way:19} {r['seconds']:9.1f} {r['evals_per_hour']:11.0f} {r['train_samples_per_second']:16.0f} "
                  f"{r['peak_memory_mb']:9.0f} {r['fraction_of_peak']:8.2%}")  # fmt: skip
    if "ratio" in results:
        print(f"ratio (ours / naive evaluations per hour): {results['ratio']:.2f}x")
    if "ours_vs_bare" in results:
        print(f"ours / best bare loop: {results['ours_vs_bare']:.2f}x")
    print(
        f"network: {results['flops_per_training_sample'] / 1e6:.1f} MFLOP per training sample; "
        f"measured matmul peak {results['device_peak_flops_measured'] / 1e9:.0f} GFLOP/s"
    )
    population = results.get("population")
    if population:
        print(f"population part (every genome at batch size {population['batch_size']}):")
        print(f"{'network':8} {'way':16} {'seconds':>9} {'evals/hour':>11} {'vs sequential':>14} {'vs bare':>8}")
        for network in NETWORKS:
            for way, r in population[network].items():
                versus = (f"{r['vs_sequential']:13.2f}x {r['vs_bare']:7.2f}x" if "vs_sequential" in r
                          else f"{'':14} {'':8}")  # fmt: skip
                print(f"{network:8} {way:16} {r['seconds']:9.1f} {r['evals_per_hour']:11.0f} {versus}")


if __name__ == "__main__":
    main()
