"""Compute-sharing training (``training=cubes``; formerly ``training=dense``): mini-batches of cubes of target voxels.

A queue item is a block of cube positions of one training image: each cube of ``cube³`` target
voxels is placed around a centre drawn class-balanced as the paper's samples are
(:func:`~mtseg.data.sampling.draw_balanced_centres`, so rare classes such as the coronary arteries
or the brain stem still decide where cubes lie) and shifted inwards at the volume's borders. A
mini-batch holds ``cubes_per_task`` cubes of every task. On the training device each cube becomes
its context of ``depth`` voxels on every side
(:meth:`~mtseg.data.training_volumes.TrainingVolumes.cubes`), and the network runs its stack over
the context's axial, sagittal and coronal slices at once
(:meth:`~mtseg.model.TriplanarCNN.forward_cubes`), so every target voxel is classified from
exactly its own three 51×51 patches at a fraction of the cost of one patch per voxel. Voxels at or
below the task's threshold carry :data:`~mtseg.data.training_volumes.IGNORE`; the loss weights
(:mod:`mtseg.training.cube_loss`) restore the paper's class and task balance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchio as tio

from mtseg.data.sampling import VOLUME, draw_balanced_centres
from mtseg.data.torchio_adapters import BlockQueue
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.model import TriplanarCNN
from mtseg.training.cube_loss import cube_loss
from mtseg.training.mode import TrainingMode, positive_int

#: ``training.queue`` of compute-sharing training (``conf/training/cubes.yaml``).
DEFAULT_QUEUE = {"max_length": 128, "samples_per_volume": 32, "block": 4}


class CubeTraining(TrainingMode):
    """Mini-batches of ``cubes_per_task`` cubes of ``cube³`` target voxels from every task.

    Index mini-batch (host): ``volume_id`` ``(B,)``, ``start`` ``(B, 3)`` (each cube's first target
    voxel) and ``task`` ``(B,)``, ``B = cubes_per_task · T``. Gathered (device): ``context``
    ``(B, S, S, S)`` with ``S = cube + 2·depth``, ``target`` ``(B, k, k, k)`` (output channels,
    ``IGNORE`` at or below the threshold) and ``task``.

    Args:
        cube: Target voxels per side of a cube.
        cubes_per_task: Cubes of each task per mini-batch, over all processes.
        queue: Per task queue: ``max_length``, ``samples_per_volume``, ``block`` (in cubes).
        batch_renorm: ``[r_max, d_max]`` to train with batch renormalisation, or ``None``.
        **common: ``background_near_tissue``, ``renamed_from``: see :class:`~mtseg.training.mode.TrainingMode`.
    """

    name = "cubes"

    def __init__(
        self,
        cube: int = 2,
        cubes_per_task: int = 32,
        queue: Mapping[str, int] | None = None,
        batch_renorm: Sequence[float] | None = None,
        **common: Any,
    ):
        self.cube = positive_int("training.cube", cube)
        self.cubes_per_task = positive_int("training.cubes_per_task", cubes_per_task)
        self.batch_renorm = None if batch_renorm is None else [float(v) for v in batch_renorm]
        self.patch_size = self.cube
        self._task_ids: dict[tuple[int, int], torch.Tensor] = {}
        super().__init__(DEFAULT_QUEUE if queue is None else queue, **common)

    def settings(self) -> dict[str, Any]:
        return {"cube": self.cube, "cubes_per_task": self.cubes_per_task, "batch_renorm": self.batch_renorm}

    def describe(self) -> str:
        return f"{self.cubes_per_task} cube(s) of {self.cube}^3 voxels"

    def items_per_step(self) -> tuple[int, str]:
        return self.cubes_per_task, "training.cubes_per_task"

    def steps_per_task_minibatch(self, n_tasks: int) -> int:
        # every step holds cubes of every task
        return 1

    def draw_items(self, subject: tio.Subject, n: int, depth: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        volume = subject[VOLUME]
        if volume.radius != depth:
            raise ValueError(f"volume padded for depth {volume.radius}, the sampler wants {depth}")
        centres, _ = draw_balanced_centres(subject, n, generator, self.background_near_tissue, depth)
        return {"start": volume.cube_start(centres, self.cube)}

    def draw_minibatch(self, queues: Mapping[str, BlockQueue], count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cubes = [queue.take(count) for queue in queues.values()]
        key = (len(cubes), count)
        if key not in self._task_ids:  # once per stream: repeat_interleave costs more than the rest of a draw
            self._task_ids[key] = torch.arange(len(cubes)).repeat_interleave(count)
        return {
            "volume_id": torch.cat([c["volume_id"] for c in cubes]),
            "start": torch.cat([c["start"] for c in cubes]),
            "task": self._task_ids[key].clone(),
        }

    def check_training_volumes(self, task: str, subjects: list[tio.Subject]) -> None:
        small = [s for s in subjects if min(s[VOLUME].shape) < self.cube]
        if small:
            raise ValueError(
                f"training.cube={self.cube} does not fit {len(small)} training volume(s) of task {task!r} "
                f"(e.g. {small[0]['case_id']}: {small[0][VOLUME].shape} voxels after preprocessing); "
                f"lower training.cube to at most {min(min(s[VOLUME].shape) for s in small)}"
            )

    def gather(self, volumes: TrainingVolumes, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context, codes = volumes.cubes(batch["volume_id"], batch["start"], self.cube)
        return {"context": context, "target": volumes.channels[batch["task"].view(-1, 1, 1, 1), codes.long()], "task": batch["task"]}

    def loss(self, net: TriplanarCNN, batch: Mapping[str, torch.Tensor], n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cube_loss(net.forward_cubes(batch["context"], self.cube), batch["target"], batch["task"], n_tasks)

    def prepare_network(self, net: TriplanarCNN) -> None:
        if self.batch_renorm is not None:  # a mini-batch of a few cubes is no representative sample
            net.set_batch_renorm(self.batch_renorm)

    def check_fit(self, net: TriplanarCNN, n_tasks: int, device: torch.device) -> None:
        n_cubes = self.cubes_per_task * n_tasks
        needed = net.forward_cubes_bytes(n_cubes, self.cube)
        available = available_memory(device)
        if available is not None and needed > available:
            raise ValueError(
                f"training={self.name}: a step on {n_cubes} cubes of {self.cube}^3 voxels (training.cubes_per_task="
                f"{self.cubes_per_task}, training.cube={self.cube}) needs about {needed / 2**30:.1f} GiB, but "
                f"{available / 2**30:.1f} GiB are available on {device}; lower training.cube or training.cubes_per_task"
            )


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory a training step can still take on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
