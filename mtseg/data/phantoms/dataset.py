"""Phantom grids, generation of one subject, and phantom data sets written as NIfTI files."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from mtseg.data.phantoms import brain, breast, cta
from mtseg.nifti import atomic_write_bytes
from mtseg.tasks import get_task

#: Bump whenever generated phantoms change; part of the dataset cache key.
GENERATOR_VERSION = 1

#: Smallest number of voxels along any axis of a phantom.
MIN_AXIS_VOXELS = 32

#: Default grid of each task: voxels per axis and isotropic voxel size (mm); each task's anatomy
#: is laid out in mm for its default grid's field of view.
DEFAULT_SHAPES: dict[str, tuple[int, int, int]] = {
    "brain": brain.DEFAULT_SHAPE,
    "breast": breast.DEFAULT_SHAPE,
    "cta": cta.DEFAULT_SHAPE,
}
DEFAULT_SPACINGS: dict[str, float] = {
    "brain": brain.DEFAULT_SPACING,
    "breast": breast.DEFAULT_SPACING,
    "cta": cta.DEFAULT_SPACING,
}

#: Generator of each task: ``(rng, shape, spacing) -> (image, label)``.
GENERATORS: dict[
    str,
    Callable[[np.random.Generator, tuple[int, int, int], float], tuple[np.ndarray, np.ndarray]],
] = {
    "brain": brain.brain_phantom,
    "breast": breast.breast_phantom,
    "cta": cta.cta_phantom,
}


@dataclass(frozen=True)
class PhantomSpec:
    """Voxel grid of one task's phantoms.

    Args:
        task: Task name, ``"brain"``, ``"breast"`` or ``"cta"``.
        shape: Voxels per axis in RAS order (x: left to right, y: posterior to anterior,
            z: inferior to superior); at least 32 per axis.
        spacing: Isotropic voxel size in mm.
    """

    task: str
    shape: tuple[int, int, int]
    spacing: float

    def __post_init__(self) -> None:
        get_task(self.task)
        shape = tuple(self.shape)
        if len(shape) != 3 or any(int(n) != n or n < MIN_AXIS_VOXELS for n in shape):
            raise ValueError(
                f"Phantom shape {shape} is invalid: it needs 3 whole numbers of voxels, "
                f"each at least {MIN_AXIS_VOXELS}"
            )
        spacing = float(self.spacing)
        if not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(
                f"Phantom spacing {self.spacing} is invalid: it must be a positive number of mm"
            )
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        object.__setattr__(self, "spacing", spacing)

    @property
    def affine(self) -> np.ndarray:
        """RAS voxel-to-world matrix: diagonal ``spacing``, volume centre at world 0."""
        affine = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        affine[:3, 3] = -0.5 * (np.asarray(self.shape) - 1) * self.spacing
        return affine


def default_spec(task: str) -> PhantomSpec:
    """The default grid of ``task``: the paper's spacing, a field of view that holds the phantom."""
    get_task(task)
    return PhantomSpec(task, DEFAULT_SHAPES[task], DEFAULT_SPACINGS[task])


def generate_phantom(spec: PhantomSpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom subject.

    Args:
        spec: Task and voxel grid.
        seed: Non-negative integer; the same seed and spec give bit-identical arrays.

    Returns:
        The image (float32; arbitrary positive MRI units or CT HU), the task-local label
        map (uint8) and the 4x4 RAS affine (float64).
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"Phantom seed {seed} is invalid: it must be a non-negative integer")
    rng = np.random.default_rng(int(seed))
    image, label = GENERATORS[spec.task](rng, spec.shape, spec.spacing)
    return image.astype(np.float32), label.astype(np.uint8), spec.affine


def write_phantom_dataset(
    task: str,
    root: str | Path,
    n_subjects: int,
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: float | None = None,
    progress: bool = True,
) -> list[tuple[Path, Path]]:
    """Generate ``n_subjects`` phantoms of ``task`` as NIfTI files, or reuse them if already there.

    Files go to ``root/<task>-<hash>/images/<task>_<i>.nii.gz`` and ``labels/...``, where the
    hash covers the generator version and all arguments that change the data. Subject ``i``
    is seeded from ``(seed, i)``, so it is the same whatever ``n_subjects`` is. Every file is
    written under a temporary name and renamed; ``params.json`` is written last, so its
    presence marks a complete dataset, which later calls return without regenerating.

    Args:
        task: Task name.
        root: Folder that holds the generated datasets.
        n_subjects: Number of subjects, at least 1.
        seed: Non-negative integer seed of the dataset.
        shape: Voxels per axis; ``None`` for the task's default.
        spacing: Isotropic voxel size in mm; ``None`` for the task's default.
        progress: Show a progress bar while generating.

    Returns:
        ``(image, label)`` paths in subject order.
    """
    default = default_spec(task)
    spec = PhantomSpec(
        task,
        default.shape if shape is None else tuple(shape),
        default.spacing if spacing is None else spacing,
    )
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(f"n_subjects={n_subjects} is invalid: it must be a positive integer")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed={seed} is invalid: it must be a non-negative integer")
    params = {
        "generator_version": GENERATOR_VERSION,
        "task": task,
        "n_subjects": int(n_subjects),
        "seed": int(seed),
        "shape": list(spec.shape),
        "spacing": spec.spacing,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) / f"{task}-{digest}"
    pairs = [
        (folder / "images" / f"{task}_{i:03d}.nii.gz", folder / "labels" / f"{task}_{i:03d}.nii.gz")
        for i in range(int(n_subjects))
    ]
    params_path = folder / "params.json"
    if _is_complete(params_path, params, pairs):
        return pairs

    for directory in ("images", "labels"):
        (folder / directory).mkdir(parents=True, exist_ok=True)
    subject_seeds = [_subject_seed(int(seed), i) for i in range(int(n_subjects))]
    for (image_path, label_path), subject_seed in tqdm(
        list(zip(pairs, subject_seeds)), desc=f"Generating {task} phantoms", disable=not progress
    ):
        if image_path.is_file() and label_path.is_file():
            continue  # left by an interrupted run with the same parameters
        image, label, affine = generate_phantom(spec, subject_seed)
        _save_nifti(image, affine, image_path)
        _save_nifti(label, affine, label_path)
    record = {
        "parameters": params,
        "classes": ["background", *get_task(task).classes],
        "subject_seeds": subject_seeds,
        "subjects": [[str(i.relative_to(folder)), str(l.relative_to(folder))] for i, l in pairs],
    }
    atomic_write_bytes(params_path, lambda path: Path(path).write_text(json.dumps(record, indent=2)))
    return pairs


def _subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a dataset seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def _is_complete(params_path: Path, params: dict, pairs: list[tuple[Path, Path]]) -> bool:
    """Whether ``params_path`` records ``params`` and every file of ``pairs`` exists."""
    if not params_path.is_file():
        return False
    try:
        stored = json.loads(params_path.read_text())["parameters"]
    except (ValueError, KeyError):
        return False
    return stored == params and all(path.is_file() for pair in pairs for path in pair)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` as NIfTI with ``affine`` as qform and sform (code 1, mm), atomically."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    atomic_write_bytes(path, lambda temporary: nib.save(image, temporary))
