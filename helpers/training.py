"""A plain training epoch and an evaluation, written out the way the lessons teach them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    loss_fn: nn.Module | None = None,
) -> float:
    """One pass over ``loader`` in train mode; returns the mean training loss per sample."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    """Accuracy (0 to 1) of ``model`` on ``loader``, in eval mode.

    The model is left in eval mode; call ``model.train()`` before training again.
    """
    model.eval()
    correct, count = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(dim=1) == y).sum().item()
        count += len(y)
    return correct / max(count, 1)
