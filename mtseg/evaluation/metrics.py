"""Dice (from confusion counts), surface distances (MONAI) and precision-recall operating points.

Dice of a class is ``2·TP / (2·TP + FP + FN)``; it is undefined (NaN) where neither
the reference nor the prediction holds the class, and 0 where only one of them does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtseg.tasks import check_label_range


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
    """Dice of every class ``0..n_classes-1`` between two label maps of any shape (float64, NaN where undefined),
    from their confusion counts (one bincount, no one-hot volume)."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and prediction {tuple(prediction.shape)} differ in shape")
    for name, labels in (("prediction", prediction), ("reference", reference)):
        check_label_range(labels, n_classes, name)
    return dice_from_confusion(confusion_counts(reference, prediction, n_classes))


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

    Binned like torchmetrics' ``BinaryPrecisionRecallCurve(thresholds=n)`` (``n`` evenly
    spaced thresholds in [0, 1]; a voxel is positive at threshold ``t`` when its probability
    is ``>= t``), so memory does not grow with the number of voxels. The counting differs:
    each voxel is put in its threshold bin once (``torch.bucketize``) and the bins are
    counted with one ``bincount``, where torchmetrics compares every voxel with every
    threshold (it took 38 s for 61,440 voxels and 1001 thresholds on the 2-core machine of
    docs/CHANGELOG.md; a CTA test set has 10^8 voxels). The tests check the curve against
    torchmetrics' on the same voxels.

    Args:
        n_thresholds: Number of thresholds; 1001 gives steps of 0.001.
    """

    def __init__(self, n_thresholds: int):
        if n_thresholds < 2:
            raise ValueError(f"evaluation.pr_thresholds must be at least 2, got {n_thresholds}")
        self.thresholds = torch.linspace(0, 1, n_thresholds)
        # counts[target, k]: voxels whose probability passes exactly the first k thresholds
        self.counts = torch.zeros(2, n_thresholds + 1, dtype=torch.long)

    @property
    def n_positive(self) -> int:
        return int(self.counts[1].sum())

    def update(self, probability: torch.Tensor, reference: torch.Tensor, chunk: int = 1 << 24) -> None:
        """Add voxels: foreground probabilities and binary reference labels (any equal shapes),
        ``chunk`` voxels at a time so the int64 temporaries stay small."""
        probability, reference = probability.reshape(-1), reference.reshape(-1)
        n = len(self.thresholds) + 1
        for start in range(0, len(probability), chunk):
            passed = torch.bucketize(probability[start : start + chunk].float(), self.thresholds, right=True)
            passed += reference[start : start + chunk].long() * n
            self.counts += torch.bincount(passed, minlength=2 * n).reshape(2, n)

    def curve(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """True positives, false positives and false negatives at every threshold."""
        # positive at threshold i: passed more than i thresholds
        at_least = self.counts.flip(1).cumsum(1).flip(1)[:, 1:]
        tp, fp = at_least[1], at_least[0]
        return tp, fp, self.n_positive - tp

    def operating_point(self) -> OperatingPoint:
        """The threshold of highest pooled Dice (the lowest such threshold on ties).

        Threshold 0 is left out of the search: it would call every voxel foreground,
        outside the sampling mask too.
        """
        if self.n_positive == 0:
            raise ValueError("the pooled test voxels hold no foreground: the PR operating point is undefined")
        tp, fp, fn = (c.double() for c in self.curve())
        dice = 2 * tp / (2 * tp + fp + fn)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.nan)
        recall = tp / (tp + fn)
        best = 1 + int(torch.argmax(dice[1:]))
        return OperatingPoint(float(self.thresholds[best]), float(dice[best]), precision, recall, self.thresholds)


def surface_distances(
    reference: torch.Tensor, prediction: torch.Tensor, n_classes: int, spacing: tuple[float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """95th-percentile Hausdorff distance and average symmetric surface distance (mm) of every
    foreground class ``1..n_classes-1`` between two 3-D label maps, from MONAI
    (``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric=True)``)
    with the voxel ``spacing``.

    A class missing from the reference or the prediction has no surface to measure from:
    both distances are NaN there (``null`` in JSON), as Dice is where both lack it.

    Returns:
        ``(hd95, assd)``, float64 tensors of length ``n_classes - 1``.
    """
    import warnings

    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    if reference.shape != prediction.shape or reference.ndim != 3:
        raise ValueError(f"reference {tuple(reference.shape)} and prediction {tuple(prediction.shape)}: two equal 3-D shapes needed")
    hd95 = torch.full((n_classes - 1,), torch.nan, dtype=torch.float64)
    assd = hd95.clone()
    spacing = [float(s) for s in spacing]
    for c in range(1, n_classes):
        truth, found = reference == c, prediction == c
        if not truth.any() or not found.any():
            continue
        # the bounding box of both masks, one voxel wider, is all the surfaces need
        both = torch.nonzero(truth | found)
        low, high = (both.min(0).values - 1).clamp_min(0), both.max(0).values + 2
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        pred, ref = found[box][None, None].float(), truth[box][None, None].float()
        with warnings.catch_warnings():  # MONAI warns about its own deprecated internals
            warnings.simplefilter("ignore", FutureWarning)
            hd95[c - 1] = float(compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=spacing)[0, 0])
            assd[c - 1] = float(compute_average_surface_distance(pred, ref, include_background=True, symmetric=True, spacing=spacing)[0, 0])
    return hd95, assd
