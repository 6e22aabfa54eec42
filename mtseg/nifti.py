"""NIfTI in and out: reading a user's image with clear errors, writing results on the input's grid.

Results computed on the working grid (canonical orientation, isotropic spacing) are
brought back to the input's exact grid (same shape, same affine) with TorchIO's
``Resample`` to the input image, and written atomically: a temporary file in the
destination folder, renamed when complete, so a failure never leaves a partial file.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from mtseg.defaults import conf_defaults

#: The file names mtseg reads and writes, the longer first (a name's suffix is stripped in this order).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Compressed bytes read at a time when a ``.nii.gz`` is measured (memory stays at a few MB).
_GZIP_CHUNK = 1 << 20


def is_nifti_path(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may declare (``conf/limits.yaml``): checked before any voxel is read."""

    max_voxels: int
    min_spacing_mm: float
    max_spacing_mm: float

    @classmethod
    def load(cls, **overrides) -> ImageLimits:
        """The limits of ``conf/limits.yaml``, with ``overrides`` (``None`` values ignored)."""
        values = conf_defaults("limits.yaml")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(int(values["max_voxels"]), float(values["min_spacing_mm"]), float(values["max_spacing_mm"]))

    def check_grid(self, n_voxels: int, what: str) -> None:
        """Refuse a grid of more than :attr:`max_voxels` voxels; ``what`` names it in the message."""
        if n_voxels > self.max_voxels:
            raise ValueError(
                f"{what} would hold {n_voxels:,d} voxels, more than max_voxels={self.max_voxels:,d} "
                "(conf/limits.yaml, or --max-voxels for predict)"
            )


def _decompressed_at_least(path: Path, needed: int) -> int:
    """Decompressed bytes of the gzip file ``path``, counted in chunks up to ``needed`` (then it stops)."""
    total = 0
    with open(path, "rb") as handle:
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        while total < needed:
            chunk = decompressor.unconsumed_tail or handle.read(_GZIP_CHUNK)
            if not chunk:
                break
            total += len(decompressor.decompress(chunk, _GZIP_CHUNK * 8))
            if decompressor.eof:  # a further gzip member may follow
                rest = decompressor.unused_data
                decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
                if rest:
                    total += len(decompressor.decompress(rest, _GZIP_CHUNK * 8))
    return total


def check_geometry(name: str, shape, dtype: np.dtype, spacing, affine, limits: ImageLimits) -> tuple[int, int, int]:
    """Refuse an image, from its declared geometry alone, that mtseg cannot or must not read: a
    non-scalar voxel type, not 3-D (or 4-D with one volume), fewer than 2 voxels along an axis, more
    than ``max_voxels`` voxels, spacings that are not finite or lie outside ``[min_spacing_mm,
    max_spacing_mm]``, an affine that is not finite or not invertible. Nothing here reads a voxel:
    files, nibabel images and TorchIO images all pass this one check first.

    Args:
        name: The image in messages: its path or :data:`IN_MEMORY`.
        shape: The declared shape.
        dtype: The voxel type.
        spacing: The voxel sizes in mm (a NIfTI header's zooms, or the affine's column norms).
        affine: The voxel-to-world affine.
        limits: :class:`ImageLimits`.

    Returns:
        The 3-D spatial shape.

    Raises:
        ValueError: naming ``name`` and the problem.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"{name}: voxels of type {dtype} (e.g. RGB or complex); a scalar intensity or label image is needed")
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(
            f"{name}: expected a 3-D image, got {len(shape)}-D data of shape {shape}"
            + (" (one volume of a 4-D series can be cut out with e.g. fslroi)" if len(shape) == 4 else "")
        )
    if min(shape) < 2:
        raise ValueError(f"{name}: a 3-D image needs at least 2 voxels per axis, got shape {shape}")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    limits.check_grid(n_voxels, f"{name}: its header declares a {'x'.join(map(str, shape))} image that")
    try:
        zooms = np.asarray(spacing, dtype=np.float64).reshape(3)
        affine = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: its spacing {spacing!r} or affine is not numeric (corrupt header)") from None
    if not np.isfinite(zooms).all() or (zooms <= 0).any():
        raise ValueError(f"{name}: voxel spacing {zooms.tolist()} mm is not finite and positive (corrupt header)")
    if zooms.min() < limits.min_spacing_mm or zooms.max() > limits.max_spacing_mm:
        raise ValueError(
            f"{name}: voxel spacing {np.round(zooms, 6).tolist()} mm lies outside "
            f"min_spacing_mm={limits.min_spacing_mm:g} .. max_spacing_mm={limits.max_spacing_mm:g} (conf/limits.yaml)"
        )
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name}: its affine is not finite or not invertible (corrupt header):\n{np.round(affine, 4)}")
    return shape


def _check_file_holds(path: Path, offset: int, n_voxels: int, dtype: np.dtype) -> None:
    """Refuse ``path`` if it holds fewer data bytes than ``n_voxels`` voxels of ``dtype`` from ``offset``
    (gzip files are measured by decompressing in chunks, never whole)."""
    needed = offset + n_voxels * np.dtype(dtype).itemsize
    if str(path).endswith(".gz"):
        try:
            found = _decompressed_at_least(path, needed)
        except (OSError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from None
    else:
        found = path.stat().st_size
    if found < needed:
        raise ValueError(
            f"{path}: truncated: its header declares {n_voxels:,d} voxels of {dtype} ({needed:,d} bytes with the header), "
            f"the file holds {found:,d}"
        )


def existing_file(path: str | Path, what: str = "image") -> Path:
    """``path`` if it is a file; else a clear error: it does not exist, or it is a folder.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def checked_nifti(path: str | Path, limits: ImageLimits | None = None) -> nib.Nifti1Image:
    """``path`` opened as NIfTI (its voxels not yet read) once its header has been checked against the
    file and ``limits`` (:func:`check_geometry`, with the header's zooms) and the file holds as many
    data bytes as the header declares.

    Raises:
        FileNotFoundError: The file does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: Anything else, with the file named.
    """
    path = existing_file(path)
    limits = limits or ImageLimits.load()
    if not is_nifti_path(path):
        raise ValueError(f"{path}: not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    try:
        nifti = nib.load(path)
        header = nifti.header
        shape = tuple(int(n) for n in nifti.shape)
        dtype = header.get_data_dtype()
        zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
        affine = np.asarray(nifti.affine, dtype=np.float64)
        offset = int(getattr(nifti.dataobj, "offset", 0))  # the header object nibabel returns resets vox_offset
    except Exception as error:
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error})") from None
    shape = check_geometry(str(path), shape, dtype, zooms, affine, limits)
    _check_file_holds(path, offset, int(np.prod(shape, dtype=np.int64)), dtype)
    return nifti


