"""The second genome kind: variable-length network architectures (studies 002 and 003).

The space here: sampling, repair, diversity, phased growth; the layer operators are in
``pipeline.operators.layers``.

A genome is a plain, JSON-serialisable ``dict``: the optimiser genes in the order of
``space.optimiser`` (learning_rate, momentum, ...), then ``"conv"``, a list of conv genes (dicts
keyed by ``CONV_KEYS``), then ``"fc"``, a list of fully connected genes (keyed by ``FC_KEYS``)::

    {"learning_rate": 0.01, ..., "conv": [{"filters": 32, "kernel_size": 3, ...}, ...],
     "fc": [{"units": 128, "activation": "relu", "dropout": 0.25}, ...]}

Conv layer ``i`` is ``genome["conv"][i]``, counted from 0 with the phase prefix included (the
network's ``conv.<i>`` modules). Phased growth (study 003) fixes the first conv genes to the previous
phase's best (``ArchitectureSpace.prefix``); the operators here never change them.

numpy only: no torch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np

from pipeline.space.dimensions import ChoiceDimension, Genome, IntDimension, SearchSpace

if TYPE_CHECKING:  # annotations only: the config validates through this package, not the reverse
    from pipeline.config.sections import SpaceConfig

CONV_KEYS = (
    "filters",
    "kernel_size",
    "stride",
    "padding",
    "pool_size",
    "pool_type",
    "activation",
    "batch_norm",
    "skip",
)
FC_KEYS = ("units", "activation", "dropout")
LAYER_LISTS = ("conv", "fc")

Layer = dict[str, Any]
# Draws ``sample`` may spend looking for a genome repair can make trainable.
MAX_SAMPLE_TRIES = 100


class InfeasibleGenome(ValueError):
    """A genome no repair can make trainable; the message says why."""


# ----------------------------------------------------------------------------------------------------------------------
# Spatial arithmetic (shared with pipeline.models.ArchitectureNet)


def conv_block_output_size(size: int, gene: Mapping[str, Any]) -> int:
    """Side length after one conv block, with PyTorch's formulas; below 1 means it does not fit.

    conv: ``floor((size + 2*padding - kernel_size) / stride) + 1``; then, with a pool,
    ``floor((out - pool) / pool) + 1`` (kernel = stride = pool_size, no padding).
    """
    out = (size + 2 * gene["padding"] - gene["kernel_size"]) // gene["stride"] + 1
    pool = gene["pool_size"]
    if pool is None or out < 1:
        return out
    return (out - pool) // pool + 1


def conv_block_output_shape(hw: tuple[int, int], gene: Mapping[str, Any]) -> tuple[int, int]:
    """``(H, W)`` after one conv block (each side by ``conv_block_output_size``)."""
    return conv_block_output_size(hw[0], gene), conv_block_output_size(hw[1], gene)


def feature_shape(image_shape: Sequence[int], conv: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """``(C, H, W)`` after the conv blocks; raises ``InfeasibleGenome`` naming the first block whose
    output would be smaller than 1x1."""
    channels, hw = int(image_shape[0]), (int(image_shape[1]), int(image_shape[2]))
    for i, gene in enumerate(conv):
        out = conv_block_output_shape(hw, gene)
        if min(out) < 1:
            raise InfeasibleGenome(f"conv {i} does not fit its {_size(hw)} input (it would give {_size(out)})")
        channels, hw = gene["filters"], out
    return channels, hw[0], hw[1]


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


# ----------------------------------------------------------------------------------------------------------------------
# The space


@dataclass(frozen=True)
class ArchitectureSpace:
    """Variable-length architecture genomes: optimiser genes plus conv and fc gene lists."""

    kind: ClassVar[str] = "architecture"

    optimiser: SearchSpace  # fixed-length genes
    conv: SearchSpace  # one ChoiceDimension per CONV_KEYS entry
    fc: SearchSpace  # one ChoiceDimension per FC_KEYS entry
    conv_length: tuple[int, int]  # (min, max) conv genes after the prefix
    fc_length: tuple[int, int]
    image_shape: tuple[int, int, int]  # (C, H, W) of the input images
    # Conv genes fixed by earlier phases; not hashed (dicts are not hashable).
    prefix: tuple[dict, ...] = field(default=(), hash=False)

    @classmethod
    def from_config(cls, config: SpaceConfig, image_shape: Sequence[int]) -> ArchitectureSpace:
        """The space of ``config.genes`` (optimiser) and ``config.layers``; raises ``InfeasibleGenome``
        when even the smallest allowed network cannot fit ``image_shape``."""
        layers = config.layers
        space = cls(
            optimiser=SearchSpace.from_config(config),
            conv=SearchSpace(tuple(ChoiceDimension(k, tuple(getattr(layers.conv, k))) for k in CONV_KEYS)),
            fc=SearchSpace(tuple(ChoiceDimension(k, tuple(getattr(layers.fc, k))) for k in FC_KEYS)),
            conv_length=(layers.conv_layers.min, layers.conv_layers.max),
            fc_length=(layers.fc_layers.min, layers.fc_layers.max),
            image_shape=(int(image_shape[0]), int(image_shape[1]), int(image_shape[2])),
        )
        space._check_feasible()
        return space

    @property
    def names(self) -> list[str]:
        """Top-level keys of a genome, in order."""
        return [*self.optimiser.names, *LAYER_LISTS]

    def optimiser_genes(self, genome: Genome) -> Genome:
        return {name: genome[name] for name in self.optimiser.names}

    def sample(self, rng: np.random.Generator) -> Genome:
        """A random genome, repaired. Draw order: the optimiser genes (``optimiser.sample``), the
        conv count (uniform in ``conv_length``), each new conv gene, the fc count, each fc gene.
        Should repair reject the draw, it is drawn again (at most ``MAX_SAMPLE_TRIES`` times)."""
        error: InfeasibleGenome | None = None
        for _ in range(MAX_SAMPLE_TRIES):
            genome = self.optimiser.sample(rng)
            n_conv = int(rng.integers(self.conv_length[0], self.conv_length[1] + 1))
            conv = [dict(g) for g in self.prefix] + [self.conv.sample(rng) for _ in range(n_conv)]
            n_fc = int(rng.integers(self.fc_length[0], self.fc_length[1] + 1))
            genome |= {"conv": conv, "fc": [self.fc.sample(rng) for _ in range(n_fc)]}
            try:
                return self.repair(genome)[0]
            except InfeasibleGenome as exc:
                error = exc
        raise InfeasibleGenome(f"no trainable genome in {MAX_SAMPLE_TRIES} draws; the last: {error}")

    def contains(self, genome: Genome) -> bool:
        """Right keys in order, every value allowed, lengths within bounds, prefix intact, and every
        conv block's output at least 1x1 (trainable as is)."""
        if not isinstance(genome, dict) or list(genome) != self.names:
            return False
        if not self.optimiser.contains(self.optimiser_genes(genome)):
            return False
        conv, fc = genome["conv"], genome["fc"]
        if not isinstance(conv, list) or not isinstance(fc, list):
            return False
        p = len(self.prefix)
        if conv[:p] != list(self.prefix):
            return False
        if not (self.conv_length[0] <= len(conv) - p <= self.conv_length[1]):
            return False
        if not (self.fc_length[0] <= len(fc) <= self.fc_length[1]):
            return False
        if not all(isinstance(g, dict) and self.conv.contains(g) for g in conv):
            return False
        if not all(isinstance(g, dict) and self.fc.contains(g) for g in fc):
            return False
        return self.fits(genome)

    def fits(self, genome: Genome) -> bool:
        """Whether every conv block of ``genome`` leaves at least a 1x1 image."""
        try:
            feature_shape(self.image_shape, genome["conv"])
        except InfeasibleGenome:
            return False
        return True

    def canonical(self, genome: Mapping[str, Any]) -> Genome:
        """The genome in the space's key order with numpy scalars turned into Python values."""
        return {
            **self.optimiser.canonical(genome),
            "conv": [self.conv.canonical(g) for g in genome["conv"]],
            "fc": [self.fc.canonical(g) for g in genome["fc"]],
        }

    def repair(self, genome: Genome) -> tuple[Genome, list[str]]:
        """A trainable copy of ``genome`` and one note per change (empty when nothing changed).

        Walks the new (non-prefix) conv genes tracking the image size. A gene whose output would be
        under 1x1 has, in turn and only while it still does not fit: its pool dropped, its stride
        set to 1, its kernel set to the smallest allowed, its padding to the largest allowed (each
        step only if that value is allowed). Failing that, it and every later conv gene are dropped,
        unless that leaves fewer than ``conv_length[0]`` new genes: then ``InfeasibleGenome``, as
        when the prefix itself does not fit. Notes name the conv index and its input size.
        """
        conv = [dict(g) for g in genome["conv"]]
        p = len(self.prefix)
        hw = (self.image_shape[1], self.image_shape[2])
        for i, gene in enumerate(conv[:p]):
            out = conv_block_output_shape(hw, gene)
            if min(out) < 1:
                raise InfeasibleGenome(f"conv {i} (fixed by an earlier phase) does not fit its {_size(hw)} input")
            hw = out
        kept, notes = conv[:p], []
        for i in range(p, len(conv)):
            gene, gene_notes = self._fit_gene(conv[i], hw, i)
            if gene is None:
                if i - p < self.conv_length[0]:
                    raise InfeasibleGenome(
                        f"conv {i} cannot fit its {_size(hw)} input with any allowed pool, stride, kernel or "
                        f"padding, and dropping it leaves {i - p} new conv layers, fewer than the minimum "
                        f"{self.conv_length[0]}"
                    )
                later = len(conv) - i - 1
                also = f" with the {later} after it" if later else ""
                notes.append(f"conv {i}: dropped{also} (image {_size(hw)})")
                break
            notes += gene_notes
            kept.append(gene)
            hw = conv_block_output_shape(hw, gene)
        return {**genome, "conv": kept, "fc": [dict(g) for g in genome["fc"]]}, notes

    def _fit_gene(self, gene: Layer, hw: tuple[int, int], index: int) -> tuple[Layer | None, list[str]]:
        """``gene`` changed step by step until its block fits ``hw`` (with notes), or ``None``."""
        gene, notes = dict(gene), []
        steps = (
            ("pool_size", None),
            ("stride", 1),
            ("kernel_size", min(self.conv["kernel_size"].values)),
            ("padding", max(self.conv["padding"].values)),
        )
        for key, value in steps:
            if min(conv_block_output_shape(hw, gene)) >= 1:
                return gene, notes
            if gene[key] == value or not self.conv[key].contains(value):
                continue
            if key == "pool_size":
                notes.append(f"conv {index}: pool {gene[key]} dropped (image {_size(hw)})")
            else:
                notes.append(f"conv {index}: {key} {gene[key]} -> {value} (image {_size(hw)})")
            gene[key] = value
        return (gene, notes) if min(conv_block_output_shape(hw, gene)) >= 1 else (None, notes)

    def diversity(self, genomes: Sequence[Genome]) -> float:
        """Population diversity in [0, 1); 0 for clones or fewer than 2 genomes.

        The mean of these parts, each on the scale of ``SearchSpace.diversity`` (two genomes at
        opposite ends score 0.5):
        - optimiser: mean over its genes of the std of their unit-scale values;
        - conv genes, fc genes: mean over (layer slot, key) of the Gini-Simpson index
          ``1 - sum(share**2)`` of the values, among genomes that have that slot (slots held by
          fewer than 2 genomes, and prefix slots, are skipped);
        - conv length, fc length: std of the list lengths / (max - min) of their bounds.
        A part that cannot vary (no optimiser genes, equal length bounds, no shared slot) is left out.
        """
        if len(genomes) < 2:
            return 0.0
        parts: list[float] = []
        if self.optimiser.dimensions:
            units = np.array([[d.to_unit(g[d.name]) for d in self.optimiser.dimensions] for g in genomes])
            parts.append(float(units.std(axis=0).mean()))
        p = len(self.prefix)
        for key, bounds in (("conv", self.conv_length), ("fc", self.fc_length)):
            layers = [g[key][p:] if key == "conv" else g[key] for g in genomes]
            slots = _slot_disagreement(layers)
            if slots is not None:
                parts.append(slots)
            if bounds[1] > bounds[0]:
                parts.append(float(np.std([len(x) for x in layers])) / (bounds[1] - bounds[0]))
        return float(np.mean(parts)) if parts else 0.0

    def grow(self, best: Genome, new_conv_layers: int) -> ArchitectureSpace:
        """The next phase's space: ``best``'s conv genes become the prefix, and 1 to
        ``new_conv_layers`` new conv genes follow. Raises ``InfeasibleGenome`` when no new layer
        can fit after the prefix."""
        grown = dataclasses.replace(
            self, prefix=tuple(dict(g) for g in best["conv"]), conv_length=(1, int(new_conv_layers))
        )
        grown._check_feasible()
        return grown

    def _check_feasible(self) -> None:
        """Raise ``InfeasibleGenome`` unless the prefix plus ``conv_length[0]`` of the most
        size-preserving allowed conv genes fit the images (then some genome is trainable)."""
        genome = {"conv": list(self.prefix) + [self._smallest_footprint()] * self.conv_length[0]}
        try:
            feature_shape(self.image_shape, genome["conv"])
        except InfeasibleGenome as exc:
            c, h, w = self.image_shape
            raise InfeasibleGenome(
                f"no network of this space fits {h}x{w} images: {len(self.prefix)} prefix conv layers and at least "
                f"{self.conv_length[0]} new ones even with the smallest kernel, largest padding, smallest stride "
                f"and pool ({exc})"
            ) from None

    def _smallest_footprint(self) -> Layer:
        # Every side formula grows with padding and shrinks with kernel, stride and pool: this gene
        # keeps the image largest, so the network of these alone is the best case.
        pools = self.conv["pool_size"].values
        gene = {d.name: d.values[0] for d in self.conv.dimensions}
        return gene | {
            "kernel_size": min(self.conv["kernel_size"].values),
            "padding": max(self.conv["padding"].values),
            "stride": min(self.conv["stride"].values),
            "pool_size": None if None in pools else min(p for p in pools if p is not None),
        }


