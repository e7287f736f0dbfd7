"""The networks: the studies' fixed CNN (two convolutions, two fully connected layers; PyTorch's MNIST
example), and variable-length networks built from architecture genomes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.space.architecture import feature_shape

if TYPE_CHECKING:
    from pipeline.config.sections import ModelConfig


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


def network_builder(
    space_kind: str, model_config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int
) -> NetworkBuilder:
    """genome -> its freshly initialised network: its own layers for ``space.kind: architecture``,
    else the study's CNN of ``model`` (the genome then holds optimiser genes only)."""
    if space_kind == "architecture":
        return lambda genome: build_architecture_network(genome, image_shape, num_classes)
    return lambda genome: build_network(model_config, image_shape, num_classes)


def freeze_conv_layers(network: ArchitectureNet, count: int) -> None:
    """Stop gradients to the parameters of conv blocks ``0..count-1`` (phased growth trains only
    the new layers); BatchNorm running statistics still update in train mode."""
    if not 0 <= count <= len(network.conv):
        raise ValueError(f"cannot freeze {count} conv blocks of a network with {len(network.conv)}")
    for block in network.conv[:count]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
