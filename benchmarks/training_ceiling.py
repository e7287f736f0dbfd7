"""The device's ceiling for this work: a bare training loop of the default network, no Lightning,
no data loading (random tensors already in memory), at several batch sizes and memory formats.

What no data path or trainer change can beat: it bounds the evaluations per hour any evaluator
can reach for the same network and precision.

    python benchmarks/training_ceiling.py --device cpu --out benchmarks/training_ceiling_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.jsonio import write_json  # noqa: E402
from pipeline.training.models import build_network  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def samples_per_second(batch_size: int, device: str, channels_last: bool, samples: int = 2000) -> float:
    torch.manual_seed(0)
    network = build_network(load_config(ROOT / "params.yaml").model, (1, 28, 28), 10).to(device)
    optimiser = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(network(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for _ in range(3):  # warm-up
        step()
    steps = max(5, samples // batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 256, 1024])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = {
        fmt: {bs: samples_per_second(bs, args.device, fmt == "channels_last") for bs in args.batch_sizes}
        for fmt in ("contiguous", "channels_last")
    }
    print(f"training samples/s, bare loop on {args.device} ({torch.get_num_threads()} threads)")
    print(f"{'batch size':>15} " + " ".join(f"{bs:>7}" for bs in args.batch_sizes))
    for fmt, by_batch in rows.items():
        print(f"{fmt:>15} " + " ".join(f"{v:7.0f}" for v in by_batch.values()))
    if args.out is not None:
        write_json(args.out, {"device": args.device, "threads": torch.get_num_threads(), "samples_per_second": rows})


if __name__ == "__main__":
    main()
