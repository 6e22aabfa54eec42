"""Class-balanced triplanar sampling (paper §3.2), as a TorchIO patch sampler.

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
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import numpy as np
import torch
import torchio as tio
from torch.utils.data import IterableDataset
from torchio.data.sampler import RandomSampler

from mtseg.data.triplanar import TriplanarVolume
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
#: Subject key of a training subject's index in :class:`~mtseg.data.training_volumes.TrainingVolumes`.
SUBJECT_ID = "training_id"


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


def draw_balanced_centres(subject: tio.Subject, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sample centres of ``subject`` (flat voxel indices) and their task-local labels, in random order.

    The classes get shares of ``n`` in proportion to the subject's :data:`CLASS_QUOTA`
    (equal shares of its present classes when it has none), the remainder going to classes
    drawn at random; each class's centres are drawn from its :data:`CLASS_INDEX`.
    """
    index: ClassVoxelIndex = subject[CLASS_INDEX]
    quota = subject.get(CLASS_QUOTA)
    weights = quota if quota is not None else (index.counts > 0).double()
    counts = proportional_counts(n, weights, generator)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
    centres = torch.cat([index.draw(c, k, generator) for c, k in enumerate(counts.tolist()) if k > 0])
    order = torch.randperm(n, generator=generator)
    return centres[order], labels[order]


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded by ``seed`` and ``keys``, independent of every other combination."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


#: What a random generator is for; part of its seed (1 was the former validation draw).
SAMPLING, TASK_SPLIT, QUEUE_SHUFFLE = 0, 2, 3


def rank_keys(rank: int) -> tuple[int, ...]:
    """Extra seed keys of process ``rank`` under DDP: none for rank 0, whose streams are the single process's."""
    return () if rank == 0 else (rank,)


