"""A user's image, whatever its type, checked before any voxel is read.

:class:`mtseg.Segmenter` takes a NIfTI path, a nibabel image, a ``tio.ScalarImage`` or a
``tio.Subject`` holding one. Each passes the same checks of :func:`mtseg.nifti.check_geometry`
(voxel type, 3-D, ``max_voxels``, spacing limits, an invertible affine) from what it declares
(a header or a shape) before its voxels are read or used, and then the same check of finite
intensities. A file-backed image (a nibabel image from ``nib.load``, a TorchIO image not yet
loaded) is read only once its header passed, and only if its file holds the bytes the header
declares: a small file whose header declares a huge volume is refused unread. Messages name
the image by its path, or as :data:`IN_MEMORY`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from mtseg.nifti import ImageLimits, _check_file_holds, check_geometry, is_nifti_path, read_image

#: How an image that has no file is named in messages.
IN_MEMORY = "<in-memory image>"

#: What :func:`checked_image` accepts, as said in its error.
ACCEPTED = "a NIfTI path, a nibabel image, a tio.ScalarImage or a tio.Subject holding one"


def image_name(image: tio.Image) -> str:
    """``image``'s path, or :data:`IN_MEMORY`."""
    return IN_MEMORY if image.path is None else str(image.path)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """The voxel sizes (mm) an affine implies: the norms of its first three columns (as TorchIO's spacing)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def checked_image(image, limits: ImageLimits) -> tio.ScalarImage:
    """``image`` as a checked, loaded 3-D ``tio.ScalarImage`` (``float32``, one channel; path kept when it has one).

    Raises:
        TypeError: ``image`` is none of :data:`ACCEPTED`.
        FileNotFoundError, IsADirectoryError: a path that is not a file.
        ValueError: a geometry :func:`mtseg.nifti.check_geometry` refuses, a file that holds less than its
            header declares, or NaN or infinite intensities; naming the image.
    """
    if isinstance(image, (str, Path)):
        return read_image(image, limits)
    if isinstance(image, tio.Subject):
        return checked_image(_only_scalar_image(image), limits)
    if isinstance(image, nib.spatialimages.SpatialImage):
        return _from_nibabel(image, limits)
    if isinstance(image, tio.ScalarImage):
        return _from_torchio(image, limits)
    if isinstance(image, tio.Image):
        raise TypeError(f"segment() takes {ACCEPTED}, not a {type(image).__name__} (labels are not segmented)")
    raise TypeError(f"segment() takes {ACCEPTED}, not {type(image).__name__}")


def _only_scalar_image(subject: tio.Subject) -> tio.ScalarImage:
    images = subject.get_images_dict(intensity_only=True)
    if len(images) != 1:
        raise ValueError(
            f"segment() takes a tio.Subject holding exactly one tio.ScalarImage; this one holds "
            f"{len(images)} ({', '.join(images) or 'none'}): pass the image to segment instead"
        )
    return next(iter(images.values()))


def _from_nibabel(image: nib.spatialimages.SpatialImage, limits: ImageLimits) -> tio.ScalarImage:
    path = image.get_filename()
    name = path or IN_MEMORY
    try:
        shape, dtype, affine = tuple(image.shape), image.get_data_dtype(), image.affine
    except Exception as error:  # a header nibabel cannot interpret
        raise ValueError(f"{name}: cannot be read as an image ({type(error).__name__}: {error})") from None
    if affine is None:
        raise ValueError(f"{name}: has no affine: its voxels have no place in the world")
    shape = check_geometry(name, shape, dtype, voxel_sizes(affine), affine, limits)
    if nib.is_proxy(image.dataobj) and path is not None:  # voxels still in the file: it must hold them
        _check_file_holds(Path(path), int(getattr(image.dataobj, "offset", 0)), int(np.prod(shape, dtype=np.int64)), dtype)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise ValueError(f"{name}: its voxels cannot be read ({type(error).__name__}: {error})") from None
    data = np.asarray(data.reshape(shape), dtype=np.float32)
    return _finite(torch.from_numpy(data)[None], affine, path, name)


def _from_torchio(image: tio.ScalarImage, limits: ImageLimits) -> tio.ScalarImage:
    if not image._loaded:  # TorchIO would read the whole file on first access: check its header first
        if image.path is None or not isinstance(image.path, (str, Path)):
            raise ValueError(f"segment() takes a tio.ScalarImage of one file or with its tensor loaded, not of {image.path!r}")
        if not is_nifti_path(image.path):
            raise ValueError(f"{image.path}: not a NIfTI file (expected a name ending in .nii or .nii.gz); load it first (image.load())")
        return read_image(image.path, limits)
    name = image_name(image)
    tensor, affine = image.data, image.affine
    dtype = np.dtype(str(tensor.dtype).removeprefix("torch.")) if tensor.dtype != torch.bfloat16 else np.dtype(np.float32)
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise ValueError(f"{name}: expected a single 3-D volume (one channel), got a tensor of shape {tuple(tensor.shape)}")
    check_geometry(name, tuple(tensor.shape[1:]), dtype, voxel_sizes(affine), affine, limits)
    return _finite(tensor.float(), affine, image.path, name)


def _finite(tensor: torch.Tensor, affine, path, name: str) -> tio.ScalarImage:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: holds {int((~torch.isfinite(tensor)).sum())} NaN or infinite intensities")
    return tio.ScalarImage(tensor=tensor, affine=np.asarray(affine, dtype=np.float64), path=path)
