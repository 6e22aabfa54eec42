"""Class-balanced triplanar sampling (paper §3.2), as a TorchIO patch sampler.

For each task, samples are drawn from all training images, balanced over the
task's classes (background included), with centres only at voxels whose stored
intensity is above the task's threshold. Where each class's eligible centres lie
is worked out once per subject (:class:`ClassVoxelIndex`), never per refill: rare
classes keep an explicit index list, frequent ones (such as background, which can
cover most of a 512×512×400 CTA) are drawn by rejection from a one-byte code
volume, so memory stays bounded at about 1 byte per voxel plus the rare voxels.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch
import torchio as tio
from torchio.data.sampler import RandomSampler

from mtseg.data.triplanar import TriplanarVolume

#: Code for voxels that may not be sample centres (intensity at or below the threshold).
NOT_ELIGIBLE = 255
#: Subject key of the :class:`TriplanarVolume` built once per subject.
VOLUME = "triplanar_volume"
#: Subject key of the :class:`ClassVoxelIndex` built once per subject.
CLASS_INDEX = "class_voxel_index"


def stratified_counts(total: int, n_groups: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``total`` equally over ``n_groups``; the remainder goes to groups chosen at random."""
    counts = torch.full((n_groups,), total // n_groups, dtype=torch.long)
    extra = torch.randperm(n_groups, generator=generator)[: total % n_groups]
    counts[extra] += 1
    return counts


class ClassVoxelIndex:
    """Eligible sample centres of every class in one volume.

    Args:
        label: ``(X, Y, Z)`` task-local labels.
        eligible: ``(X, Y, Z)`` boolean mask of voxels that may be sample centres.
        n_classes: Number of task-local classes, background included.
        listed_fraction: Classes covering at most this fraction of the volume keep an
            explicit list of their voxels; the others are drawn by rejection sampling.
    """

    def __init__(
        self,
        label: torch.Tensor,
        eligible: torch.Tensor,
        n_classes: int,
        listed_fraction: float = 0.25,
    ):
        if n_classes >= NOT_ELIGIBLE:
            raise ValueError(f"at most {NOT_ELIGIBLE - 1} classes are supported")
        label = label.reshape(-1)
        if int(label.max()) >= n_classes or (label.is_signed() and int(label.min()) < 0):
            raise ValueError(
                f"label values must lie in 0..{n_classes - 1}, found {int(label.min())}..{int(label.max())}"
            )
        self.codes = torch.where(eligible.reshape(-1).bool(), label, NOT_ELIGIBLE).to(torch.uint8)
        self.counts = torch.bincount(self.codes.long(), minlength=NOT_ELIGIBLE + 1)[:n_classes]
        self.fractions = self.counts.double() / self.codes.numel()
        self.listed: list[torch.Tensor | None] = [
            torch.nonzero(self.codes == c).flatten() if 0 < f <= listed_fraction else None
            for c, f in enumerate(self.fractions.tolist())
        ]

    @property
    def present(self) -> torch.Tensor:
        """Classes with at least one eligible voxel."""
        return torch.nonzero(self.counts).flatten()

    def draw(self, cls: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` flat voxel indices of class ``cls``, uniformly with replacement."""
        if self.counts[cls] == 0:
            raise ValueError(f"class {cls} has no eligible voxel in this volume")
        listed = self.listed[cls]
        if listed is not None:
            return listed[torch.randint(len(listed), (n,), generator=generator)]
        found: list[torch.Tensor] = []
        missing = n
        batch = int(np.ceil(1.2 * n / float(self.fractions[cls]))) + 16
        while missing > 0:
            candidates = torch.randint(self.codes.numel(), (batch,), generator=generator)
            hits = candidates[self.codes[candidates] == cls][:missing]
            found.append(hits)
            missing -= len(hits)
        return torch.cat(found)


class ClassBalancedTriplanarSampler(RandomSampler):
    """Yield triplanar samples of one subject, each present class equally often.

    Every block of ``block_size`` samples holds ``block_size // K`` samples of each of
    the ``K`` classes present in the subject, the remainder going to classes drawn at
    random, in random order. The subject must carry a :class:`TriplanarVolume` under
    ``VOLUME`` and a :class:`ClassVoxelIndex` under ``CLASS_INDEX`` (the data module
    builds both once). Samples are dicts with ``planes`` ``(3, P, P)`` and the
    task-local ``label``.

    Args:
        radius: Half the patch side; patches are ``2·radius + 1`` wide.
        block_size: Samples gathered per vectorised extraction; use the queue's
            samples per volume so each visit of a subject is exactly balanced.
        generator: Random generator, for reproducible sampling.
    """

    def __init__(self, radius: int, block_size: int, generator: torch.Generator | None = None):
        # The triplanar extent is served by padding, so any volume size works:
        # TorchIO's 3-D patch-size check is given a single voxel.
        super().__init__(patch_size=1)
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.radius = radius
        self.block_size = block_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw_block(self, subject: tio.Subject, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` class-balanced samples of ``subject``: planes ``(n, 3, P, P)`` and labels ``(n,)``."""
        index: ClassVoxelIndex = subject[CLASS_INDEX]
        volume: TriplanarVolume = subject[VOLUME]
        if volume.radius != self.radius:
            raise ValueError(f"volume padded for radius {volume.radius}, sampler wants {self.radius}")
        present = index.present
        counts = stratified_counts(n, len(present), self.generator)
        labels = torch.repeat_interleave(present, counts)
        centres = torch.cat(
            [index.draw(int(c), int(k), self.generator) for c, k in zip(present, counts) if k > 0]
        )
        order = torch.randperm(n, generator=self.generator)
        return volume.extract(centres[order]), labels[order]

    def _generate_patches(self, subject: tio.Subject) -> Generator[dict]:
        while True:
            planes, labels = self.draw_block(subject, self.block_size)
            for sample_planes, label in zip(planes, labels):
                yield {"planes": sample_planes, "label": label}
