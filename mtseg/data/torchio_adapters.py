"""Where mtseg adapts TorchIO's queue and sampler, and which parts of their contract it relies on.

From queue to mini-batch, in the order of the calls (one task; :mod:`mtseg.data.datamodule` builds
a queue per task and :mod:`mtseg.data.minibatch_stream` draws from all of them):

1. ``tio.Queue`` asks :class:`PreparedSubjectsDataset` for subjects (``shuffle_subjects``; no workers,
   ``num_workers=0``). The dataset hands over each prepared subject *as it is*: TorchIO's own
   ``SubjectsDataset`` deep-copies every subject, i.e. every whole volume at every refill, and these
   subjects are only read.
2. For each subject the queue calls the sampler, :class:`BlockSampler`, and takes
   ``subject.num_samples`` items from the generator it returns (TorchIO's per-subject
   ``num_samples`` attribute, :data:`~mtseg.data.sampling.NUM_SAMPLES`, which mtseg sets from the
   class quotas). :class:`BlockSampler` skips the space check of TorchIO's ``RandomSampler.__call__``
   (every image's affine compared again at every visit, which cost more than the visit's sampling:
   :func:`~mtseg.data.subjects.prepare_subject` checks the space once). An *item* is not a patch but
   a block of ``block`` sample positions of one subject (indices only, a few hundred bytes), drawn
   by the training mode (:meth:`~mtseg.training.mode.TrainingMode.draw_items`). ``patch_size`` is
   what TorchIO checks against the volume: 1 for triplanar samples (their 51×51 extent is served
   by padding, so any volume size works), the cube's side for cubes.
3. The queue shuffles its items (``shuffle_patches``) and :class:`BlockQueue` takes them by
   indexing the queue directly, ``queue[0]`` (the ``Dataset.__getitem__`` that TorchIO's queue
   implements to pop its next item and refill when empty), not through a ``DataLoader``: a
   mini-batch takes a number of *samples* from each task, so blocks are cut and their rest kept.
4. TorchIO shuffles with the process's global random state. Each call that can draw there
   (building a queue, taking from it) runs on the stream's own state (:func:`with_random_state`),
   so sampling is a function of the seed alone and never shifts the dropout masks, or vice versa.

Used of TorchIO's contract: ``Queue(dataset, max_length, samples_per_volume, sampler, num_workers=0,
shuffle_subjects, shuffle_patches)`` with ``queue[0]`` popping the next item; ``RandomSampler(patch_size)``
with ``_generate_patches(subject)`` yielding items; ``SubjectsDataset`` with ``_subjects`` and
``_transform``; ``Subject.get``/``update_attributes``. Nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import torch
import torchio as tio
from torchio.data.sampler import RandomSampler

from mtseg.data.sampling import NUM_SAMPLES, VOLUME_ID

#: ``draw(subject, n)``: ``n`` items of one subject, a dict of tensors with ``n`` rows each.
DrawItems = Callable[[tio.Subject, int], dict[str, torch.Tensor]]


class PreparedSubjectsDataset(tio.SubjectsDataset):
    """Subjects preprocessed once and kept in memory, handed to the queue without TorchIO's deep copy."""

    def __getitem__(self, index: int) -> tio.Subject:
        subject = self._subjects[int(index)]
        return self._transform(subject) if self._transform is not None else subject


class BlockSampler(RandomSampler):
    """A TorchIO sampler of prepared subjects yielding blocks of ``block`` items drawn by ``draw``.

    A visit of a subject draws ``subject.num_samples · block`` items at once (one block when the
    subject has no ``num_samples``) and yields them in blocks: ``volume_id`` ``(block,)`` (the
    subject's :data:`~mtseg.data.sampling.VOLUME_ID`) and ``draw``'s entries cut into ``block`` rows.

    Args:
        draw: The training mode's items of one subject (:meth:`~mtseg.training.mode.TrainingMode.draw_items`).
        block: Items per queue entry.
        patch_size: The extent TorchIO checks against each volume (1: none).
    """

    def __init__(self, draw: DrawItems, block: int, patch_size: int = 1):
        if block < 1:
            raise ValueError(f"the block of a queue item must hold at least one item, got {block}")
        super().__init__(patch_size=patch_size)
        self.draw = draw
        self.block = block

    def __call__(self, subject: tio.Subject, num_patches: int | None = None) -> Generator[dict]:
        return self._generate_patches(subject)

    def _generate_patches(self, subject: tio.Subject) -> Generator[dict]:
        blocks = int(subject.get(NUM_SAMPLES, 1))
        while True:
            items = self.draw(subject, blocks * self.block)
            ids = torch.full((self.block,), int(subject[VOLUME_ID]))
            for parts in zip(*(value.split(self.block) for value in items.values())):
                yield {"volume_id": ids, **dict(zip(items, parts))}


class BlockQueue:
    """A TorchIO queue of blocks (dicts of equally long tensors), taken from item by item.

    :meth:`take` returns ``n`` items: whole blocks in the queue's (shuffled) order, the last
    one cut, its rest kept for the next call, so no item is lost and the queue's Python
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


def sampling_queue(subjects: Sequence[tio.Subject], sampler: BlockSampler, max_length: int, samples_per_volume: int) -> BlockQueue:
    """A TorchIO queue of blocks of ``sampler.block`` items drawn by ``sampler`` from prepared ``subjects``.

    ``max_length`` and ``samples_per_volume`` count items (samples or cubes), as in the config;
    the queue holds ``max_length // block`` blocks. Served from the main process: the subjects
    are preprocessed once and held in memory, workers would copy whole volumes, and an item is
    only a block of indices (the gather runs on the training device).
    """
    block = sampler.block
    return BlockQueue(
        tio.Queue(
            PreparedSubjectsDataset(list(subjects)),
            max_length=max(1, max_length // block),
            samples_per_volume=max(1, samples_per_volume // block),
            sampler=sampler,
            num_workers=0,
            shuffle_subjects=True,
            shuffle_patches=True,
        )
    )


def with_random_state(call: Callable[[], object], state: torch.Tensor) -> tuple[object, torch.Tensor]:
    """``call()`` on the CPU random ``state`` (``torch.random.fork_rng`` restores the process's afterwards);
    returns its result and the new state. TorchIO's shuffles draw from the global state."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        return call(), torch.get_rng_state()
