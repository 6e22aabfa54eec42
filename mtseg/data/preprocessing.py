"""Per-modality preprocessing: canonical orientation, isotropic resampling, sampling mask, intensities.

Every subject passes through the same pipeline once, when the data module is set
up (not at every queue refill):

1. ``tio.ToCanonical``: reorient to RAS, so planes mean the same thing in every image
   (axial: z fixed; sagittal: x fixed; coronal: y fixed).
2. :class:`ResampleToSpacing`: ``tio.Resample`` to the task's isotropic spacing
   (linear for images, nearest neighbour for labels), skipped for images already at
   that spacing so their grid is kept voxel for voxel. ``"inplane"`` resamples each
   image to isotropic voxels at its own finest spacing (the in-plane spacing of a
   slice-wise acquisition), as the paper did for breast MRI.
3. :class:`SamplingMask`: voxels whose *stored* intensity is above the task's
   threshold (the paper samples voxels with intensity > 0) become eligible sample
   centres. It runs before intensity normalisation on purpose.
4. The task's intensity transforms from the config (TorchIO transforms instantiated
   by Hydra): MRI is rescaled per image so the 0.5th/99.5th intensity percentiles map
   to 0/1; CT is clamped to [-1024, 3071] HU and mapped linearly so -1024 HU is 0
   and every 1000 HU adds 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio

from mtseg.nifti import ImageLimits

#: Keys of the images every mtseg subject holds.
IMAGE = "image"
LABEL = "label"
SAMPLING_MASK = "sampling_mask"


class SamplingMask(tio.Transform):
    """Add a label map that marks voxels with intensity above ``threshold``.

    Args:
        threshold: Voxels with ``image > threshold`` may be sample centres.
        image_key: Name of the intensity image in the subject.
    """

    def __init__(self, threshold: float, image_key: str = IMAGE, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.image_key = image_key
        self.args_names = ["threshold", "image_key"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject[self.image_key]
        mask = (image.data > self.threshold).to(torch.uint8)
        subject.add_image(tio.LabelMap(tensor=mask, affine=image.affine), SAMPLING_MASK)
        return subject


#: A voxel counts as negative below ``-NEGATIVE_MARGIN`` times the image's 99.5th intensity percentile.
NEGATIVE_MARGIN = 0.05


def negative_fraction(image: torch.Tensor) -> float:
    """The fraction of ``image``'s voxels whose stored intensity is clearly below 0: below
    ``-NEGATIVE_MARGIN`` times its 99.5th percentile (estimated from at most a million voxels,
    evenly strided).

    MR magnitude images have none (the small negative values that resampling leaves in an MR's
    background stay above the margin), while about two thirds of a chest CT in Hounsfield units
    are well below water (air, lungs, fat): recognition (:mod:`mtseg.inference.recognition`) compares an
    input's fraction with the range of its training images' to tell an MR from a CT, whatever
    the MR's intensity scale.
    """
    flat = image.reshape(-1)
    if flat.numel() == 0:
        return 0.0
    sample = flat[:: -(-flat.numel() // 1_000_000)].float()
    scale = max(float(torch.quantile(sample, 0.995)), 0.0)
    return float((flat < -NEGATIVE_MARGIN * scale).sum()) / flat.numel()


#: Spacing rule: isotropic at each image's finest spacing (its in-plane spacing).
INPLANE = "inplane"


class ResampleToSpacing(tio.Transform):
    """``tio.Resample`` to an isotropic spacing, unless the subject already has it.

    Args:
        spacing: Target isotropic spacing in mm, or ``"inplane"``: the finest spacing
            of the subject's image (e.g. 1.25 mm for 1.25 x 1.25 x 1.6 mm voxels).
        tolerance: Relative difference below which spacings count as equal.
        limits: A resampled grid of more than ``limits.max_voxels`` is refused before it is built
            (default: ``conf/limits.yaml``).
    """

    def __init__(self, spacing: float | str, tolerance: float = 1e-4, limits: ImageLimits | None = None, **kwargs):
        super().__init__(**kwargs)
        self.limits = limits or ImageLimits.load()
        if spacing != INPLANE:
            try:
                spacing = float(spacing)
            except (TypeError, ValueError):
                raise ValueError(f"spacing must be a number of mm or {INPLANE!r}, got {spacing!r}") from None
            if spacing <= 0:
                raise ValueError(f"spacing must be positive, got {spacing}")
        self.spacing = spacing
        self.tolerance = tolerance
        self.args_names = ["spacing", "tolerance"]

    def target_spacing(self, subject: tio.Subject) -> float:
        """The isotropic spacing ``subject`` is resampled to."""
        if self.spacing == INPLANE:
            images = subject.get_images(intensity_only=True) or subject.get_images(intensity_only=False)
            return float(min(images[0].spacing))
        return self.spacing

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        target = self.target_spacing(subject)
        spacings = [image.spacing for image in subject.get_images(intensity_only=False)]
        if all(abs(s - target) <= self.tolerance * target for sp in spacings for s in sp):
            return subject
        image = subject.get_images(intensity_only=False)[0]
        extent = np.asarray(image.spacing) * np.asarray(image.spatial_shape)
        voxels = int(np.prod(np.ceil(extent / target), dtype=np.float64))
        self.limits.check_grid(voxels, f"{image.path or 'an image'}: resampled to {target:g} mm, its grid")
        return tio.Resample(target)(subject)


def build_preprocessing(
    spacing: float | str,
    threshold: float,
    intensity_transforms: Sequence[tio.Transform],
    limits: ImageLimits | None = None,
) -> tio.Compose:
    """The preprocessing pipeline of one task.

    Args:
        spacing: Isotropic target spacing in mm, or ``"inplane"`` (see :class:`ResampleToSpacing`).
        threshold: Stored-intensity threshold for sample centres.
        intensity_transforms: Intensity normalisation applied last.
        limits: Largest resampled grid (see :class:`ResampleToSpacing`).
    """
    return tio.Compose(
        [
            tio.ToCanonical(),
            ResampleToSpacing(spacing, limits=limits),
            SamplingMask(threshold),
            *intensity_transforms,
        ]
    )
