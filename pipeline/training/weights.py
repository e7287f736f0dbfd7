"""Reuse of training already paid for: children start from their parents' trained weights.

`ga.weights` picks the rule:

- ``none``: every child trains from its own fresh initialisation.
- ``inherit``: weight inheritance as in large-scale evolution (Real et al., 2017): a tensor is
  copied from the parent only where its shape and dtype match exactly; nothing is combined.
- ``merge``: weight merge (Gonzalez & Varrun, 2021): each parent's tensor is cropped or
  zero-padded to the child's shape and the parents are averaged, whatever their widths.

Everything here is pure apart from `WeightStore`, which keeps each evaluated individual's
trained state dict on disk by genome hash so later generations can find it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor


def crop_or_pad(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A new tensor of `shape`: each dimension cropped (leading indices kept) or zero-padded at the end."""
    shape = tuple(int(size) for size in shape)
    if tensor.dim() != len(shape):
        raise ValueError(
            f"cannot crop or pad a tensor of shape {tuple(tensor.shape)} to shape {shape}: "
            "the number of dimensions differs"
        )
    result = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    # The block both shapes share, anchored at index 0 in every dimension.
    overlap = tuple(slice(0, min(have, want)) for have, want in zip(tensor.shape, shape))
    result[overlap] = tensor.detach()[overlap]
    return result


def inherit_weights(child: Mapping[str, Tensor], parent: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The child's state dict with every tensor whose shape and dtype match taken from the parent.

    Returns (new state dict, keys taken from the parent). All tensors are fresh clones, so
    training the child never writes into a parent's weights (nor the other way round).
    """
    result: dict[str, Tensor] = {}
    taken: list[str] = []
    for key, own in child.items():
        theirs = parent.get(key)
        if theirs is not None and theirs.shape == own.shape and theirs.dtype == own.dtype:
            result[key] = theirs.detach().clone().to(own.device)
            taken.append(key)
        else:
            result[key] = own.detach().clone()
    return result, taken


def merge_weights(
    child: Mapping[str, Tensor], parents: Sequence[Mapping[str, Tensor]]
) -> tuple[dict[str, Tensor], list[str]]:
    """The child's state dict with each floating tensor replaced by the mean of its parents' tensors.

    Each parent holding the key with a floating tensor of the same number of dims contributes
    that tensor cropped/zero-padded to the child's shape; zeros from padding count in the mean.
    Keys no parent can contribute to, and non-floating tensors (BatchNorm's
    num_batches_tracked), keep the child's. Returns (new state dict, merged keys).
    """
    result: dict[str, Tensor] = {}
    merged: list[str] = []
    for key, own in child.items():
        contributions = (
            []
            if not own.is_floating_point()
            else [
                crop_or_pad(parent[key], tuple(own.shape)).to(dtype=own.dtype, device=own.device)
                for parent in parents
                if key in parent and parent[key].is_floating_point() and parent[key].dim() == own.dim()
            ]
        )
        if contributions:
            result[key] = torch.stack(contributions).mean(dim=0)
            merged.append(key)
        else:
            result[key] = own.detach().clone()
    return result, merged


def transferable_fraction(child: Mapping[str, Tensor], taken_keys: Sequence[str]) -> float:
    """Fraction of the child's floating-point elements lying in `taken_keys`; for logging only.

    A merged key counts whole even where part of it is zero padding.
    """
    taken = set(taken_keys)
    total = sum(tensor.numel() for tensor in child.values() if tensor.is_floating_point())
    if total == 0:
        return 0.0
    from_parents = sum(tensor.numel() for key, tensor in child.items() if key in taken and tensor.is_floating_point())
    return from_parents / total


class WeightStore:
    """Trained weights of each evaluated individual, by genome hash, so children can start from them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, genome_hash: str) -> Path:
        # The hash becomes a file name; a separator in it would write outside the folder.
        if not genome_hash or "/" in genome_hash or os.sep in genome_hash or genome_hash in (".", ".."):
            raise ValueError(f"not a usable genome hash: {genome_hash!r}")
        return self.folder / f"{genome_hash}.pt"

    def save(self, genome_hash: str, state_dict: Mapping[str, Tensor]) -> None:
        """Write CPU copies atomically (temp file + os.replace), so a kill never leaves half a file."""
        target = self.path(genome_hash)
        # clone() so a view is saved alone rather than with the whole storage behind it.
        payload = {key: tensor.detach().cpu().clone() for key, tensor in state_dict.items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        # A unique temp name in the same folder: same filesystem for the rename, and two writers never collide.
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{genome_hash}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, genome_hash: str) -> dict[str, Tensor] | None:
        """The stored state dict on CPU, or None when this genome was never saved."""
        target = self.path(genome_hash)
        if not target.is_file():
            return None
        return dict(torch.load(target, map_location="cpu", weights_only=True))

    def __contains__(self, genome_hash: object) -> bool:
        if not isinstance(genome_hash, str):
            return False
        try:
            return self.path(genome_hash).is_file()
        except ValueError:
            return False
