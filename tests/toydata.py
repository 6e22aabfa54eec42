"""Small in-memory subjects and data modules for tests."""

import numpy as np
import torch
import torchio as tio

from mtseg.data.datamodule import MultiTaskDataModule
from mtseg.training.mode import TrainingMode, training_mode_from_config
from mtseg.training.patches import PatchTraining

RADIUS = 3


def cube_context(volume, start, cube: int) -> torch.Tensor:
    """The ``(cube + 2·radius)³`` context of the cube whose first target voxel is ``start``: a slice of
    the padded volume, the reference the dense gather is checked against."""
    sx, sy, sz = (int(s) for s in start)
    side = cube + 2 * volume.radius
    return volume.padded[sx : sx + side, sy : sy + side, sz : sz + side]


def toy_subject(task: str, n_classes: int, shape=(16, 18, 20), seed=0, rare=None, separable=False) -> tio.Subject:
    """Random labels, optionally one rare class (two voxels); intensity > 0 only where x > 2.

    With ``separable`` the intensity is ``1 + label / n_classes``, so intensity alone gives the class.
    """
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_classes, size=shape)
    if rare is not None:
        label[label == rare] = 0
        label[8, 9, 10:12] = rare  # two voxels
    image = rng.uniform(1.0, 2.0, size=shape).astype(np.float32)
    if separable:
        image = (1.0 + label / n_classes).astype(np.float32)
    image[:3] = -1.0
    label[:3] = 0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
        task=task,
        case_id=f"{task}_{seed}",
    )


#: The toy data module's queue in the paper's mode.
TOY_QUEUE = {"max_length": 300, "samples_per_volume": 60, "block": 10}


def toy_datamodule(tasks, batch_size=42, rare=None, subjects=None, separable=False, training=None):
    sources = {
        t: {"source": "in-memory", "preprocessing": {"spacing": 1.0, "threshold": 0.0, "intensity": []}}
        for t in tasks
    }
    if training is None:  # the paper's mode
        training = PatchTraining(batch_size, queue=TOY_QUEUE)
    elif not isinstance(training, TrainingMode):  # a config, as conf/training or a checkpoint holds it
        training = training_mode_from_config(training)
    dm = MultiTaskDataModule(tasks=tasks, root="unused", depth=RADIUS, pad_value=0.0, seed=0, training=training, **sources)
    n_classes = {"brain": 7, "breast": 2, "cta": 2}
    if subjects is None:
        subjects = {
            t: {
                "train": [
                    toy_subject(t, n_classes[t], seed=s, rare=rare if t == "brain" else None, separable=separable)
                    for s in range(3)
                ],
                "test": [toy_subject(t, n_classes[t], seed=10, separable=separable)],
            }
            for t in tasks
        }
    dm._raw_subjects = lambda: subjects
    return dm
