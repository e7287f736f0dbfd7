"""Where training runs, without Lightning: a stage that only reuses finished work never imports it."""

from __future__ import annotations

import torch


def training_device() -> torch.device:
    """Where ``accelerator="auto"`` trains: the GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
