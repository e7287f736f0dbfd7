"""The image-folder example's own network: any function ``(genome, input_shape, outputs) ->
torch.nn.Module`` can build the networks a study searches over (``model.builder`` in params.yaml).
It receives every gene of ``space.genes``: here ``channels`` and ``dropout`` shape the network,
and the training genes (learning_rate, batch_size, epochs, optimizer) are the evaluator's."""

from torch import nn


def build(genome: dict, input_shape: tuple[int, int, int], outputs: int) -> nn.Module:
    """conv3x3 (``channels`` filters) -> ReLU -> maxpool2 -> conv3x3 (twice the filters) -> ReLU ->
    dropout (``dropout``) -> a linear head over every position."""
    in_channels, height, width = input_shape
    filters = genome["channels"]
    return nn.Sequential(
        nn.Conv2d(in_channels, filters, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(filters, 2 * filters, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(genome["dropout"]),
        nn.Linear(2 * filters * (height // 2) * (width // 2), outputs),
    )
