"""Dice from confusion counts, shared by validation and the intensity-only baseline."""

from __future__ import annotations

import torch


def confusion_counts(reference: torch.Tensor, prediction: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` counts, rows the reference class, columns the predicted one."""
    flat = reference.reshape(-1).long() * n_classes + prediction.reshape(-1).long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Dice of every class from a (reference × prediction) confusion matrix; NaN where both are empty."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    denominator = confusion.sum(0) + confusion.sum(1)
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.nan)
