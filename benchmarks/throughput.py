"""Evaluations per hour: the naive way against ours, the same work, in one process and one run.

Work: ``--individuals`` genomes of the default search space (params.yaml), each trained for
``--epochs`` epoch(s) on ``--train-size`` FashionMNIST training images and validated on
``--val-size`` test images.

- naive: torchvision's ``FashionMNIST`` dataset with ``ToTensor``/``Normalize`` per sample through a
  ``DataLoader``, a default Lightning ``Trainer`` per individual (progress bar, checkpointing,
  sanity check, model summary, logger), one after another;
- ours: the pipeline's evaluator path (``pipeline.training.fit.fit_genome``): the split held as
  normalised tensors (on the device), batches by indexing, a Trainer without per-individual
  overhead.

It prints a table and writes JSON with the device, evaluations per hour, training samples per
second and peak memory of each way, their ratio, the network's FLOPs per training sample and the
fraction of the device's measured matmul peak that training reaches.

    python benchmarks/throughput.py --device cpu --out benchmarks/throughput_cpu.json
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

from pipeline.config import TrainConfig, load_config  # noqa: E402
from pipeline.data import FASHION_MNIST_FILES, TensorSplit, locate_fashion_mnist, read_idx  # noqa: E402
from pipeline.training.fit import fit_genome  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.training.lit_module import LitClassifier  # noqa: E402
from pipeline.training.models import build_network, network_builder  # noqa: E402
from pipeline.space import SearchSpace, genome_seed  # noqa: E402

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
        trainer = pl.Trainer(
            accelerator=device, devices=1, max_epochs=genome["epochs"], default_root_dir=str(log_dir)
        )
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
    with tempfile.TemporaryDirectory() as scratch:
        root = raw_fashion_mnist(Path(scratch))
        seconds, peak = timed(
            args.device, lambda: run_naive(genomes, root, args.train_size, args.val_size, args.device, Path(scratch) / "logs")
        )
    results["naive"] = _figures(len(genomes), trained_samples, seconds, peak)
    splits = tensor_splits(args.train_size, args.val_size)
    seconds, peak = timed(args.device, lambda: run_ours(genomes, splits, args.device))
    results["ours"] = _figures(len(genomes), trained_samples, seconds, peak)
    results["ratio"] = results["ours"]["evals_per_hour"] / results["naive"]["evals_per_hour"]
    flops = flops_per_training_sample(args.device)
    peak_flops = measured_peak_flops(args.device)
    results["flops_per_training_sample"] = flops
    results["device_peak_flops_measured"] = peak_flops
    for way in ("naive", "ours"):
        results[way]["fraction_of_peak"] = flops * results[way]["train_samples_per_second"] / peak_flops
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


def print_table(results: dict[str, Any]) -> None:
    print(f"device: {results['device']}; work: {results['work']}")
    print(f"{'':8} {'seconds':>9} {'evals/hour':>11} {'train samples/s':>16} {'peak MB':>9} {'of peak':>8}")
    for way in ("naive", "ours"):
        r = results[way]
        print(f"{way:8} {r['seconds']:9.1f} {r['evals_per_hour']:11.0f} {r['train_samples_per_second']:16.0f} "
              f"{r['peak_memory_mb']:9.0f} {r['fraction_of_peak']:8.2%}")  # fmt: skip
    print(f"ratio (ours / naive evaluations per hour): {results['ratio']:.2f}x; "
          f"network: {results['flops_per_training_sample'] / 1e6:.1f} MFLOP per training sample; "
          f"measured matmul peak {results['device_peak_flops_measured'] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