def read_voxels(path: str | Path, limits: ImageLimits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 3-D voxels (as stored) and the affine of the NIfTI file ``path``, read once its header has
    passed :func:`checked_nifti` (so a header declaring more than the file holds is refused unread).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Naming ``path``: not NIfTI, a header that :func:`checked_nifti` refuses, or voxel
            data that cannot be read (e.g. corrupt gzip data).
    """
    nifti = checked_nifti(path, limits)
    try:
        data = np.asanyarray(nifti.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error})") from None
    return (data[..., 0] if data.ndim == 4 else data), nifti.affine  # checked: 3-D, or 4-D with one volume


def read_image(path: str | Path, limits: ImageLimits | None = None) -> tio.ScalarImage:
    """A 3-D NIfTI image as a TorchIO image, checked: the header (:func:`checked_nifti`), then
    finite intensities.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not a NIfTI file, unreadable, a header that :func:`checked_nifti` refuses,
            or NaN or infinite intensities.
    """
    path = Path(path)
    data, affine = read_voxels(path, limits)
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: holds {int((~np.isfinite(data)).sum())} NaN or infinite intensities")
    return tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine, path=path)


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


def check_outputs(outputs: list[Path], inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse to write any of ``outputs`` over one of ``inputs`` (``{role: path}``), compared by resolved path
    and, for existing files, by identity (``os.path.samefile``: symbolic and hard links included); refuse an
    existing output unless ``overwrite``.

    Raises:
        ValueError: naming the output and the input or the ``--overwrite`` flag.
    """
    for output in outputs:
        output = Path(output)
        for role, source in inputs.items():
            source = Path(source)
            same = output.resolve() == source.resolve()
            if not same and output.exists() and source.exists():
                same = os.path.samefile(output, source)
            if same:
                raise ValueError(f"output {output} would replace the {role} {source}; choose another output path")
        if output.exists() and not overwrite:
            raise ValueError(f"output {output} exists; pass --overwrite to replace it")


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


def atomic_write_all(writes) -> None:
    """For each ``(path, write)``, call ``write(temporary_path)`` on a temporary file beside ``path``; once
    all are written, rename each to its ``path``. A failure or signal before the renames replaces
    nothing and leaves no temporary file, so an earlier set of outputs stays whole."""
    staged: list[tuple[Path, str]] = []
    try:
        for path, write in writes:
            path = Path(path)
            suffix = ".nii.gz" if str(path).endswith(".nii.gz") else path.suffix
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            os.close(handle)
            staged.append((path, temporary))
            write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        for _, temporary in staged:
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp's files are private; give the usual permissions
        # the renames are one step: SIGTERM and SIGINT wait until all are done (main thread)
        blocked = {signal.SIGTERM, signal.SIGINT} if threading.current_thread() is threading.main_thread() else set()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else None
        try:
            for path, temporary in staged:
                os.replace(temporary, path)
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    except BaseException:
        for _, temporary in staged:
            Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(temporary_path)`` and rename the result to ``path``; nothing is left on failure."""
    atomic_write_all([(path, write)])


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


def nifti_writer(data, reference: tio.Image, dtype):
    """``write(path)`` that saves ``data`` (an array, or a function returning one when called) as NIfTI
    on ``reference``'s grid, with exactly its affine; for :func:`atomic_write_all`."""

    def write(path) -> None:
        values = data() if callable(data) else data
        nifti = nib.Nifti1Image(np.asarray(values, dtype=dtype), reference.affine)
        nifti.set_qform(reference.affine, code=1)
        nifti.set_sform(reference.affine, code=1)
        nib.save(nifti, path)

    return write


def write_like(data: np.ndarray, reference: tio.Image, path: str | Path, dtype) -> None:
    """Write ``data`` on ``reference``'s grid to ``path`` atomically, with exactly its affine."""
    atomic_write_bytes(Path(path), nifti_writer(data, reference, dtype))
