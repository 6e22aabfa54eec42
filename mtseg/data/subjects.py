"""Subject preparation: a training or held-out image preprocessed once, checked, padded and indexed by class."""

from __future__ import annotations

import torch
import torchio as tio

from mtseg.data.preprocessing import IMAGE, LABEL, SAMPLING_MASK
from mtseg.data.sampling import CLASS_INDEX, VOLUME, ClassVoxelIndex
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import check_label_range, get_task


def prepare_subject(subject: tio.Subject, preprocessing: tio.Transform, depth: int, pad_value: float) -> tio.Subject:
    """Preprocess ``subject`` and attach its volume padded by ``depth`` (the model's) and its class voxel index.

    The returned subject keeps ``image``, ``label`` and ``sampling_mask`` (whole-volume
    evaluation needs them) plus :data:`VOLUME` and :data:`CLASS_INDEX` for sampling.
    Its image is a view of the padded volume and its labels are bytes, so a prepared
    volume costs about 4 bytes per voxel for intensities plus 3 bytes for label, mask
    and class codes.
    """
    path = subject[IMAGE].path
    if subject[IMAGE].data.ndim != 4 or subject[IMAGE].data.shape[0] != 1:
        raise ValueError(f"{path}: expected a single-channel 3-D image, got shape {tuple(subject[IMAGE].shape)}")
    try:
        subject.check_consistent_space()
    except RuntimeError as error:
        raise ValueError(
            f"{path} and its label {subject[LABEL].path} differ in shape or geometry: "
            f"{tuple(subject[IMAGE].shape)} vs {tuple(subject[LABEL].shape)}, affines\n"
            f"{subject[IMAGE].affine}\nvs\n{subject[LABEL].affine}"
        ) from error
    prepared = preprocessing(subject)
    task = get_task(prepared["task"])
    label = prepared[LABEL].data[0]
    if label.is_floating_point() and not torch.equal(label, label.round()):
        raise ValueError(f"{subject[LABEL].path}: label map holds non-integer values")
    check_label_range(label, task.n_classes, str(subject[LABEL].path), task.name)
    eligible = prepared[SAMPLING_MASK].data[0].bool()
    if not eligible.any():
        raise ValueError(
            f"{path}: no voxel has intensity above the sampling threshold of task {task.name!r}; "
            f"lower data.{task.name}.preprocessing.threshold"
        )
    label = label.to(torch.uint8)
    prepared[LABEL].set_data(label[None])
    volume = TriplanarVolume(prepared[IMAGE].data[0], depth, pad_value)
    prepared[IMAGE].set_data(volume.interior[None])
    prepared[VOLUME] = volume
    prepared[CLASS_INDEX] = ClassVoxelIndex(label, eligible, task.n_classes)
    return prepared
