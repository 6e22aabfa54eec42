"""Training augmentation: augmented copies of each training image, made once at setup.

The sampler draws triplanar patches from preprocessed volumes held in memory, each with
its own padded volume and class voxel index (:mod:`mtseg.data.sampling`); re-augmenting
at every queue refill would redo that work hundreds of times per run. Instead each
training image is preprocessed once, and ``copies`` augmented versions of it are made
from the preprocessed image with the TorchIO transforms listed in
``data.<task>.augmentation.transforms`` (elastic deformation, affine, bias field, gamma,
noise for the brain templates; off for the phantoms). The copies join the training set
as extra images: a pass of the queue visits the original and its copies, and the class
quotas are spread over all of them. Cost: ``copies`` times the image's memory and the
augmentation time of each copy, once per run (both measured in docs/CHANGELOG.md).

Spatial transforms move the image, its label and its sampling mask together (labels
and mask by nearest neighbour); intensity transforms act on the normalised image. Each
copy is seeded by the run's seed, the task and the case ID, so runs repeat exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

import torch
import torchio as tio

from mtseg.data.seeds import AUGMENTATION, seed_integer
from mtseg.tasks import TASK_ORDER

PrepareFn = Callable[[tio.Subject, Callable[[tio.Subject], tio.Subject]], tio.Subject]


class TrainingAugmentation:
    """Augmented copies of training subjects.

    Args:
        transforms: TorchIO transforms applied, in order, to a preprocessed subject.
        copies: Augmented copies per training subject (0: augmentation off).
        seed: The run's seed.
        task: The task, part of each copy's seed.
    """

    def __init__(self, transforms: Sequence[tio.Transform], copies: int, seed: int, task: str):
        if copies < 0:
            raise ValueError(f"data.{task}.augmentation.copies must be 0 or more, got {copies}")
        if copies and not transforms:
            raise ValueError(f"data.{task}.augmentation.copies={copies} but no augmentation transforms are listed")
        self.transform = tio.Compose(list(transforms))
        self.copies = int(copies)
        self.seed = int(seed)
        self.task = task

    @classmethod
    def from_config(cls, cfg: Mapping | None, seed: int, task: str) -> TrainingAugmentation:
        """From ``data.<task>.augmentation`` (``copies``, ``transforms``); ``None`` is off."""
        cfg = dict(cfg or {})
        return cls(list(cfg.get("transforms") or []), int(cfg.get("copies", 0)), seed, task)

    def copy_seed(self, case_id: str, copy: int) -> int:
        return seed_integer(self.seed, AUGMENTATION, TASK_ORDER.index(self.task), zlib.crc32(str(case_id).encode()), copy)

    def augment(self, subject: tio.Subject, copy: int) -> tio.Subject:
        """Copy number ``copy`` of a preprocessed ``subject`` (a new subject; ``subject`` is unchanged)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.copy_seed(subject["case_id"], copy))
            augmented = self.transform(subject)
        augmented["case_id"] = f"{subject['case_id']}_aug{copy}"
        augmented.update_attributes()
        return augmented

    def prepare(self, subject: tio.Subject, preprocessing: tio.Transform, prepare: PrepareFn, training: bool) -> list[tio.Subject]:
        """Prepared subjects for one raw ``subject``: itself and, in training, its augmented copies.

        Args:
            subject: A raw subject from a source.
            preprocessing: The task's preprocessing.
            prepare: Checks and prepares a subject for sampling given a transform to apply
                first (:func:`mtseg.data.subjects.prepare_subject` with its radius and padding).
            training: Whether ``subject`` is a training image (only those are augmented).
        """
        if not training or self.copies == 0:
            return [prepare(subject, preprocessing)]
        preprocessed = preprocessing(subject)  # once; every copy starts from it
        copies = [prepare(self.augment(preprocessed, k), _unchanged) for k in range(1, self.copies + 1)]
        return [prepare(preprocessed, _unchanged), *copies]


def _unchanged(subject: tio.Subject) -> tio.Subject:
    return subject
