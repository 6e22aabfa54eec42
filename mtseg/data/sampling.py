"""Class-balanced sampling (paper §3.2): where samples (or cube centres) go in each training image.

For each task, samples are drawn from all training images, balanced over the
task's classes (background included), with centres only at voxels whose stored
intensity is above the task's threshold. Where each class's eligible centres lie
is worked out once per subject (:class:`ClassVoxelIndex`), never per refill: rare
classes keep an explicit list of their voxels (4 bytes each), frequent ones (such as
background, which can cover most of a 512×512×400 CTA) are drawn by rejection from a
one-byte code volume.

Balance holds over the task's classes, not only over the classes of each image:
:func:`class_quotas` gives each class the same number of samples per pass over the
training images, split over the images that contain it, so a class found in one image
of six is sampled as often as a class found in all six.

The training modes (:mod:`mtseg.training.patches`, :mod:`mtseg.training.cubes`) draw their queue
items with :func:`draw_balanced_centres`; :mod:`mtseg.data.torchio_adapters` serves them through
TorchIO's queue.
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from mtseg.tasks import check_label_range

#: Code for voxels that may not be sample centres (intensity at or below the threshold).
NOT_ELIGIBLE = 255
#: Subject key of the :class:`TriplanarVolume` built once per subject.
VOLUME = "triplanar_volume"
#: Subject key of the :class:`ClassVoxelIndex` built once per subject.
CLASS_INDEX = "class_voxel_index"
#: Subject key of the samples each class gets per visit of the subject (see :func:`class_quotas`).
CLASS_QUOTA = "class_quota"
#: TorchIO's subject attribute for the number of items (blocks of samples) drawn per visit.
NUM_SAMPLES = "num_samples"
#: Subject key of a training subject's index in :class:`~mtseg.data.training_volumes.TrainingVolumes`
#: (the ``volume_id`` of the training modes' mini-batches).
VOLUME_ID = "training_volume_id"


def proportional_counts(total: int, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Split ``total`` over groups in proportion to ``weights``.

    Each group gets the integer part of its share; the remainder goes to groups drawn at
    random (without replacement, in proportion to the fractional parts of their shares).
    With equal weights this is ``total // n`` each plus one for ``total % n`` random groups.
    """
    share = total * weights.double() / weights.double().sum()
    counts = share.floor().long()
    remainder = total - int(counts.sum())
    if remainder:
        fractions = share - counts
        counts[torch.multinomial(fractions, remainder, replacement=False, generator=generator)] += 1
    return counts


def class_quotas(counts: torch.Tensor, samples_per_volume: int) -> torch.Tensor:
    """Samples per visit of each image for each class, so every class is drawn equally often.

    Args:
        counts: ``(S, K)`` eligible voxels of each class in each of the ``S`` training images.
        samples_per_volume: Samples per visit of an image that holds every class.

    Returns:
        ``(S, K)`` quotas: a pass over the ``S`` images yields ``S · samples_per_volume / K``
        samples of each class, split equally over the images that contain it.
    """
    present = counts > 0
    n_images, n_classes = counts.shape
    per_class = n_images * samples_per_volume / n_classes
    return present.double() * per_class / present.sum(0, keepdim=True).clamp_min(1)