def _slot_disagreement(layers: Sequence[Sequence[Mapping[str, Any]]]) -> float | None:
    """Mean Gini-Simpson index over (slot, key) of slots at least 2 of ``layers`` have; None if none."""
    scores = []
    for slot in range(max((len(x) for x in layers), default=0)):
        genes = [x[slot] for x in layers if len(x) > slot]
        if len(genes) < 2:
            continue
        for key in genes[0]:
            counts = np.array(list(Counter(repr(g[key]) for g in genes).values()), dtype=float)
            shares = counts / counts.sum()
            scores.append(1.0 - float((shares**2).sum()))
    return float(np.mean(scores)) if scores else None


# ----------------------------------------------------------------------------------------------------------------------
# A fixed-length view, for samplers that know only fixed-length spaces (scikit-learn's grid and sampler)

# Names of the layer-count dimensions in the view (never an optimiser gene's name).
CONV_COUNT, FC_COUNT = "conv_layers", "fc_layers"


def layer_count_view(space: ArchitectureSpace) -> SearchSpace:
    """The new-conv and fc layer counts, then the optimiser dimensions: a fixed-length space.

    Counts first: ``grid_levels`` breaks ties towards earlier dimensions, so a small grid varies
    the depth of the network before the optimiser genes.
    """
    counts = (IntDimension(CONV_COUNT, *space.conv_length), IntDimension(FC_COUNT, *space.fc_length))
    return SearchSpace(counts + space.optimiser.dimensions)


def assemble_genome(space: ArchitectureSpace, point: Mapping[str, Any], conv: list[dict], fc: list[dict]) -> Genome:
    """A genome of ``space`` from a point of ``layer_count_view`` and the new layer genes."""
    genome = {**space.optimiser.canonical(point), "conv": [*space.prefix, *conv], "fc": fc}
    return space.canonical(genome)
