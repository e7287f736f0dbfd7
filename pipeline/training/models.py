"""The networks: the studies' fixed CNN (two convolutions, two fully connected layers; PyTorch's MNIST
example), variable-length networks built from architecture genomes (the two built-in builders), and
a user's builder named by ``model.builder``, loaded and checked the same way."""

from __future__ import annotations

import importlib
import sys
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config.sections import BUILTIN_BUILDERS
from pipeline.errors import ConfigError
from pipeline.space.architecture import feature_shape

if TYPE_CHECKING:
    from pipeline.config.sections import ModelConfig, StudyConfig


class StudyCNN(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> maxpool2 -> dropout -> fc -> ReLU -> dropout -> fc.

    Input ``[B, C, H, W]``, output logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        conv_channels: tuple[int, int] = (32, 64),
        hidden_units: int = 128,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape
        if min(height, width) < 6:
            raise ValueError(f"images of {height}x{width} are too small for two 3x3 convolutions and a 2x2 pool")
        first, second = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(channels, first, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
        )
        flat = second * ((height - 4) // 2) * ((width - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden_units),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden_units, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def build_network(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The studies' CNN of ``model`` for images; for tabular features (stored as ``1 x 1 x F``
    "images") a multilayer perceptron with one hidden layer of ``model.hidden_units``."""
    if is_tabular(image_shape):
        hidden = {"units": config.hidden_units, "activation": "relu", "dropout": 0.0}
        return ArchitectureNet([], [hidden], image_shape, num_classes)
    return StudyCNN(image_shape, num_classes, tuple(config.conv_channels), config.hidden_units)  # type: ignore[arg-type]


def is_tabular(image_shape: Sequence[int]) -> bool:
    """Features of a table, not pixels: one channel, one row."""
    return tuple(image_shape[:2]) == (1, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Variable-length networks built from architecture genomes (pipeline.architecture)

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "swish": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


class ConvBlock(nn.Module):
    """Conv2d -> [BatchNorm2d] -> activation -> [Max/AvgPool2d(pool_size)], plus an optional
    shortcut: a 1x1 conv of the input, average-pooled to the block output's size and added.

    Submodules ``conv``, ``norm`` (batch_norm only), ``shortcut`` (skip only): stable state_dict keys.
    """

    def __init__(self, in_channels: int, gene: Mapping[str, Any]) -> None:
        super().__init__()
        filters = gene["filters"]
        self.conv = nn.Conv2d(in_channels, filters, gene["kernel_size"], gene["stride"], gene["padding"])
        self.norm = nn.BatchNorm2d(filters) if gene["batch_norm"] else None
        self.activation = _ACTIVATIONS[gene["activation"]]()
        pool = gene["pool_size"]
        self.pool = None if pool is None else (nn.MaxPool2d if gene["pool_type"] == "max" else nn.AvgPool2d)(pool)
        self.shortcut = nn.Conv2d(in_channels, filters, kernel_size=1) if gene["skip"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = self.activation(out)
        if self.pool is not None:
            out = self.pool(out)
        if self.shortcut is not None:
            # Adaptive pooling matches whatever size stride and pool left: shape-safe for any gene.
            out = out + F.adaptive_avg_pool2d(self.shortcut(x), out.shape[-2:])
        return out


class FcBlock(nn.Module):
    """Linear -> activation -> Dropout."""

    def __init__(self, in_features: int, gene: Mapping[str, Any]) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, gene["units"])
        self.activation = _ACTIVATIONS[gene["activation"]]()
        self.dropout = nn.Dropout(gene["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.linear(x)))


class ArchitectureNet(nn.Module):
    """Conv blocks, flatten, fc blocks, then the ``head`` Linear to ``num_classes`` logits.

    Input ``[B, C, H, W]``, output ``[B, num_classes]``. Keys are indexed by layer
    (``conv.0.conv.weight``, ``conv.0.norm.weight``, ``conv.0.shortcut.weight``,
    ``fc.0.linear.weight``, ``head.weight``) so a child's layer i can take a parent's layer i.
    Raises ``InfeasibleGenome`` when a conv block would leave less than 1x1.
    """

    def __init__(
        self,
        conv: Sequence[Mapping[str, Any]],
        fc: Sequence[Mapping[str, Any]],
        image_shape: tuple[int, int, int],
        num_classes: int,
    ) -> None:
        super().__init__()
        channels, height, width = feature_shape(image_shape, conv)
        in_channels = [image_shape[0], *(g["filters"] for g in conv[:-1])]
        self.conv = nn.ModuleList(ConvBlock(c, g) for c, g in zip(in_channels, conv))
        features = [channels * height * width, *(g["units"] for g in fc)]
        self.fc = nn.ModuleList(FcBlock(n, g) for n, g in zip(features, fc))
        self.head = nn.Linear(features[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.conv:
            x = block(x)
        x = x.flatten(1)
        for block in self.fc:
            x = block(x)
        return self.head(x)


def build_architecture_network(
    genome: Mapping[str, Any], image_shape: tuple[int, int, int], num_classes: int
) -> ArchitectureNet:
    return ArchitectureNet(genome["conv"], genome["fc"], image_shape, num_classes)


NetworkBuilder = Callable[[Mapping[str, Any]], nn.Module]


def study_cnn(
    genome: Mapping[str, Any], input_shape: tuple[int, int, int], outputs: int, model: ModelConfig
) -> nn.Module:
    """The built-in builder of ``space.kind: hyperparameters``: the studies' CNN of ``model`` (the
    genome holds training genes only)."""
    return build_network(model, input_shape, outputs)


def architecture_network(
    genome: Mapping[str, Any], input_shape: tuple[int, int, int], outputs: int, model: ModelConfig
) -> nn.Module:
    """The built-in builder of ``space.kind: architecture``: the genome's own layers."""
    return build_architecture_network(genome, input_shape, outputs)


