"""The loss of compute-sharing training (``training=cubes``): cross-entropy with per-voxel weights.

A cube holds the voxels of its neighbourhood in their natural proportions (mostly
background), not the paper's balanced samples. Per-voxel weights give back the paper's
balance (§3.2) in expectation:

- within each task, every class present in the mini-batch gets the same total weight;
- every task with voxels in the mini-batch gets the same total weight;
- voxels at or below the task's threshold (target :data:`~mtseg.data.training_volumes.IGNORE`)
  get weight 0, as the paper samples only above it.

The weights sum to 1, so the loss is a weighted mean. Everything is counted with
``index_add_`` on fixed-size tensors: no host synchronisation in the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtseg.data.training_volumes import IGNORE


def cube_loss_weights(target: torch.Tensor, task: torch.Tensor, n_tasks: int, n_classes: int) -> torch.Tensor:
    """Per-voxel loss weights restoring class and task balance.

    Args:
        target: ``(B, ...)`` output channels, :data:`IGNORE` where the voxel is not trained on.
        task: ``(B,)`` task index of each cube.
        n_tasks: Tasks of the experiment.
        n_classes: Output channels of the experiment.

    Returns:
        Weights of ``target``'s shape, summing to 1 (0 at ignored voxels).
    """
    valid = target != IGNORE
    voxel_task = task.reshape(-1, *([1] * (target.ndim - 1))).expand_as(target)
    key = (voxel_task * n_classes + target.clamp_min(0)).reshape(-1)
    counts = torch.zeros(n_tasks * n_classes, device=target.device).index_add_(0, key, valid.reshape(-1).float())
    counts = counts.reshape(n_tasks, n_classes)
    present = counts > 0
    classes_per_task = present.sum(1, keepdim=True)
    tasks_present = (classes_per_task > 0).sum()
    per_voxel = torch.where(present, 1.0 / (counts * classes_per_task * tasks_present).clamp_min(1), 0.0)
    return per_voxel.reshape(-1)[key].reshape(target.shape) * valid


def cube_loss(logits: torch.Tensor, target: torch.Tensor, task: torch.Tensor, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of a mini-batch of cubes, and each task's weighted mean cross-entropy.

    Args:
        logits: ``(B, C, k, k, k)``.
        target: ``(B, k, k, k)`` output channels or :data:`IGNORE`.
        task: ``(B,)`` task index of each cube.
        n_tasks: Tasks of the experiment.

    Returns:
        The loss (a scalar) and ``(n_tasks,)`` per-task losses (detached; 0 for a task without voxels).
    """
    weights = cube_loss_weights(target, task, n_tasks, logits.shape[1])
    weighted = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE) * weights
    voxel_task = task.reshape(-1, 1, 1, 1).expand_as(target).reshape(-1)
    zeros = torch.zeros(n_tasks, device=logits.device)
    per_task = zeros.index_add(0, voxel_task, weighted.detach().reshape(-1))
    per_task_weight = zeros.index_add(0, voxel_task, weights.reshape(-1))
    return weighted.sum(), per_task / per_task_weight.clamp_min(1e-12)
