"""The studies' network: two convolutions and two fully connected layers (PyTorch's MNIST example)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ModelConfig


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


def build_network(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> StudyCNN:
    return StudyCNN(image_shape, num_classes, tuple(config.conv_channels), config.hidden_units)  # type: ignore[arg-type]
