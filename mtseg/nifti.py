"""NIfTI in and out: reading a user's image with clear errors, writing results on the input's grid.

Results computed on the working grid (canonical orientation, isotropic spacing) are
brought back to the input's exact grid (same shape, same affine) with TorchIO's
``Resample`` to the input image, and written atomically: a temporary file in the
destination folder, renamed when complete, so a failure never leaves a partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def read_image(path: str | Path) -> tio.ScalarImage:
    """A 3-D NIfTI image as a TorchIO image, checked: readable, 3-D (a 4-D image with one
    volume is accepted), finite intensities.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not a NIfTI file, unreadable, not 3-D, or holding NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image {path} does not exist")
    if not is_nifti_path(path):
        raise ValueError(f"{path}: not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    try:
        nifti = nib.load(path)
        data = np.asanyarray(nifti.dataobj)
    except Exception as error:
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(
            f"{path}: expected a 3-D image, got {data.ndim}-D data of shape {data.shape}"
            + (" (one volume of a 4-D series can be cut out with e.g. fslroi)" if data.ndim == 4 else "")
        )
    if min(data.shape) < 2:
        raise ValueError(f"{path}: a 3-D image needs at least 2 voxels per axis, got shape {data.shape}")
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: holds {int((~np.isfinite(data)).sum())} NaN or infinite intensities")
    return tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=nifti.affine, path=path)


def check_writable(path: str | Path) -> Path:
    """Fail early, before any computation, if ``path`` cannot be written as a NIfTI file."""
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"output {path}: the name must end in .nii or .nii.gz")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"output {path}: folder {folder} does not exist")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"output {path}: not writable")
    return path


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"folder {folder} cannot be created ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"folder {folder}: not writable")
    return folder


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(temporary_path)`` and rename the result to ``path``; nothing is left on failure."""
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's files are private; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


#: Voxels by which a working-grid result is extended at its border before going back to the input grid.
BORDER_EXTENSION = 2


def to_input_grid(data: torch.Tensor, affine: np.ndarray, reference: tio.Image, label: bool) -> torch.Tensor:
    """Resample ``data`` ``(X, Y, Z)`` (on the grid ``affine``) onto ``reference``'s grid.

    Labels use nearest neighbour, probabilities linear interpolation. The working grid may
    cover slightly less than the input (resampling rounds its extent down), so its border
    values are first extended by :data:`BORDER_EXTENSION` voxels: input voxels near the
    border take the nearest result instead of an out-of-field 0.
    """
    image_class = tio.LabelMap if label else tio.ScalarImage
    pad = BORDER_EXTENSION
    extended = F.pad(data[None, None].float(), (pad,) * 6, mode="replicate")[0, 0].to(data.dtype)
    shift = np.eye(4)
    shift[:3, 3] = -pad
    image = image_class(tensor=extended[None], affine=affine @ shift)
    target = tio.ScalarImage(tensor=torch.zeros((1, *reference.spatial_shape)), affine=reference.affine)
    resampled = tio.Resample(target, image_interpolation="linear", label_interpolation="nearest")(image)
    out = resampled.data[0]
    if tuple(out.shape) != tuple(reference.spatial_shape):
        raise RuntimeError(f"resampling gave shape {tuple(out.shape)}, expected {reference.spatial_shape}")
    return out


def write_like(data: np.ndarray, reference: tio.Image, path: str | Path, dtype) -> None:
    """Write ``data`` on ``reference``'s grid to ``path`` atomically, with exactly its affine."""
    path = Path(path)
    nifti = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine)
    nifti.set_qform(reference.affine, code=1)
    nifti.set_sform(reference.affine, code=1)
    atomic_write_bytes(path, lambda temporary: nib.save(nifti, temporary))
