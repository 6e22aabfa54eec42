"""Compute-sharing training items: class-balanced cubes of target voxels, as a TorchIO sampler.

In ``training=dense`` a training item is a cube of ``cube³`` target voxels with its context
of ``depth`` voxels on every side (a 3-D patch, TorchIO's own kind of item). The network
runs its stack over the cube's axial, sagittal and coronal context slices at once
(:meth:`~mtseg.model.TriplanarCNN.forward_cubes`), so every target voxel is classified from
exactly its own three 51×51 patches at a fraction of the cost of one patch per voxel.

Where cubes go is decided as in the paper's sampling: the cube centres are drawn
class-balanced with the same :class:`~mtseg.data.sampling.ClassVoxelIndex` and class quotas
as triplanar samples (so rare classes such as the coronary arteries or the brain stem still
decide where cubes lie), only at voxels above the task's threshold. Within a cube, voxels at
or below the threshold carry the target :data:`IGNORE`; the loss weights
(:func:`mtseg.dense_loss.dense_loss_weights`) restore class and task balance.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
import torchio as tio
from torchio.data.sampler import RandomSampler

from mtseg.data.sampling import CLASS_INDEX, NOT_ELIGIBLE, NUM_SAMPLES, VOLUME, MinibatchStream, draw_balanced_centres
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import LabelSpace

#: Target of voxels the loss ignores (at or below the task's threshold); ``F.cross_entropy``'s default.
IGNORE = -100


class ClassBalancedCubeSampler(RandomSampler):
    """Yield cubes of one subject, their centres drawn class-balanced as in :class:`ClassBalancedTriplanarSampler`.

    A visit of a subject draws ``subject.num_samples`` cube centres (``block_size`` when the
    subject has none), split over the classes in proportion to the subject's
    :data:`~mtseg.data.sampling.CLASS_QUOTA`; each cube is placed around its centre and
    shifted inwards at the volume's borders. Items are dicts with ``context``
    ``(S, S, S)`` intensities (``S = cube + 2·radius``) and ``codes`` ``(cube, cube, cube)``
    uint8 task-local labels, :data:`~mtseg.data.sampling.NOT_ELIGIBLE` where the voxel is at
    or below the threshold.

    Args:
        radius: The model's depth (context on each side of the cube).
        cube: Target voxels per side of a cube.
        block_size: Cubes per visit of subjects without ``num_samples``.
        generator: Random generator, for reproducible sampling.
    """

    def __init__(self, radius: int, cube: int, block_size: int, generator: torch.Generator | None = None):
        if cube < 1:
            raise ValueError(f"training.cube must be positive, got {cube}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        super().__init__(patch_size=cube)
        self.radius = radius
        self.cube = cube
        self.block_size = block_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw_block(self, subject: tio.Subject, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres (flat voxel indices) of ``n`` cubes of ``subject`` and the first voxel ``(n, 3)`` of each cube."""
        volume: TriplanarVolume = subject[VOLUME]
        if volume.radius != self.radius:
            raise ValueError(f"volume padded for radius {volume.radius}, sampler wants {self.radius}")
        centres, _ = draw_balanced_centres(subject, n, self.generator)
        return centres, volume.cube_start(centres, self.cube)

    def _generate_patches(self, subject: tio.Subject) -> Generator[dict]:
        volume: TriplanarVolume = subject[VOLUME]
        codes = subject[CLASS_INDEX].codes.view(volume.shape)
        n = int(subject.get(NUM_SAMPLES, self.block_size))
        k = self.cube
        while True:
            _, starts = self.draw_block(subject, n)
            for sx, sy, sz in starts.tolist():
                yield {
                    "context": volume.cube_context((sx, sy, sz), k),
                    "codes": codes[sx : sx + k, sy : sy + k, sz : sz + k],
                }


class TaskBalancedCubes(MinibatchStream):
    """Mini-batches of cubes: ``cubes_per_task`` cubes from each task's TorchIO queue.

    Each mini-batch is a dict with ``context`` ``(B, S, S, S)``, ``target`` ``(B, k, k, k)``
    (the experiment's output channels, :data:`IGNORE` at or below the threshold) and
    ``task`` ``(B,)`` (index into the experiment's tasks), ``B = cubes_per_task · T``.

    Args:
        new_queues: ``new_queues(k)``: queue of cubes per task, for segment ``k``.
        label_space: The experiment's merged classes.
        cubes_per_task: Cubes of each task per mini-batch.
        **stream: ``length``, ``start``, ``segment`` and ``seed`` of :class:`~mtseg.data.sampling.MinibatchStream`.
    """

    def __init__(self, new_queues, label_space: LabelSpace, cubes_per_task: int, **stream):
        if cubes_per_task < 1:
            raise ValueError(f"training.cubes_per_task must be positive, got {cubes_per_task}")
        super().__init__(new_queues, **stream)
        self.tasks = list(label_space.tasks)
        self.cubes_per_task = cubes_per_task
        self.task_ids = torch.arange(len(self.tasks)).repeat_interleave(cubes_per_task)
        # task-local code -> output channel; NOT_ELIGIBLE -> IGNORE
        self.luts = {}
        for task in self.tasks:
            lut = torch.full((NOT_ELIGIBLE + 1,), IGNORE, dtype=torch.long)
            channels = label_space.global_labels(task)
            lut[: len(channels)] = channels
            self.luts[task] = lut

    def draw(self, queues: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        contexts, targets = [], []
        for task in self.tasks:
            queue = queues[task]
            for _ in range(self.cubes_per_task):
                item = queue[0]
                contexts.append(item["context"])
                targets.append(self.luts[task][item["codes"].long()])
        return {"context": torch.stack(contexts), "target": torch.stack(targets), "task": self.task_ids.clone()}
