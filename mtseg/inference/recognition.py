"""Which task a scan belongs to: the network is never told, so it is read from its output.

Without a given task the image is first segmented at a working grid that suits every task:
the input's finest voxel spacing, isotropic, kept within the range of the spacings the
network was trained at, once per distinct intensity preprocessing among the checkpoint's
tasks (MRI and CT differ). In each pass (:class:`Pass`), among the tasks with that
preprocessing, the task whose classes hold most of the labelled foreground voxels is a
candidate; its *dominance* is that share and its *plausibility* how well the fraction of
voxels it labels matches the task's training images (``min(r, 1/r)``; a brain MR read as CT
may be "all coronary artery" with dominance 1 but 70 times the coronary fraction of a CTA).
Each pass also has an *intensity agreement* (:func:`intensity_agreement`): whether the share
of the input's stored intensities clearly below 0 lies in the range of the training images of
the pass's tasks. MR magnitudes are never negative, while two thirds of a CTA in Hounsfield
units are (air, lungs, fat), so a CTA read as MRI, or an MR read as CT, scores about 0.015
however the network labels it. The recognised task is the candidate with the highest
dominance × plausibility × intensity agreement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torchio as tio

from mtseg.data.preprocessing import INPLANE


@dataclass
class Pass:
    """One dense segmentation of the input at one working grid and intensity preprocessing."""

    tasks: tuple[str, ...]
    spacing: float | str
    affine: np.ndarray
    labels: torch.Tensor
    probabilities: dict[int, torch.Tensor]  # output channel -> probability volume, for the kept channels
    foreground_per_task: dict[str, int] = field(default_factory=dict)
    n_voxels: int = 0
    intensity_agreement: float = 1.0  # see intensity_agreement()

    @property
    def foreground(self) -> int:
        return sum(self.foreground_per_task.values())

    def plausibility(self, task: str, expected: dict[str, float]) -> float:
        """How well the fraction of voxels labelled ``task`` matches its training images:
        ``min(r, 1/r)`` for the ratio ``r`` of the two fractions (1 when nothing is known)."""
        if not expected.get(task) or not self.n_voxels:
            return 1.0
        observed = self.foreground_per_task.get(task, 0) / self.n_voxels
        if observed == 0:
            return 0.0
        ratio = observed / expected[task]
        return min(ratio, 1 / ratio)

    def score(self, expected: dict[str, float]) -> float:
        """How likely this pass's candidate is the image's task: dominance × plausibility × intensity agreement."""
        _, dominance, plausibility = self.recognise(expected)
        return dominance * plausibility * self.intensity_agreement

    def recognise(self, expected: dict[str, float]) -> tuple[str | None, float, float]:
        """Among the tasks whose preprocessing this pass used, the most likely one: the task
        whose classes hold most labelled foreground voxels, scored by its share of them (the
        dominance) times its plausibility. Returns (task, dominance, plausibility)."""
        if self.foreground == 0:
            return None, 0.0, 0.0
        scored = {t: self.foreground_per_task.get(t, 0) / self.foreground * self.plausibility(t, expected) for t in self.tasks}
        task = max(scored, key=scored.get)
        if self.foreground_per_task.get(task, 0) == 0:
            return None, 0.0, 0.0
        return task, self.foreground_per_task[task] / self.foreground, self.plausibility(task, expected)

    def counts_only(self) -> Pass:
        """This pass without its volumes (kept for the report once recognition is done)."""
        return Pass(
            self.tasks, self.spacing, self.affine, torch.empty(0), {}, dict(self.foreground_per_task), self.n_voxels, self.intensity_agreement
        )

    def report(self, expected: dict[str, float]) -> dict:
        """The pass as the sidecar lists it."""
        return {
            "preprocessing_of": list(self.tasks),
            "spacing_mm": self.spacing,
            "voxels": self.n_voxels,
            "foreground_voxels_per_task": self.foreground_per_task,
            "intensity_agreement": round(self.intensity_agreement, 6),
            "recognised": dict(zip(("task", "dominance", "plausibility"), self.recognise(expected))),
        }


#: Added to both shares before their ratio: one per cent of the voxels is the resolution of the comparison.
AGREEMENT_FLOOR = 0.01


def intensity_agreement(negative: float, trained: tuple[float, float] | None) -> float:
    """How well an image's share ``negative`` of stored intensities clearly below 0
    (:func:`~mtseg.data.preprocessing.negative_fraction`) fits the range ``trained`` (smallest,
    largest) of the training images': 1 inside it, else ``min(r, 1/r)`` for the ratio ``r`` of
    ``negative`` and the nearer end of the range, each plus :data:`AGREEMENT_FLOOR` (1 when the
    range is unknown: older checkpoints)."""
    if trained is None:
        return 1.0
    nearest = min(max(negative, trained[0]), trained[1])
    ratio = (negative + AGREEMENT_FLOOR) / (nearest + AGREEMENT_FLOOR)
    return min(ratio, 1.0 / ratio)


def preprocessing_key(config: dict) -> str:
    """Tasks whose intensity preprocessing is the same share one recognition pass."""
    return json.dumps({k: v for k, v in config.items() if k != "spacing"}, sort_keys=True, default=str)


def working_spacing(image: tio.ScalarImage, trained_spacings: list[float | str]) -> float:
    """The recognition grid: isotropic at the input's finest spacing, kept within the range of
    the spacings the network was trained at (a bogus 0.01 mm header cannot blow up the volume)."""
    finest = round(float(min(image.spacing)), 6)  # headers store float32 spacings
    numeric = [float(s) for s in trained_spacings if s != INPLANE]
    if numeric:
        finest = min(max(finest, min(numeric)), max(numeric)) if finest > 0 else min(numeric)
    return finest


def resolved_spacing(trained: float | str, image: tio.ScalarImage) -> float:
    """A task's training spacing for this image (``"inplane"``: the image's finest spacing)."""
    return round(float(min(image.spacing)), 6) if trained == INPLANE else float(trained)
