"""Intensity-only baseline: what a classifier that sees one voxel's intensity can segment.

The network's results only mean something if the tasks need spatial context. This
per-voxel classifier uses nothing but the intensity, so its Dice is the floor that
spatial context has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchio as tio

from mtseg.data.preprocessing import IMAGE, LABEL, SAMPLING_MASK
from mtseg.evaluation.metrics import confusion_counts, dice_from_confusion
from mtseg.tasks import get_task

if TYPE_CHECKING:
    from mtseg.data.datamodule import MultiTaskDataModule

PRIORS = ("empirical", "uniform")


class IntensityClassifier:
    """Per-voxel classifier that sees only the voxel's intensity: class-conditional histograms,
    argmax of p(intensity | class) * prior(class).

    Histogram edges span the 0.1st to 99.9th percentile of the pooled training intensities;
    intensities outside fall into the first or last bin, and bins without training voxels
    take the decision of the nearest bin with some. Classes absent from training are never
    predicted.

    Args:
        n_classes: Number of classes, background included; labels are ``0..n_classes-1``.
        bins: Number of histogram bins.
        prior: ``"empirical"`` (class frequencies in the training voxels, the Bayes decision for
            accuracy) or ``"uniform"`` (equal priors, which favours small classes).
    """

    def __init__(self, n_classes: int, bins: int = 256, prior: str = "empirical"):
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes} is invalid: at least 2 classes are needed")
        if bins < 1:
            raise ValueError(f"bins={bins} is invalid: at least 1 bin is needed")
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r} is not known; choose one of {', '.join(PRIORS)}")
        self.n_classes = n_classes
        self.bins = bins
        self.prior = prior
        self.edges: np.ndarray | None = None
        self.bin_labels: np.ndarray | None = None

    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray] | None = None,
    ) -> IntensityClassifier:
        """Estimate the class histograms and the decision per bin.

        Args:
            images: Training images, any shape.
            labels: Integer label maps, one per image, same shapes.
            masks: Optional boolean maps of the voxels to train on, one per image.

        Returns:
            This classifier, fitted.
        """
        if len(images) != len(labels) or (masks is not None and len(masks) != len(images)):
            raise ValueError("images, labels and masks need one entry per training image")
        if not images:
            raise ValueError("fit needs at least one training image")
        values, classes = [], []
        for index, (image, label) in enumerate(zip(images, labels)):
            image, label = np.asarray(image), np.asarray(label)
            if image.shape != label.shape:
                raise ValueError(
                    f"Image {index} has shape {image.shape} but its label {label.shape}"
                )
            keep = (
                np.ones(image.shape, dtype=bool)
                if masks is None
                else np.asarray(masks[index], dtype=bool)
            )
            values.append(image[keep].astype(np.float64))
            classes.append(label[keep].astype(np.int64))
        intensity = np.concatenate(values)
        label = np.concatenate(classes)
        if intensity.size == 0:
            raise ValueError("fit got no training voxels")
        if label.min() < 0 or label.max() >= self.n_classes:
            raise ValueError(
                f"Labels must lie in 0..{self.n_classes - 1}, found {label.min()}..{label.max()}"
            )

        low, high = np.percentile(intensity, [0.1, 99.9])
        if high <= low:
            high = low + 1.0
        self.edges = np.linspace(low, high, self.bins + 1)
        joint = np.bincount(
            self._bin(intensity) * self.n_classes + label, minlength=self.bins * self.n_classes
        )
        counts = joint.reshape(self.bins, self.n_classes).astype(np.float64)
        class_totals = counts.sum(axis=0)
        present = class_totals > 0
        likelihood = np.zeros_like(counts)
        likelihood[:, present] = counts[:, present] / class_totals[present]
        if self.prior == "empirical":
            prior = class_totals / class_totals.sum()
        else:
            prior = present / present.sum()
        bin_labels = np.argmax(likelihood * prior, axis=1)
        # Bins no training voxel fell into take the decision of the nearest bin that had some.
        filled = np.flatnonzero(counts.sum(axis=1) > 0)
        right = np.clip(np.searchsorted(filled, np.arange(self.bins)), 0, len(filled) - 1)
        left = np.clip(right - 1, 0, len(filled) - 1)
        nearest = np.where(
            np.abs(filled[left] - np.arange(self.bins))
            <= np.abs(filled[right] - np.arange(self.bins)),
            filled[left],
            filled[right],
        )
        self.bin_labels = bin_labels[nearest]
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Labels of every voxel of ``image`` (same shape, int64)."""
        if self.bin_labels is None:
            raise RuntimeError("IntensityClassifier.predict called before fit")
        return self.bin_labels[self._bin(np.asarray(image, dtype=np.float64))]

    def _bin(self, intensity: np.ndarray) -> np.ndarray:
        """Bin index of each intensity, clipped to the first and last bin."""
        index = np.searchsorted(self.edges, intensity, side="right") - 1
        return np.clip(index, 0, self.bins - 1)


def intensity_baseline_dice(
    datamodule: MultiTaskDataModule, max_fit_voxels: int = 2_000_000, chunk: int = 8_000_000
) -> dict[str, dict[str, float]]:
    """Dice per class of an :class:`IntensityClassifier` per task, to set beside the CNN's.

    Fitted on the task's preprocessed training images (eligible voxels only, at most
    ``max_fit_voxels`` drawn at random per image), it is scored on every eligible voxel of
    the held-out images, pooled (counted ``chunk`` voxels at a time so memory stays bounded
    on CTA-sized images). It is told the task (the CNN is not), so it is a generous baseline.

    Returns:
        ``{task: {class name: dice}}``.
    """
    results: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for task in datamodule.tasks:
        splits = datamodule.subjects[task]
        classes = get_task(task).classes
        n_classes = len(classes) + 1

        def eligible_voxels(subject: tio.Subject) -> tuple[np.ndarray, np.ndarray]:
            eligible = subject[SAMPLING_MASK].data[0].bool().numpy()
            return subject[IMAGE].data[0].numpy()[eligible], subject[LABEL].data[0].numpy()[eligible]

        images, labels = [], []
        for subject in splits["train"]:
            image, label = eligible_voxels(subject)
            if len(image) > max_fit_voxels:
                keep = rng.choice(len(image), max_fit_voxels, replace=False)
                image, label = image[keep], label[keep]
            images.append(image)
            labels.append(label)
        classifier = IntensityClassifier(n_classes).fit(images, labels)

        confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
        for subject in splits["test"]:
            image, label = eligible_voxels(subject)
            for start in range(0, len(image), chunk):
                prediction = classifier.predict(image[start : start + chunk])
                confusion += confusion_counts(torch.from_numpy(label[start : start + chunk]), torch.from_numpy(prediction), n_classes)
        results[task] = dict(zip(classes, dice_from_confusion(confusion)[1:].tolist()))
    return results
