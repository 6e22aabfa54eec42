"""The paper's decision rule, from the network's output to a task's labels (§4), written once.

- A task evaluated by ``argmax`` (brain MRI): each voxel gets the output channel of highest
  activation, mapped to the task's own labels; a channel of another task counts as
  background.
- A task evaluated at a ``pr_threshold`` (breast MRI, cardiac CTA) with a threshold: the
  foreground is where the task's foreground probability is ``>= threshold``.

Training's learning curves, ``mtseg.evaluate``, ``mtseg.predict``, :class:`mtseg.Segmenter`
and the figures all call :func:`task_labels`.
"""

from __future__ import annotations

import torch

from mtseg.tasks import TASKS, LabelSpace


def thresholded(task: str) -> bool:
    """Whether ``task`` is labelled at a PR threshold (else by argmax)."""
    return TASKS[task].operating_point == "pr_threshold"


def task_labels(
    space: LabelSpace,
    task: str,
    labels: torch.Tensor | None = None,
    probability: torch.Tensor | None = None,
    threshold: float | None = None,
) -> torch.Tensor:
    """``task``'s labels (uint8, 0 background) of one image.

    Args:
        space: The network's output channels.
        task: The task the image belongs to.
        labels: Output channel of highest activation per voxel (needed without a threshold).
        probability: ``task``'s foreground probability per voxel (needed with a threshold).
        threshold: The PR operating point, or ``None`` for argmax (also for a ``pr_threshold``
            task whose threshold is unknown).
    """
    if threshold is not None:
        if probability is None:
            raise ValueError(f"task {task!r} at threshold {threshold}: its foreground probability is needed")
        return (probability >= threshold).to(torch.uint8)
    if labels is None:
        raise ValueError(f"task {task!r} by argmax: the label map of highest activation is needed")
    return space.to_local(task)[labels.long()]
