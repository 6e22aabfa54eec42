"""Where the background is trained, and where a network paints tissue into it (issue 23's diagnosis).

Three measurements on one experiment's prepared data:

- :func:`background_landing`: where a task's class-balanced background sample centres land in its
  training images: distance to the nearest labelled voxel, below the lowest labelled voxel (for
  the brain: the neck), and intensity bins.
- :func:`cube_background_weight`: in cube training, the share of a step's loss weight that falls on
  each task's background voxels, split by distance to labelled tissue, for the experiment as
  trained and for the task trained alone.
- :func:`false_positives`: of a network's labels on a held-out image, the voxels each class paints
  outside the reference: how many, how far from the labelled tissue, how many below it, and their
  intensities; and :func:`resembling_background`: which share of each task's background samples
  has intensities in that range (the inputs that teach "background" for such intensities).

Distances are in voxels of the preprocessed grid (1 mm for the brain phantoms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchio as tio
from scipy.ndimage import distance_transform_edt

from mtseg.data.preprocessing import IMAGE, LABEL
from mtseg.data.sampling import CLASS_INDEX
from mtseg.data.training_volumes import IGNORE
from mtseg.tasks import LabelSpace
from mtseg.training.cube_loss import cube_loss_weights

#: Upper edges (voxels) of the distance bands to the nearest labelled voxel; the last band is beyond
#: the paper's receptive field (a 51 × 51 patch sees 25 voxels either side of its centre).
DISTANCE_BANDS = (2, 10, 25)


def band_names() -> list[str]:
    edges = (0, *DISTANCE_BANDS)
    return [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])] + [f">{DISTANCE_BANDS[-1]}"]


def tissue_distance(subject: tio.Subject) -> torch.Tensor:
    """``(X, Y, Z)`` Euclidean distance (voxels) of every voxel to the nearest labelled (foreground) voxel."""
    labelled = subject[LABEL].data[0].numpy() > 0
    return torch.from_numpy(distance_transform_edt(~labelled).astype(np.float32))


def lowest_labelled_slice(subject: tio.Subject) -> int:
    """The lowest axial index (RAS: inferior) holding a labelled voxel."""
    return int(subject[LABEL].data[0].flatten(0, 1).any(0).nonzero()[0])


def _band_shares(distance: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    weights = torch.ones_like(distance) if weights is None else weights
    edges = torch.tensor(DISTANCE_BANDS, dtype=distance.dtype)
    band = torch.bucketize(distance, edges, right=False)
    total = float(weights.sum()) or 1.0
    sums = torch.zeros(len(DISTANCE_BANDS) + 1, dtype=torch.float64).index_add_(0, band, weights.double())
    return {name: float(value) / total for name, value in zip(band_names(), sums)}


def background_landing(subjects: Sequence[tio.Subject], per_image: int, generator: torch.Generator) -> dict:
    """Where ``per_image`` background centres per training image land (drawn as the sampler draws them)."""
    distances, below, intensities = [], [], []
    for subject in subjects:
        index = subject[CLASS_INDEX]
        centres = index.draw(0, per_image, generator)
        distances.append(tissue_distance(subject).flatten()[centres])
        shape = subject[LABEL].data.shape[1:]
        below.append((centres % shape[2]) < lowest_labelled_slice(subject))
        intensities.append(subject[IMAGE].data[0].flatten()[centres])
    distance, low, intensity = torch.cat(distances), torch.cat(below), torch.cat(intensities)
    edges = torch.quantile(intensity, torch.linspace(0, 1, 6)).tolist()
    return {
        "centres": len(distance),
        "distance_bands": _band_shares(distance),
        "median_distance": float(distance.median()),
        "below_lowest_labelled_slice": float(low.double().mean()),
        "intensity_quintile_edges": edges,
    }


def cube_background_weight(
    batches: Sequence[Mapping[str, torch.Tensor]], distances: Mapping[int, torch.Tensor], cube: int, label_space: LabelSpace,
) -> dict:
    """Each task's share of a step's loss weight on its background voxels (cube training), split by distance to
    labelled tissue; ``batches``: index mini-batches with their gathered ``target``; ``distances``: per training
    volume id, its :func:`tissue_distance`. Also the same share with the task trained alone (its cubes only)."""
    tasks = label_space.tasks
    out = {task: {"experiment": torch.zeros(len(DISTANCE_BANDS) + 1, dtype=torch.float64),
                  "alone": torch.zeros(len(DISTANCE_BANDS) + 1, dtype=torch.float64)} for task in tasks}
    edges = torch.tensor(DISTANCE_BANDS, dtype=torch.float32)
    for batch in batches:
        target, task_ids = batch["target"], batch["task"]
        together = cube_loss_weights(target, task_ids, len(tasks), label_space.n_classes)
        for task_id, task in enumerate(tasks):
            mine = task_ids == task_id
            alone = cube_loss_weights(target[mine], torch.zeros(int(mine.sum()), dtype=torch.long), 1, label_space.n_classes)
            for weights, key in ((together[mine], "experiment"), (alone, "alone")):
                for b, (volume_id, start) in enumerate(zip(batch["volume_id"][mine].tolist(), batch["start"][mine].tolist())):
                    x, y, z = start
                    near = distances[volume_id][x : x + cube, y : y + cube, z : z + cube]
                    background = target[mine][b] == 0
                    band = torch.bucketize(near[background], edges)
                    out[task][key].index_add_(0, band, weights[b][background].double())
    n = max(len(batches), 1)
    return {
        task: {key: {"total": float(values.sum()) / n, **{name: float(v) / n for name, v in zip(band_names(), values)}}
               for key, values in parts.items()}
        for task, parts in out.items()
    }


def false_positives(
    labels: torch.Tensor, reference: torch.Tensor, image: torch.Tensor, subject: tio.Subject, label_space: LabelSpace, task: str,
) -> dict:
    """Per class of ``task``: voxels the network labels with it where the reference is background (``labels``: output
    channels), with their distance to labelled tissue, the share below the lowest labelled slice and intensity quartiles;
    and the voxels labelled with another task's class (cross-task confusion)."""
    distance = tissue_distance(subject)
    low = torch.arange(labels.shape[2]).view(1, 1, -1).expand_as(labels) < lowest_labelled_slice(subject)
    background = reference == 0
    result = {}
    for local, channel in enumerate(label_space.global_labels(task).tolist()[1:], start=1):
        name = label_space.class_names[channel]
        wrong = (labels == channel) & background
        count = int(wrong.sum())
        entry = {"voxels": count}
        if count:
            entry |= {
                "median_distance": float(distance[wrong].median()),
                "distance_bands": _band_shares(distance[wrong]),
                "below_lowest_labelled_slice": float(low[wrong].double().mean()),
                "intensity_quartiles": torch.quantile(image[wrong].float(), torch.tensor([0.25, 0.5, 0.75])).tolist(),
            }
        result[name] = entry
    own = set(label_space.global_labels(task).tolist())
    other = torch.zeros_like(labels, dtype=torch.bool)
    for channel in range(label_space.n_classes):
        if channel not in own:
            other |= labels == channel
    result["other_tasks_classes"] = {"voxels": int(other.sum()), "percent": 100.0 * float(other.double().mean())}
    # where each reference class went: rows reference (background first), columns the task's labels, then any other task's class
    local = label_space.to_local(task)[labels.long()].long()
    n = len(label_space.global_labels(task))
    predicted = torch.where(other, n, local)
    counts = torch.bincount(reference.long().flatten() * (n + 1) + predicted.flatten(), minlength=n * (n + 1))
    result["confusion_matrix"] = {
        "rows": "reference class (background first)", "columns": "label given (the task's classes, then another task's)",
        "counts": counts.view(n, n + 1).tolist(),
    }
    return result


def resembling_background(subjects_by_task: Mapping[str, Sequence[tio.Subject]], low: float, high: float,
                          per_image: int, generator: torch.Generator) -> dict[str, float]:
    """Per task, the share of its background sample centres whose intensity lies in ``[low, high]``."""
    shares = {}
    for task, subjects in subjects_by_task.items():
        values = torch.cat([s[IMAGE].data[0].flatten()[s[CLASS_INDEX].draw(0, per_image, generator)] for s in subjects])
        shares[task] = float(((values >= low) & (values <= high)).double().mean())
    return shares


def ignored_share(batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Share of cube voxels at or below the threshold (not trained on)."""
    total = sum(int(b["target"].numel()) for b in batches) or 1
    return sum(int((b["target"] == IGNORE).sum()) for b in batches) / total