class ClassVoxelIndex:
    """Eligible sample centres of every class in one volume.

    Args:
        label: ``(X, Y, Z)`` task-local labels.
        eligible: ``(X, Y, Z)`` boolean mask of voxels that may be sample centres.
        n_classes: Number of task-local classes, background included.
        listed_fraction: Classes covering at most this fraction of the volume keep an
            explicit list of their voxels; the others are drawn by rejection sampling
            (at least ``listed_fraction`` of the candidates are accepted).
    """

    def __init__(
        self,
        label: torch.Tensor,
        eligible: torch.Tensor,
        n_classes: int,
        listed_fraction: float = 0.1,
    ):
        if n_classes >= NOT_ELIGIBLE:
            raise ValueError(f"at most {NOT_ELIGIBLE - 1} classes are supported")
        #: The volume's shape (the codes are flat).
        self.shape = tuple(label.shape)
        label = label.reshape(-1)
        check_label_range(label, n_classes, "class voxel index")
        self.codes = torch.where(eligible.reshape(-1).bool(), label, NOT_ELIGIBLE).to(torch.uint8)
        self.counts = torch.bincount(self.codes, minlength=NOT_ELIGIBLE + 1)[:n_classes]
        self.fractions = self.counts.double() / self.codes.numel()
        index_type = torch.int32 if self.codes.numel() < 2**31 else torch.int64
        self.listed: list[torch.Tensor | None] = [
            torch.nonzero(self.codes == c).flatten().to(index_type) if 0 < f <= listed_fraction else None
            for c, f in enumerate(self.fractions.tolist())
        ]
        self._near_background: dict[int, torch.Tensor] = {}

    @property
    def present(self) -> torch.Tensor:
        """Classes with at least one eligible voxel."""
        return torch.nonzero(self.counts).flatten()

    def near_background(self, radius: int) -> torch.Tensor:
        """Flat indices of the eligible background voxels within ``radius`` voxels along every axis (a box) of an
        eligible labelled voxel: the background a patch of a labelled voxel's neighbourhood sees. Built once per
        radius (three separable max-pools of the labelled mask), then kept."""
        if radius not in self._near_background:
            codes = self.codes.view(self.shape)
            near = ((codes > 0) & (codes != NOT_ELIGIBLE)).float()[None, None]
            for axis in range(3):
                kernel = [1, 1, 1]
                kernel[axis] = 2 * radius + 1
                padding = [k // 2 for k in kernel]
                near = torch.nn.functional.max_pool3d(near, tuple(kernel), stride=1, padding=tuple(padding))
            near = near[0, 0].bool().flatten() & (self.codes == 0)
            index_type = torch.int32 if self.codes.numel() < 2**31 else torch.int64
            self._near_background[radius] = torch.nonzero(near).flatten().to(index_type)
        return self._near_background[radius]

    def draw(self, cls: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` flat voxel indices of class ``cls``, uniformly with replacement."""
        if self.counts[cls] == 0:
            raise ValueError(f"class {cls} has no eligible voxel in this volume")
        listed = self.listed[cls]
        if listed is not None:
            return listed[torch.randint(len(listed), (n,), generator=generator)].long()
        found: list[torch.Tensor] = []
        missing = n
        batch = int(np.ceil(1.2 * n / float(self.fractions[cls]))) + 16
        while missing > 0:
            candidates = torch.randint(self.codes.numel(), (batch,), generator=generator)
            hits = candidates[self.codes[candidates] == cls][:missing]
            found.append(hits)
            missing -= len(hits)
        return torch.cat(found)


def draw_balanced_centres(
    subject: tio.Subject, n: int, generator: torch.Generator, background_near: float | None = None, radius: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sample centres of ``subject`` (flat voxel indices) and their task-local labels, in random order.

    The classes get shares of ``n`` in proportion to the subject's :data:`CLASS_QUOTA`
    (equal shares of its present classes when it has none), the remainder going to classes
    drawn at random; each class's centres are drawn from its :data:`CLASS_INDEX`.

    ``background_near`` (a departure from the paper; ``None`` or 0 is the paper's sampling): that share of
    the background centres is drawn from the background within ``radius`` voxels of labelled tissue
    (:meth:`ClassVoxelIndex.near_background`), the rest as the paper draws them, anywhere above the threshold.
    """
    index: ClassVoxelIndex = subject[CLASS_INDEX]
    quota = subject.get(CLASS_QUOTA)
    weights = quota if quota is not None else (index.counts > 0).double()
    counts = proportional_counts(n, weights, generator)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
    centres = torch.cat([
        _draw_background(index, k, generator, background_near, radius) if c == 0 and background_near else index.draw(c, k, generator)
        for c, k in enumerate(counts.tolist()) if k > 0
    ])
    order = torch.randperm(n, generator=generator)
    return centres[order], labels[order]


def _draw_background(index: ClassVoxelIndex, n: int, generator: torch.Generator, near_share: float, radius: int) -> torch.Tensor:
    """``n`` background centres, ``near_share`` of them within ``radius`` voxels of labelled tissue (none there when the
    image has no such background), the rest from all eligible background."""
    near = index.near_background(radius)
    k = int(round(near_share * n)) if len(near) else 0
    parts = [near[torch.randint(len(near), (k,), generator=generator)].long()] if k else []
    if n - k:
        parts.append(index.draw(0, n - k, generator))
    return torch.cat(parts)
