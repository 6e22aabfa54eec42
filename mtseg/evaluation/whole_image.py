"""Whole-image evaluation as in the paper (§4), shared by training's learning curves and ``mtseg.evaluate``.

Every held-out image is segmented densely (:func:`mtseg.inference.dense.segment_volume`):

- tasks evaluated by ``argmax`` (brain MRI): each voxel gets the output channel of
  highest activation; Dice per class per image;
- tasks evaluated at a ``pr_threshold`` (breast MRI, cardiac CTA): the precision-recall
  curve of the task's foreground probability over all test voxels of the task, pooled;
  the operating point is the threshold of highest pooled Dice, and that one threshold
  is applied to every image;
- cross-task confusion: per image, the percentage of its voxels whose highest-activation
  channel belongs to another task (e.g. cortical grey matter in a breast MR); the median
  over a task's images is reported.

Voxels outside the sampling mask (intensity at or below the task's threshold, never seen
in training) are background. Dice and voxel counts are on the preprocessed grid
(canonical orientation, the task's isotropic spacing), as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.inference.dense import segment_volume
from mtseg.evaluation.metrics import PooledPRCurve, dice_scores, surface_distances
from mtseg.model import TriplanarCNN
from mtseg.evaluation.operating_point import task_labels
from mtseg.tasks import TASKS, LabelSpace


def _finite(values) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _summary(values) -> dict[str, float | None]:
    finite = _finite(values)
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "median": float(np.median(finite)) if finite else None,
    }


@dataclass
class ImageResult:
    """Evaluation of one held-out image.

    Attributes:
        case_id: The image's case ID.
        dice: Dice per foreground class name (NaN where reference and prediction lack the class).
        alien_percent: Percentage of the image's voxels labelled with another task's class.
        prediction: Task-local label map (uint8) on the preprocessed grid, if kept.
        hd95_mm, assd_mm: 95th-percentile Hausdorff and average symmetric surface distance per
            class (mm; NaN where the reference or the prediction lacks the class), if computed.
    """

    case_id: str
    dice: dict[str, float]
    alien_percent: float
    prediction: torch.Tensor | None = None
    hd95_mm: dict[str, float] | None = None
    assd_mm: dict[str, float] | None = None


@dataclass
class TaskResult:
    """Evaluation of one task over its held-out images.

    Attributes:
        task: Task name.
        operating_point: ``"argmax"`` or ``"pr_threshold"``.
        images: One result per image, in the order given.
        threshold: PR operating point (``pr_threshold`` tasks only).
        pooled_dice: Dice of all pooled test voxels at the threshold (``pr_threshold`` only).
        pr_curve: ``{"threshold", "precision", "recall"}`` lists (``pr_threshold`` only).
    """

    task: str
    operating_point: str
    images: list[ImageResult]
    threshold: float | None = None
    pooled_dice: float | None = None
    pr_curve: dict[str, list[float]] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return TASKS[self.task].classes

    def class_dice(self, cls: str) -> dict[str, float | None]:
        """Mean and median Dice of ``cls`` over the images (NaN images left out)."""
        return _summary([image.dice[cls] for image in self.images])

    @property
    def has_surface_distances(self) -> bool:
        return bool(self.images) and all(image.hd95_mm is not None for image in self.images)

    def _surface(self, cls: str) -> dict:
        """Mean, median and per-image HD95 and ASSD of ``cls`` (NaN images left out of the summaries), and
        how many images had no distance because the reference or the prediction lacked the class
        (a class the network missed counts there, not in the means)."""
        out = {"surface_undefined_images": sum(math.isnan(i.hd95_mm[cls]) for i in self.images)}
        for metric in ("hd95_mm", "assd_mm"):
            values = {i.case_id: getattr(i, metric)[cls] for i in self.images}
            out |= {f"{k}_{metric}": v for k, v in _summary(values.values()).items()}
            out[f"{metric}_per_image"] = {case: None if math.isnan(v) else v for case, v in values.items()}
        return out

    @property
    def confusion_median(self) -> float:
        """Median over images of the percentage of voxels labelled with another task's class."""
        return float(np.median([image.alien_percent for image in self.images]))

    def to_dict(self, multi_task: bool) -> dict:
        out = {
            "operating_point": self.operating_point,
            "n_images": len(self.images),
            "classes": {
                cls: {**{f"{k}_dice": v for k, v in self.class_dice(cls).items()},
                      "dice_per_image": {i.case_id: None if math.isnan(i.dice[cls]) else i.dice[cls] for i in self.images},
                      **(self._surface(cls) if self.has_surface_distances else {})}
                for cls in self.classes
            },
        }
        if self.operating_point == "pr_threshold":
            out |= {"threshold": self.threshold, "pooled_dice": self.pooled_dice}
        if multi_task:
            out["cross_task_confusion_percent"] = {
                "median": self.confusion_median,
                "per_image": {i.case_id: i.alien_percent for i in self.images},
            }
        return out