# model.builder's built-in names (pipeline.config.sections.BUILTIN_BUILDERS) -> the function.
BUILTINS = {
    "pipeline.training.models:study_cnn": study_cnn,
    "pipeline.training.models:architecture_network": architecture_network,
}


@dataclass(frozen=True)
class BuilderSource:
    """Who builds each genome's network, as a worker process or a Ray node receives it: the reference
    (``model.builder``), and a file builder's code, read once by the driver, so a worker builds it
    without the file (a remote node has none)."""

    reference: str  # "path/to/file.py:function", "package.module:function" or a built-in name
    code: str | None = None  # a file builder's source
    filename: str | None = None  # its absolute path: tracebacks point into the user's file

    @classmethod
    def for_study(cls, config: StudyConfig) -> BuilderSource:
        reference = config.builder
        where, _, _ = reference.rpartition(":")
        if not where.endswith(".py"):
            return cls(reference)
        path = Path(where)
        try:
            return cls(reference, path.read_text(encoding="utf-8"), str(path.resolve()))
        except (OSError, UnicodeDecodeError) as exc:
            raise BuilderError(
                f"model.builder: cannot read {where} ({getattr(exc, 'strerror', None) or exc})"
            ) from None

    @property
    def user_file(self) -> str | None:
        """The file a user's builder was read from (or imported from), for error lines."""
        if self.filename is not None:
            return self.filename
        module = sys.modules.get(self.reference.rpartition(":")[0])
        return getattr(module, "__file__", None)


class BuilderError(ConfigError):
    """A model builder that cannot be loaded or does not build a fitting network: one line, by key."""


_LOADED: dict[tuple[str, str | None], Callable[..., nn.Module]] = {}


def load_builder(source: BuilderSource) -> Callable[..., nn.Module]:
    """The builder function named by ``source`` (imported or executed once per process)."""
    if source.reference in BUILTINS:
        return BUILTINS[source.reference]
    key = (source.reference, source.code)
    if key not in _LOADED:
        _LOADED[key] = _import_builder(source)
    return _LOADED[key]


