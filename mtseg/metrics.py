"""Dice and precision-recall operating points, computed with torchmetrics.

Dice of a class is ``2·TP / (2·TP + FP + FN)``; it is undefined (NaN) where neither
the reference nor the prediction holds the class, and 0 where only one of them does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import BinaryPrecisionRecallCurve
from torchmetrics.functional.classification import multiclass_stat_scores


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


def dice_scores(reference: torch.Tensor, prediction: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Dice of every class ``0..n_classes-1`` between two label maps of any shape (float64, NaN where undefined).

    The per-class true/false positives and false negatives come from torchmetrics'
    ``multiclass_stat_scores`` (counted with a bincount, no one-hot volume).
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and prediction {tuple(prediction.shape)} differ in shape")
    stats = multiclass_stat_scores(
        prediction.reshape(-1).long(), reference.reshape(-1).long(), num_classes=n_classes, average=None, validate_args=False
    ).double()
    tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 3]
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-12), torch.nan)


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold of highest Dice on a pooled precision-recall curve.

    Attributes:
        threshold: A voxel is foreground when its probability is ``>= threshold``.
        dice: Dice of all pooled voxels at that threshold.
        precision, recall: The curve, one value per threshold.
        thresholds: The thresholds of the curve.
    """

    threshold: float
    dice: float
    precision: torch.Tensor
    recall: torch.Tensor
    thresholds: torch.Tensor


class PooledPRCurve:
    """Precision-recall curve of a foreground probability over many images, pooled.

    Wraps torchmetrics' ``BinaryPrecisionRecallCurve`` with ``n_thresholds`` evenly spaced
    thresholds in [0, 1] (binned: memory does not grow with the number of voxels).

    Args:
        n_thresholds: Number of thresholds; 1001 gives steps of 0.001.
    """

    def __init__(self, n_thresholds: int = 1001):
        if n_thresholds < 2:
            raise ValueError(f"evaluation.pr_thresholds must be at least 2, got {n_thresholds}")
        self.metric = BinaryPrecisionRecallCurve(thresholds=n_thresholds, validate_args=False)
        self.n_positive = 0

    def update(self, probability: torch.Tensor, reference: torch.Tensor) -> None:
        """Add voxels: foreground probabilities and binary reference labels (any equal shapes)."""
        target = reference.reshape(-1).long()
        self.metric.update(probability.reshape(-1).float(), target)
        self.n_positive += int(target.sum())

    def operating_point(self) -> OperatingPoint:
        """The threshold of highest pooled Dice (the lowest such threshold on ties)."""
        if self.n_positive == 0:
            raise ValueError("the pooled test voxels hold no foreground: the PR operating point is undefined")
        precision, recall, thresholds = self.metric.compute()
        precision, recall = precision[:-1].double(), recall[:-1].double()  # the last point is (1, 0) by convention
        # no voxel predicted: precision is 0/0 (NaN) and Dice is 0 since foreground exists
        dice = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        dice = torch.nan_to_num(dice, nan=0.0)
        best = int(torch.argmax(dice))
        return OperatingPoint(float(thresholds[best]), float(dice[best]), precision, recall, thresholds)