@dataclass
class EvaluationExample:
    """One axial slice of a held-out image, for overlays: image, reference and prediction (task-local)."""

    task: str
    case_id: str
    slice_index: int
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray


@dataclass
class EvaluationResult:
    """Whole-image evaluation of a network on the held-out images of each of its tasks."""

    label_space: LabelSpace
    tasks: dict[str, TaskResult]
    examples: dict[str, EvaluationExample] = field(default_factory=dict)

    def mean_dice(self) -> dict[tuple[str, str], float]:
        """Mean Dice over images per (task, class): the learning-curve value (NaN if undefined)."""
        means = {(task, cls): result.class_dice(cls)["mean"] for task, result in self.tasks.items() for cls in result.classes}
        return {key: math.nan if mean is None else mean for key, mean in means.items()}

    def thresholds(self) -> dict[str, float]:
        """PR operating point per ``pr_threshold`` task."""
        return {t: r.threshold for t, r in self.tasks.items() if r.threshold is not None}

    def to_dict(self) -> dict:
        multi_task = len(self.label_space.tasks) > 1
        return {
            **self.label_space.to_dict(),
            "dice_on": "whole held-out images, preprocessed grid (paper §4)",
            "tasks": {task: result.to_dict(multi_task) for task, result in self.tasks.items()},
        }

    def rows(self) -> list[dict]:
        """One row per image and class: the per-image CSV."""
        multi_task = len(self.label_space.tasks) > 1
        return [
            {
                "task": task,
                "case_id": image.case_id,
                "class": cls,
                "dice": image.dice[cls],
                "hd95_mm": "" if image.hd95_mm is None else image.hd95_mm[cls],
                "assd_mm": "" if image.assd_mm is None else image.assd_mm[cls],
                "threshold": result.threshold if result.threshold is not None else "",
                "alien_percent": image.alien_percent if multi_task else "",
            }
            for task, result in self.tasks.items()
            for image in result.images
            for cls in result.classes
        ]


