"""The small models the lessons share. Both take digits of shape ``(N, 1, 8, 8)``."""

from __future__ import annotations

from torch import nn

from helpers.data import NUM_CLASSES


class DigitsMLP(nn.Module):
    """A two-layer perceptron with dropout: flatten, ``hidden`` units, ``num_classes`` outputs.

    State dict keys: ``hidden.weight``, ``hidden.bias``, ``output.weight``, ``output.bias``.
    """

    def __init__(self, hidden: int = 64, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(64, hidden)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.output(self.dropout(self.hidden(self.flatten(x)).relu()))


class DigitsCNN(nn.Module):
    """A small CNN with BatchNorm and dropout, split into ``features`` and ``classifier``.

    ``features`` (two conv + BatchNorm + ReLU blocks, then 2x2 max-pooling) turns an 8x8 digit
    into 32 maps of 4x4; ``classifier`` (dropout, then a linear layer) maps those to
    ``num_classes`` scores. About 10 thousand parameters.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * width * 4 * 4, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
