"""Tiny NIfTI data sets written inside tests: folders, CSVs and nnU-Net raw folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 10, 8)
#: An LPS-like affine with anisotropic voxels (0.8 x 0.8 x 1.6 mm).
LPS_ANISOTROPIC = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 8.0], [0, 0, 1.6, -4.0], [0, 0, 0, 1]])
RAS_1MM = np.eye(4)


def volumes(seed: int, n_classes: int, shape=SHAPE, label_values=None):
    """An intensity volume (> 0 inside a box, 0 around it) and labels inside the box.

    ``label_values`` replaces the labels 0..n_classes-1 by these source values.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.int16)
    inner = tuple(slice(1, s - 1) for s in shape)
    image[inner] = rng.uniform(10, 100, size=image[inner].shape)
    label[inner] = rng.integers(0, n_classes, size=label[inner].shape)
    label[1, 1, 1:n_classes + 1] = np.arange(n_classes)  # every class present
    if label_values is not None:
        label = np.asarray(label_values)[label]
    return image, label


def save(path: Path, data: np.ndarray, affine=RAS_1MM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def nifti_folder(root: Path, n_cases: int = 4, n_classes: int = 2, affine=RAS_1MM, label_dtype=np.uint8,
                 label_values=None, suffix=".nii.gz") -> Path:
    """``root/images/case<i>.nii.gz`` and ``root/labels/case<i>.nii.gz``."""
    for i in range(n_cases):
        image, label = volumes(i, n_classes, label_values=label_values)
        save(root / "images" / f"case{i}{suffix}", image, affine)
        save(root / "labels" / f"case{i}{suffix}", label.astype(label_dtype), affine)
    return root


def nnunet_folder(root: Path, n_train: int = 3, n_test: int = 1, n_classes: int = 2, channels: int = 1,
                  labels: dict | None = None, num_training: int | None = None, label_values=None) -> Path:
    """An nnU-Net v2 raw data set with ``n_train`` labelled training and ``n_test`` labelled test cases."""
    for split, n, offset in (("Tr", n_train, 0), ("Ts", n_test, 100)):
        for i in range(n):
            image, label = volumes(offset + i, n_classes, label_values=label_values)
            for c in range(channels):
                save(root / f"images{split}" / f"case_{offset + i:03d}_{c:04d}.nii.gz", image * (c + 1))
            save(root / f"labels{split}" / f"case_{offset + i:03d}.nii.gz", label.astype(np.uint8))
    content = {
        "channel_names": {str(c): f"channel{c}" for c in range(channels)},
        "labels": labels if labels is not None else {"background": 0, **{f"class{k}": k for k in range(1, n_classes)}},
        "numTraining": n_train if num_training is None else num_training,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root
