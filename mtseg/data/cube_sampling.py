"""Compute-sharing training items: class-balanced cubes of target voxels, as a TorchIO sampler.

In ``training=dense`` a training item is a cube of ``cube³`` target voxels with its context
of ``depth`` voxels on every side (a 3-D patch, TorchIO's own kind of item); the queue holds
blocks of cube positions, and the contexts are gathered on the training device. The network
runs its stack over the cube's axial, sagittal and coronal context slices at once
(:meth:`~mtseg.model.TriplanarCNN.forward_cubes`), so every target voxel is classified from
exactly its own three 51×51 patches at a fraction of the cost of one patch per voxel.

Where cubes go is decided as in the paper's sampling: the cube centres are drawn
class-balanced with the same :class:`~mtseg.data.sampling.ClassVoxelIndex` and class quotas
as triplanar samples (so rare classes such as the coronary arteries or the brain stem still
decide where cubes lie), only at voxels above the task's threshold. Within a cube, voxels at
or below the threshold carry the target :data:`IGNORE`; the loss weights
(:func:`mtseg.training.cube_loss.dense_loss_weights`) restore class and task balance.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
import torchio as tio

from mtseg.data.sampling import (
    NOT_ELIGIBLE,
    NUM_SAMPLES,
    SUBJECT_ID,
    VOLUME,
    MinibatchStream,
    PreparedSubjectSampler,
    draw_balanced_centres,
)
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import LabelSpace

#: Target of voxels the loss ignores (at or below the task's threshold); ``F.cross_entropy``'s default.
IGNORE = -100


class ClassBalancedCubeSampler(PreparedSubjectSampler):
    """Yield blocks of cubes of one subject, their centres drawn class-balanced as in
    :class:`~mtseg.data.sampling.ClassBalancedTriplanarSampler`.

    A visit of a subject yields ``subject.num_samples`` blocks (one when the subject has none)
    of ``block`` cubes each; the centres are split over the classes in proportion to the
    subject's :data:`~mtseg.data.sampling.CLASS_QUOTA`, and each cube is placed around its
    centre and shifted inwards at the volume's borders. A block is one item of the TorchIO
    queue: ``subject`` ``(block,)`` (the subject's :data:`~mtseg.data.sampling.SUBJECT_ID`) and
    ``start`` ``(block, 3)``, each cube's first target voxel. Contexts and targets are gathered
    on the training device (:meth:`~mtseg.data.training_volumes.TrainingVolumes.cubes`).

    Args:
        radius: The model's depth (context on each side of the cube).
        cube: Target voxels per side of a cube.
        block: Cubes per queue item.
        generator: Random generator, for reproducible sampling.
    """

    def __init__(self, radius: int, cube: int, block: int, generator: torch.Generator | None = None):
        if cube < 1:
            raise ValueError(f"training.cube must be positive, got {cube}")
        if block < 1:
            raise ValueError(f"the block of a queue item must hold at least one cube, got {block}")
        super().__init__(patch_size=cube)
        self.radius = radius
        self.cube = cube
        self.block = block
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw_block(self, subject: tio.Subject, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (flat voxel indices) of ``n`` cubes of ``subject`` and the first voxel ``(n, 3)`` of each cube."""
        volume: TriplanarVolume = subject[VOLUME]
        if volume.radius != self.radius:
            raise ValueError(f"volume padded for radius {volume.radius}, sampler wants {self.radius}")
        centres, _ = draw_balanced_centres(subject, n, self.generator)
        return centres, volume.cube_start(centres, self.cube)

    def _generate_patches(self, subject: tio.Subject) -> Generator[dict]:
        blocks = int(subject.get(NUM_SAMPLES, 1))
        while True:
            _, starts = self.draw_block(subject, blocks * self.block)
            ids = torch.full((self.block,), int(subject[SUBJECT_ID]))
            for block_starts in starts.split(self.block):
                yield {"subject": ids, "start": block_starts}


class TaskBalancedCubes(MinibatchStream):
    """Mini-batches of cube indices: ``cubes_per_task`` cubes from each task's queue.

    Each mini-batch is a dict with ``subject`` ``(B,)``, ``start`` ``(B, 3)`` and ``task``
    ``(B,)`` (index into the experiment's tasks), ``B = cubes_per_task · T``;
    :class:`~mtseg.data.training_volumes.TrainingVolumes` adds ``context`` ``(B, S, S, S)`` and
    ``target`` ``(B, k, k, k)`` (the experiment's output channels, :data:`IGNORE` at or below
    the threshold) on the training device.

    Args:
        new_queues: ``new_queues(k)``: :class:`~mtseg.data.sampling.BlockQueue` of cubes per task, for segment ``k``.
        tasks: The experiment's tasks.
        cubes_per_task: Cubes of each task per mini-batch.
        **stream: ``length``, ``start``, ``segment`` and ``seed`` of :class:`~mtseg.data.sampling.MinibatchStream`.
    """

    def __init__(self, new_queues, tasks: list[str], cubes_per_task: int, **stream):
        if cubes_per_task < 1:
            raise ValueError(f"training.cubes_per_task must be positive, got {cubes_per_task}")
        super().__init__(new_queues, **stream)
        self.tasks = list(tasks)
        self.cubes_per_task = cubes_per_task
        self.task_ids = torch.arange(len(self.tasks)).repeat_interleave(cubes_per_task)

    def draw(self, queues: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cubes = [queues[task].take(self.cubes_per_task) for task in self.tasks]
        return {
            "subject": torch.cat([c["subject"] for c in cubes]),
            "start": torch.cat([c["start"] for c in cubes]),
            "task": self.task_ids.clone(),
        }


def cube_target_luts(label_space: LabelSpace) -> torch.Tensor:
    """``(T, 256)``: for each task, its class code to the experiment's output channel, :data:`IGNORE` for
    :data:`~mtseg.data.sampling.NOT_ELIGIBLE` (at or below the threshold)."""
    luts = torch.full((len(label_space.tasks), NOT_ELIGIBLE + 1), IGNORE, dtype=torch.long)
    for task_id, task in enumerate(label_space.tasks):
        channels = label_space.global_labels(task)
        luts[task_id, : len(channels)] = channels
    return luts
