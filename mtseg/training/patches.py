"""The paper's training (§3.2, ``training=patch``): mini-batches of class- and task-balanced triplanar samples.

A queue item is a block of sample centres of one training image, drawn class-balanced
(:func:`~mtseg.data.sampling.draw_balanced_centres`); a mini-batch holds ``batch_size`` samples,
``batch_size // T`` from each of the ``T`` task queues, the remainder going to tasks drawn at
random. On the training device each sample becomes its three 51×51 patches
(:meth:`~mtseg.data.training_volumes.TrainingVolumes.planes`) and its label the experiment's
output channel; the loss is the mean cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchio as tio

from mtseg.data.sampling import VOLUME, draw_balanced_centres, proportional_counts
from mtseg.data.torchio_adapters import BlockQueue
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.model import TriplanarCNN
from mtseg.training.mode import TrainingMode, positive_int

#: ``training.queue`` of the paper's mode (``conf/training/patch.yaml``).
DEFAULT_QUEUE = {"max_length": 4200, "samples_per_volume": 600, "block": 10}


class PatchTraining(TrainingMode):
    """Mini-batches of ``batch_size`` triplanar samples, split equally over the tasks.

    Index mini-batch (host): ``volume_id``, ``centre`` (flat voxel index), ``label`` (task-local class)
    and ``task`` (index into the experiment's tasks), each ``(B,)``. Gathered (device): ``planes``
    ``(B, 3, P, P)``, ``target`` (output channel) and ``task``.

    Args:
        batch_size: Samples per mini-batch over all processes (paper: 210).
        queue: Per task queue: ``max_length``, ``samples_per_volume``, ``block`` (in samples).
        **common: ``background_near_tissue``, ``renamed_from``: see :class:`~mtseg.training.mode.TrainingMode`.
    """

    name = "patch"

    def __init__(self, batch_size: int = 210, queue: Mapping[str, int] | None = None, **common: Any):
        self.batch_size = positive_int("training.batch_size", batch_size)
        super().__init__(DEFAULT_QUEUE if queue is None else queue, **common)

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def describe(self) -> str:
        return f"{self.batch_size} samples"

    def items_per_step(self) -> tuple[int, str]:
        return self.batch_size, "training.batch_size"

    def steps_per_task_minibatch(self, n_tasks: int) -> int:
        # the paper's mini-batch is split over the T tasks: a task gets a whole one's worth every T steps
        return n_tasks

    def check_tasks(self, n_tasks: int, world_size: int = 1) -> None:
        super().check_tasks(n_tasks, world_size)
        if self.batch_size // world_size < n_tasks:
            raise ValueError(
                f"training.batch_size={self.batch_size} gives each of {world_size} process(es) "
                f"{self.batch_size // world_size} samples, smaller than the number of tasks ({n_tasks}); "
                "every mini-batch needs each task"
            )

    def draw_items(self, subject: tio.Subject, n: int, depth: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if subject[VOLUME].radius != depth:
            raise ValueError(f"volume padded for depth {subject[VOLUME].radius}, the sampler wants {depth}")
        centres, labels = draw_balanced_centres(subject, n, generator, self.background_near_tissue, depth)
        return {"centre": centres, "label": labels}

    def draw_minibatch(self, queues: Mapping[str, BlockQueue], count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tasks = list(queues)
        counts = proportional_counts(count, torch.ones(len(tasks)), generator).tolist()
        drawn = [(task_id, queues[task].take(n)) for task_id, (task, n) in enumerate(zip(tasks, counts)) if n]
        return {
            "volume_id": torch.cat([s["volume_id"] for _, s in drawn]),
            "centre": torch.cat([s["centre"] for _, s in drawn]),
            "label": torch.cat([s["label"] for _, s in drawn]),
            "task": torch.cat([torch.full((len(s["label"]),), t) for t, s in drawn]),
        }

    def gather(self, volumes: TrainingVolumes, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "planes": volumes.planes(batch["volume_id"], batch["centre"]),
            "target": volumes.channels[batch["task"], batch["label"].long()],
            "task": batch["task"],
        }

    def loss(self, net: TriplanarCNN, batch: Mapping[str, torch.Tensor], n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses = F.cross_entropy(net(batch["planes"]), batch["target"], reduction="none")
        per_task = torch.zeros(n_tasks, device=losses.device).index_add_(0, batch["task"], losses.detach())
        per_task /= torch.bincount(batch["task"], minlength=n_tasks).clamp_min(1)
        return losses.mean(), per_task
