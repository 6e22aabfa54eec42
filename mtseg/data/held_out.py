"""Held-out images as the Lightning module's validation steps get them: whole, preprocessed, one per step.

Kept apart from the data module, so the Lightning module and ``mtseg.evaluate`` use them without
importing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio
from torch.utils.data import Dataset

from mtseg.data.preprocessing import IMAGE, LABEL, SAMPLING_MASK
from mtseg.data.sampling import VOLUME
from mtseg.data.triplanar import TriplanarVolume


class HeldOutImage:
    """One preprocessed held-out image, handed whole to the validation step.

    A plain object (not a mapping or dataclass), so Lightning passes it to the step as it
    is instead of copying its volume to the device.

    Attributes:
        task: The image's task.
        case_id: Its case ID.
        volume: Padded intensities.
        reference: ``(X, Y, Z)`` task-local labels (uint8).
        mask: ``(X, Y, Z)`` voxels above the sampling threshold.
        spacing: Voxel spacing (mm) of the preprocessed grid.
    """

    def __init__(
        self, task: str, case_id: str, volume: TriplanarVolume, reference: torch.Tensor, mask: torch.Tensor,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ):
        self.task = task
        self.case_id = case_id
        self.volume = volume
        self.reference = reference
        self.mask = mask
        self.spacing = spacing

    @classmethod
    def from_subject(cls, subject: tio.Subject) -> HeldOutImage:
        return cls(
            subject["task"], subject["case_id"], subject[VOLUME], subject[LABEL].data[0], subject[SAMPLING_MASK].data[0].bool(),
            tuple(float(s) for s in subject[IMAGE].spacing),
        )


class HeldOutImages(Dataset):
    """The held-out images of every task, one item each (validation: whole-image evaluation)."""

    def __init__(self, images: Sequence[HeldOutImage]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> HeldOutImage:
        return self.images[index]