def _import_builder(source: BuilderSource) -> Callable[..., nn.Module]:
    where, _, function = source.reference.rpartition(":")
    try:
        if source.code is not None:
            # A name no other module has: a class defined in it is pickled by value (MLflow's log_model).
            module = types.ModuleType(f"evohpo_builder_{Path(where).stem}")
            module.__file__ = source.filename
            folder = str(Path(source.filename or where).parent)
            if Path(folder).is_dir() and folder not in sys.path:
                sys.path.append(folder)  # its own helper modules beside it, where the file exists
            exec(compile(source.code, source.filename or where, "exec"), module.__dict__)  # noqa: S102 - the user's code
        else:
            module = importlib.import_module(where)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        raise BuilderError(f"model.builder: cannot import {where}: {_user_error(exc, source)}") from None
    builder = getattr(module, function, None)
    if not callable(builder):
        raise BuilderError(f"model.builder: {where} has no function {function!r}")
    return builder


def _user_error(exc: BaseException, source: BuilderSource) -> str:
    """``Type: message``, after the user's file and line where it was raised (the deepest frame of it)."""
    user_file = source.user_file
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if user_file is not None and Path(frame.f_code.co_filename) == Path(user_file):
            where = f"{user_file}:{line}: "
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        where = f"{exc.filename}:{exc.lineno}: "
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{where}{type(exc).__name__}: {text}"[:500]


def network_builder(
    source: BuilderSource | str, model_config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int
) -> NetworkBuilder:
    """genome -> its freshly initialised network, built by ``model.builder`` (a user's function is
    called as ``function(genome, input_shape, outputs)``; a table's F features come as ``(1, 1, F)``).
    ``source`` may also be a ``space.kind``, for its built-in builder."""
    if isinstance(source, str):
        source = BuilderSource(BUILTIN_BUILDERS.get(source, source))
    builder = load_builder(source)
    if source.reference in BUILTINS:
        return lambda genome: builder(genome, image_shape, num_classes, model_config)
    return lambda genome: _built_by_user(builder, genome, image_shape, num_classes, source)


def _built_by_user(
    builder: Callable[..., Any],
    genome: Mapping[str, Any],
    image_shape: tuple[int, int, int],
    outputs: int,
    source: BuilderSource,
) -> nn.Module:
    """A user's builder called; what it raises becomes one line with the user's file and line (the
    evaluation's FAILED reason in MLflow)."""
    try:
        network = builder(dict(genome), tuple(image_shape), outputs)
    except Exception as exc:  # noqa: BLE001 - whatever the user's code raises
        raise BuilderError(f"model.builder: {source.reference} failed: {_user_error(exc, source)}") from exc
    if not isinstance(network, nn.Module):
        raise BuilderError(
            f"model.builder: {source.reference} returned {type(network).__name__}, not a torch.nn.Module"
        )
    return network


def check_builder(
    source: BuilderSource,
    model_config: ModelConfig,
    genome: Mapping[str, Any],
    image_shape: tuple[int, int, int],
    outputs: int,
) -> None:
    """Build ``genome``'s network and pass two inputs through it, before any training: a builder that
    cannot be imported, raises, or returns a network whose output does not fit the task fails here,
    in one line naming ``model.builder`` (and the user's file and line)."""
    with torch.random.fork_rng(devices=[]):
        try:
            network = network_builder(source, model_config, image_shape, outputs)(genome)
            network.eval()
            with torch.no_grad():
                produced = network(torch.zeros(2, *image_shape))
        except BuilderError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the user's code raises
            raise BuilderError(f"model.builder: {source.reference} failed on a sampled genome: "
                               f"{_user_error(exc, source)}") from None  # fmt: skip
    shape = tuple(getattr(produced, "shape", ()))
    if shape != (2, outputs):
        raise BuilderError(f"model.builder: {source.reference} returns outputs of shape {shape} for a batch of 2 "
                           f"inputs of shape {tuple(image_shape)}; the task needs (2, {outputs}) (one score per "
                           f"class, or 1 for regression)")  # fmt: skip


def freeze_conv_layers(network: ArchitectureNet, count: int) -> None:
    """Stop gradients to the parameters of conv blocks ``0..count-1`` (phased growth trains only
    the new layers); BatchNorm running statistics still update in train mode."""
    if not 0 <= count <= len(network.conv):
        raise ValueError(f"cannot freeze {count} conv blocks of a network with {len(network.conv)}")
    for block in network.conv[:count]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