class MinibatchStream(IterableDataset):
    """A stream of training mini-batches, each a function of (seed, its step) only.

    The stream yields the mini-batches of steps ``start .. length - 1`` (endless when
    ``length`` is ``None``). It is cut into segments of ``segment`` steps (one evaluation
    interval; the whole run when ``None``): each segment draws from fresh queues
    (``new_queues(k)`` for segment ``k``, their samplers seeded by ``(seed, k)``), and TorchIO's
    own shuffles use a random state of the stream's, seeded by ``(seed, k)`` and kept apart
    from the process's. A run resumed at step ``s`` therefore gets exactly the mini-batches
    that the uninterrupted run got: the segment of ``s`` is replayed from its start (at most
    one evaluation interval of sampling, no training), the rest is drawn as usual.

    Args:
        new_queues: ``new_queues(k)``: the task's TorchIO queues of segment ``k``.
        length: The run's steps, or ``None`` for an endless stream.
        start: The first step to yield (a resumed run's ``global_step``).
        segment: Steps per segment, or ``None`` for one segment.
        seed: The run's seed.
        rank: The process's rank under DDP (its own stream; rank 0's is the single-process stream).
    """

    def __init__(
        self, new_queues, length: int | None = None, start: int = 0, segment: int | None = None, seed: int = 0, rank: int = 0
    ):
        if segment is not None and segment < 1:
            raise ValueError(f"segment must be positive or None, got {segment}")
        self.new_queues = new_queues
        self.length = length
        self.start = start
        self.segment = segment
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        """The run's steps (``length``), also when resumed: Lightning counts a resumed epoch's batches
        from the restored step, so it expects exactly the ``length - start`` batches yielded."""
        if self.length is None:
            raise TypeError("an endless stream of mini-batches has no length")
        return self.length

    def draw(self, queues: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One mini-batch from the segment's ``queues``; ``generator`` is the segment's own."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step, current = self.start, None
        while self.length is None or step < self.length:
            k = step // self.segment if self.segment else 0
            if k != current:
                current, generator = k, seeded_generator(self.seed, TASK_SPLIT, k, *rank_keys(self.rank))
                state = seeded_generator(self.seed, QUEUE_SHUFFLE, k, *rank_keys(self.rank)).get_state()
                queues, state = self._private(lambda: self.new_queues(k), state)  # TorchIO draws when it builds a queue
                for _ in range(k * (self.segment or 0), step):  # replay the segment up to a resumed step
                    _, state = self._private(lambda: self.draw(queues, generator), state)
            batch, state = self._private(lambda: self.draw(queues, generator), state)
            yield batch
            step += 1

    @staticmethod
    def _private(call, state: torch.Tensor):
        """``call()`` on the stream's CPU random ``state`` (``torch.random.fork_rng`` restores the process's
        afterwards); returns its result and the stream's new state."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            return call(), torch.get_rng_state()


class PreparedSubjectSampler(RandomSampler):
    """A TorchIO random sampler of prepared subjects, whose space was checked once when they were
    prepared (:func:`~mtseg.data.datamodule.prepare_subject`): TorchIO's check at every visit
    compares every image's affine again and cost more than the visit's sampling."""

    def __call__(self, subject: tio.Subject, num_patches: int | None = None) -> Generator[dict]:
        return self._generate_patches(subject)


class ClassBalancedTriplanarSampler(PreparedSubjectSampler):
    """Yield blocks of triplanar sample centres of one subject, its classes in the proportions of its quotas.

    A visit of a subject yields ``subject.num_samples`` blocks (one when the subject has
    none) of ``block`` samples each: their centres are drawn at once, split over the classes
    in proportion to the subject's :data:`CLASS_QUOTA` (equally over its present classes when
    it has none), the remainder going to classes drawn at random, and cut in random order into
    blocks. A block is one item of the TorchIO queue: ``subject`` ``(block,)`` (the subject's
    :data:`SUBJECT_ID`), ``centre`` ``(block,)`` flat voxel indices and the task-local
    ``label`` ``(block,)``. The patches themselves are gathered on the training device
    (:class:`~mtseg.data.training_volumes.TrainingVolumes`), so the queue's Python runs once per
    block, not once per sample.

    Args:
        radius: Half the patch side; patches are ``2·radius + 1`` wide.
        block: Samples per queue item.
        generator: Random generator, for reproducible sampling.
    """

    def __init__(self, radius: int, block: int, generator: torch.Generator | None = None):
        # The triplanar extent is served by padding, so any volume size works:
        # TorchIO's 3-D patch-size check is given a single voxel.
        super().__init__(patch_size=1)
        if block < 1:
            raise ValueError(f"the block of a queue item must hold at least one sample, got {block}")
        self.radius = radius
        self.block = block
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw_block(self, subject: tio.Subject, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` class-balanced sample centres of ``subject`` (flat voxel indices) and their task-local labels."""
        volume: TriplanarVolume = subject[VOLUME]
        if volume.radius != self.radius:
            raise ValueError(f"volume padded for radius {volume.radius}, sampler wants {self.radius}")
        return draw_balanced_centres(subject, n, self.generator)

    def _generate_patches(self, subject: tio.Subject) -> Generator[dict]:
        blocks = int(subject.get(NUM_SAMPLES, 1))
        while True:
            centres, labels = self.draw_block(subject, blocks * self.block)
            ids = torch.full((self.block,), int(subject[SUBJECT_ID]))
            for block_centres, block_labels in zip(centres.split(self.block), labels.split(self.block)):
                yield {"subject": ids, "centre": block_centres, "label": block_labels}


class BlockQueue:
    """A TorchIO queue of blocks (dicts of equally long tensors), taken from sample by sample.

    :meth:`take` returns ``n`` samples: whole blocks in the queue's (shuffled) order, the last
    one cut, its rest kept for the next call, so no sample is lost and the queue's Python
    runs once per block.
    """

    def __init__(self, queue: tio.Queue):
        self.queue = queue
        self.rest: dict[str, torch.Tensor] | None = None

    def take(self, n: int) -> dict[str, torch.Tensor]:
        parts, have = [], 0
        while have < n:
            block, self.rest = (self.rest if self.rest is not None else self.queue[0]), None
            size = len(next(iter(block.values())))
            if size > n - have:
                cut = n - have
                block, self.rest = {k: v[:cut] for k, v in block.items()}, {k: v[cut:] for k, v in block.items()}
                size = cut
            parts.append(block)
            have += size
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