class WholeImageEvaluator:
    """Accumulates held-out images of each task, then evaluates them as in the paper (§4).

    Args:
        label_space: The network's output channels.
        pr_thresholds: Number of thresholds of the PR analysis.
        keep_predictions: Keep every task-local label map (to write NIfTIs); otherwise only
            what the metrics need (1 byte per voxel for ``argmax`` tasks, 2 bytes for
            ``pr_threshold`` tasks) is kept until :meth:`compute`.
        surface_distances: Also compute each image's HD95 and ASSD per class
            (:func:`mtseg.evaluation.metrics.surface_distances`; ``mtseg.evaluate``, not the learning curves).
        fixed_thresholds: ``{task: threshold}``: these ``pr_threshold`` tasks are labelled at the given
            threshold instead of the operating point of the images added (test variants of images
            whose operating point was found on the originals); their ``pooled_dice`` is ``None``.
    """

    def __init__(
        self, label_space: LabelSpace, pr_thresholds: int, keep_predictions: bool = False, surface_distances: bool = False,
        fixed_thresholds: Mapping[str, float] | None = None,
    ):
        self.label_space = label_space
        self.pr_thresholds = pr_thresholds
        self.keep_predictions = keep_predictions
        self.surface_distances = surface_distances
        self.fixed_thresholds = dict(fixed_thresholds or {})
        self._pending: dict[str, list[dict]] = {t: [] for t in label_space.tasks}
        self._curves = {
            t: PooledPRCurve(pr_thresholds) for t in label_space.tasks if TASKS[t].operating_point == "pr_threshold"
        }
        self._examples: dict[str, EvaluationExample] = {}

    def channels(self, task: str) -> list[int]:
        """Output channels whose probabilities the evaluation of ``task`` needs."""
        return self.label_space.task_classes(task)[1:] if task in self._curves else []

    @torch.no_grad()
    def add_volume(
        self,
        net: TriplanarCNN,
        task: str,
        case_id: str,
        volume: TriplanarVolume,
        reference: torch.Tensor,
        mask: torch.Tensor,
        slab_voxels: int,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        progress: bool | None = False,
        precision: str = "fp32",
    ) -> None:
        """Segment one preprocessed held-out image densely and add it (``spacing``: its voxels, in mm;
        ``precision``: of the dense inference, see :func:`~mtseg.inference.dense.segment_volume`)."""
        segmentation = segment_volume(
            net, volume, mask, self.channels(task), progress=progress, slab_voxels=slab_voxels, precision=precision
        )
        probability = None if segmentation.probabilities is None else segmentation.probabilities[0]
        self.add(task, case_id, segmentation.labels, reference, probability, image=volume.interior, spacing=spacing)

    def add(
        self,
        task: str,
        case_id: str,
        labels: torch.Tensor,
        reference: torch.Tensor,
        probability: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        """Add one image's dense result.

        Args:
            task: The image's task.
            case_id: Its case ID.
            labels: ``(X, Y, Z)`` output channel of highest activation per voxel.
            reference: ``(X, Y, Z)`` task-local reference labels.
            probability: ``(X, Y, Z)`` the task's foreground probability (``pr_threshold`` tasks).
            image: ``(X, Y, Z)`` intensities, to keep an example slice for overlays.
            spacing: Voxel spacing (mm) of the image, for surface distances.
        """
        if labels.shape != reference.shape:
            raise ValueError(f"{case_id}: prediction {tuple(labels.shape)} and reference {tuple(reference.shape)} differ")
        counts = torch.bincount(labels.flatten(), minlength=self.label_space.n_classes)  # no int64 copy of the volume
        alien = int(counts[self.label_space.alien_channels(task)].sum())
        entry = {
            "case_id": case_id,
            "reference": reference.to(torch.uint8),
            "alien_percent": 100.0 * alien / labels.numel(),
            "spacing": tuple(float(v) for v in spacing),
        }
        if task in self._curves:
            if probability is None:
                raise ValueError(f"{case_id}: task {task!r} is evaluated at a PR threshold and needs its probability")
            # half precision halves what is kept; the curve sees exactly the values later thresholded
            entry["probability"] = probability.to(torch.float16)
            if task not in self.fixed_thresholds:  # a fixed threshold needs no curve
                self._curves[task].update(entry["probability"], reference > 0)
        else:
            entry["prediction"] = task_labels(self.label_space, task, labels)
        if image is not None:
            entry["image"] = image
        self._pending[task].append(entry)

    def compute(self) -> EvaluationResult:
        """Evaluate the images added so far; the evaluator is reset."""
        results: dict[str, TaskResult] = {}
        for task, entries in self._pending.items():
            if not entries:
                continue
            spec = TASKS[task]
            result = TaskResult(task, spec.operating_point, [])
            if task in self.fixed_thresholds and task in self._curves:
                result.threshold = float(self.fixed_thresholds[task])
            elif task in self._curves:
                point = self._curves[task].operating_point()
                result.threshold, result.pooled_dice = point.threshold, point.dice
                result.pr_curve = {
                    "threshold": point.thresholds.tolist(),
                    "precision": torch.nan_to_num(point.precision, nan=1.0).tolist(),
                    "recall": point.recall.tolist(),
                }
            for entry in entries:
                if "prediction" in entry:
                    prediction = entry["prediction"]
                else:
                    prediction = task_labels(self.label_space, task, probability=entry["probability"].float(), threshold=result.threshold)
                dice = dice_scores(entry["reference"], prediction, spec.n_classes)[1:].tolist()
                hd95 = assd = None
                if self.surface_distances:
                    distances = surface_distances(entry["reference"], prediction, spec.n_classes, entry["spacing"])
                    hd95, assd = (dict(zip(spec.classes, d.tolist())) for d in distances)
                result.images.append(
                    ImageResult(
                        entry["case_id"],
                        dict(zip(spec.classes, dice)),
                        entry["alien_percent"],
                        prediction if self.keep_predictions else None,
                        hd95,
                        assd,
                    )
                )
                if task not in self._examples and "image" in entry:
                    self._examples[task] = _example(task, entry["case_id"], entry["image"], entry["reference"], prediction)
            results[task] = result
        evaluation = EvaluationResult(self.label_space, results, dict(self._examples))
        self.reset()
        return evaluation

    def reset(self) -> None:
        self._pending = {t: [] for t in self.label_space.tasks}
        self._curves = {t: PooledPRCurve(self.pr_thresholds) for t in self._curves}
        self._examples = {}


def example_slice(reference: torch.Tensor) -> int:
    """The axial slice holding most foreground voxels of ``reference`` (the middle one if none)."""
    per_slice = (reference > 0).sum(dim=(0, 1))
    return int(per_slice.argmax()) if per_slice.any() else reference.shape[2] // 2


def _example(task: str, case_id: str, image: torch.Tensor, reference: torch.Tensor, prediction: torch.Tensor) -> EvaluationExample:
    k = example_slice(reference)
    return EvaluationExample(
        task, case_id, k, image[..., k].float().numpy().copy(), reference[..., k].numpy().copy(), prediction[..., k].numpy().copy()
    )


def results_table(results: Mapping[str, dict]) -> list[dict]:
    """Rows ``experiment, task, class, mean_dice, median_dice, threshold, confusion_median_percent``
    from ``{experiment: EvaluationResult.to_dict()}``."""
    rows = []
    for experiment, result in results.items():
        for task, task_result in result["tasks"].items():
            for cls, values in task_result["classes"].items():
                rows.append(
                    {
                        "experiment": experiment,
                        "task": task,
                        "class": cls,
                        "mean_dice": values["mean_dice"],
                        "median_dice": values["median_dice"],
                        **({"mean_hd95_mm": values["mean_hd95_mm"], "mean_assd_mm": values["mean_assd_mm"]} if "mean_hd95_mm" in values else {}),
                        "threshold": task_result.get("threshold"),
                        "pooled_dice": task_result.get("pooled_dice"),
                        "confusion_median_percent": task_result.get("cross_task_confusion_percent", {}).get("median"),
                    }
                )
    return rows
