"""Synthetic 3-D phantoms: mtseg's built-in default data.

The paper's images (brain T1 MRI, breast T1 MRI, cardiac CTA) are not public, so
mtseg generates phantoms with the same classes and the same difficulty: in every
task the target classes share their intensity distribution with other structures,
so a per-voxel intensity classifier cannot find them (see :mod:`mtseg.baseline`)
and a network needs spatial context.

* **brain** (T1 MRI, 1.0 mm, default 96 x 112 x 96 voxels): a head scaled to about
  60 % of adult size. Scalp fat, skull, extra-cerebral CSF, a folded cortical ribbon
  with sulci, white matter, lateral and third ventricles, caudate, putamen and
  thalami, a cerebellum with folia and a brain stem.
* **breast** (T1 MRI, 1.3 mm, default 112 x 80 x 64 voxels): two fatty breasts with
  fibroglandular tissue, lying anterior to a thin pectoral muscle sheet, intercostal
  muscle, ribs, sternum, lungs and the heart. Pectoral and intercostal muscle are one
  tissue type, so they share their intensity distribution.
* **cta** (CT angiography in HU, 0.45 mm, default 128 x 128 x 96 voxels): a thorax
  and heart scaled to about 40 % of adult size with coronary arteries of real size
  (1.5-4 mm diameter) running in the epicardial fat from the aortic root (left main
  into LAD and circumflex with diagonal and marginal branches, right coronary artery
  with a posterior descending branch). Coronary lumen and blood pool share one
  intensity distribution. Voxels outside a circular field of view are -2048 HU.

Every subject varies in size, pose, shape, tissue intensities, bias field (MRI) and
noise. Anatomy is laid out in millimetres for the task's default field of view and
scaled isotropically to fit the field of view of the requested grid
(``shape * spacing``), so any grid shows the whole anatomy and the same seed gives
the same anatomy at every resolution. Keep ``shape * spacing`` near the default to
keep anatomical sizes (e.g. coronary diameters) realistic.

Task-local labels follow :mod:`mtseg.tasks`: brain 1 white matter, 2 cortical grey
matter, 3 basal ganglia and thalami, 4 ventricular CSF, 5 cerebellum, 6 brain stem;
breast 1 pectoral muscle; cta 1 coronary arteries; 0 is everything else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from tqdm.auto import tqdm

from mtseg.nifti import atomic_write_bytes
from mtseg.tasks import get_task

#: Bump whenever generated phantoms change; part of the dataset cache key.
GENERATOR_VERSION = 1

#: Smallest number of voxels along any axis of a phantom.
MIN_AXIS_VOXELS = 32

_DEFAULT_SHAPES: dict[str, tuple[int, int, int]] = {
    "brain": (96, 112, 96),
    "breast": (112, 80, 64),
    "cta": (128, 128, 96),
}
_DEFAULT_SPACINGS: dict[str, float] = {"brain": 1.0, "breast": 1.3, "cta": 0.45}

#: Gaussian blur (voxels) applied to the noise-free image: partial volume.
_PARTIAL_VOLUME_SIGMA = 0.6

#: Mean T1 intensity of each brain tissue relative to white matter; the order gives tissue codes.
_BRAIN_T1 = {
    "air": 0.0,
    "skin": 0.55,
    "scalp_fat": 1.35,
    "skull": 0.08,
    "diploe": 0.35,
    "csf": 0.2,
    "cortex": 0.6,
    "white_matter": 1.0,
    "deep_grey": 0.7,
    "cerebellar_cortex": 0.6,
    "cerebellar_white_matter": 0.95,
    "brain_stem": 0.93,
    "muscle": 0.5,
}
#: Mean T1 intensity of each breast MRI tissue relative to fat; the order gives tissue codes.
_BREAST_T1 = {
    "air": 0.0,
    "skin": 0.5,
    "fat": 1.0,
    "fibroglandular": 0.4,
    "muscle": 0.36,
    "bone_cortex": 0.07,
    "marrow": 0.75,
    "lung": 0.04,
    "heart": 0.33,
}
#: Range of the mean intensity (HU) of each CTA tissue; the order gives tissue codes.
_CTA_HU = {
    "air": (-1000.0, -1000.0),
    "lung": (-880.0, -800.0),
    "fat": (-120.0, -80.0),
    "muscle": (40.0, 60.0),
    "myocardium": (80.0, 130.0),
    "blood": (350.0, 500.0),
    "bone_cortex": (700.0, 1000.0),
    "marrow": (200.0, 350.0),
    "spinal_canal": (10.0, 30.0),
}


def _codes(table: dict) -> dict[str, int]:
    return {name: code for code, name in enumerate(table)}


_BRAIN = _codes(_BRAIN_T1)
_BREAST = _codes(_BREAST_T1)
_CTA = _codes(_CTA_HU)


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
    return PhantomSpec(task, _DEFAULT_SHAPES[task], _DEFAULT_SPACINGS[task])


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
    image, label = _GENERATORS[spec.task](rng, spec)
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
    if not params_path.is_file():
        return False
    try:
        stored = json.loads(params_path.read_text())["parameters"]
    except (ValueError, KeyError):
        return False
    return stored == params and all(path.is_file() for pair in pairs for path in pair)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    atomic_write_bytes(path, lambda temporary: nib.save(image, temporary))


# ----------------------------------------------------------------------------------------------
# Geometry helpers

#: A tube: centre-line points ``(n, 3)`` and radii ``(n,)``, anatomical mm.
_Tube = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Placement:
    """Maps a subject's anatomical frame (mm, task design size) to the voxel grid.

    A world point ``x`` (mm) has anatomical coordinates ``q = R^T (x / unit - t)``.

    Args:
        shape: Voxels per axis.
        spacing: World voxel size in mm.
        unit: World mm per anatomical mm: field-of-view scale times the subject's size.
        rotation: 3x3 rotation from the anatomical to the world axes.
        translation: Subject offset in anatomical mm, world axes.
    """

    shape: tuple[int, int, int]
    spacing: float
    unit: float
    rotation: np.ndarray
    translation: np.ndarray

    @property
    def voxel_mm(self) -> float:
        """Voxel size in anatomical mm."""
        return self.spacing / self.unit

    def axes(self) -> list[np.ndarray]:
        """Unrotated anatomical-scale coordinates (mm, centre 0) of the voxel centres per axis."""
        return [(np.arange(n) - 0.5 * (n - 1)) * self.voxel_mm for n in self.shape]

    def anatomical_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomical coordinates (mm) of every voxel centre, three float32 arrays."""
        axes = [axis - offset for axis, offset in zip(self.axes(), self.translation)]
        grid = np.ix_(*axes)
        return tuple(
            sum(self.rotation[j, k] * grid[j] for j in range(3)).astype(np.float32)
            for k in range(3)
        )

    def to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Voxel coordinates of anatomical points, shape ``(n, 3)``."""
        world = points @ self.rotation.T + self.translation
        return world / self.voxel_mm + 0.5 * (np.asarray(self.shape) - 1)


def _place_subject(
    rng: np.random.Generator,
    spec: PhantomSpec,
    size_range: tuple[float, float],
    max_rotation_deg: float,
    max_shift_mm: float,
) -> _Placement:
    """Random size, rotation and shift of a subject in the spec's field of view."""
    design_fov = np.asarray(_DEFAULT_SHAPES[spec.task]) * _DEFAULT_SPACINGS[spec.task]
    fov_scale = float(np.min(np.asarray(spec.shape) * spec.spacing / design_fov))
    size = rng.uniform(*size_range)
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return _Placement(spec.shape, spec.spacing, fov_scale * size, _rotation(angles), shift)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, y and z, applied in that order."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _design_half_extent(task: str) -> np.ndarray:
    return 0.5 * np.asarray(_DEFAULT_SHAPES[task]) * _DEFAULT_SPACINGS[task]


class _SmoothNoise:
    """Unit-variance smooth random field: white noise on a regular node lattice, Gaussian kernel.

    The lattice covers the task's design field of view (plus a margin), so the random
    draws and the field do not depend on the voxel grid it is evaluated on.

    Args:
        rng: Random generator.
        half_extent: Half size (anatomical mm) of the region the field covers, per axis.
        correlation_mm: Node spacing and kernel width in mm.
    """

    def __init__(self, rng: np.random.Generator, half_extent: np.ndarray, correlation_mm: float):
        self.nodes = [
            np.arange(-math.ceil(1.3 * h / correlation_mm), math.ceil(1.3 * h / correlation_mm) + 1)
            * correlation_mm
            for h in half_extent
        ]
        self.width = correlation_mm
        self.values = rng.standard_normal([len(n) for n in self.nodes])

    def _weights(self, axis: int, coordinates: np.ndarray) -> np.ndarray:
        nodes = self.nodes[axis]
        clipped = np.clip(coordinates, nodes[0], nodes[-1])
        weights = np.exp(-0.5 * ((clipped[:, None] - nodes[None, :]) / self.width) ** 2)
        return weights / np.sqrt(np.sum(weights**2, axis=1, keepdims=True))

    def on_grid(self, placement: _Placement) -> np.ndarray:
        """The field at the voxel centres (unrotated frame), float32."""
        w0, w1, w2 = (self._weights(k, axis) for k, axis in enumerate(placement.axes()))
        field = np.tensordot(w0, self.values, axes=(1, 0))  # (n0, c1, c2)
        field = np.tensordot(field, w1, axes=(1, 1))  # (n0, c2, n1)
        field = np.tensordot(field, w2, axes=(1, 1))  # (n0, n1, n2)
        return field.astype(np.float32)


class _RandomWaves:
    """Unit-variance sum of plane waves with random directions, wavelengths and phases.

    Cheap to evaluate anywhere (analytic), used for folds and smooth surfaces.

    Args:
        rng: Random generator.
        n_dims: Number of coordinates the field depends on.
        wavelength_mm: Range of the wavelengths.
        n_waves: Number of plane waves.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        n_dims: int,
        wavelength_mm: tuple[float, float],
        n_waves: int,
    ):
        directions = rng.standard_normal((n_waves, n_dims))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.wave_vectors = directions * (2 * np.pi / rng.uniform(*wavelength_mm, n_waves))[:, None]
        self.phases = rng.uniform(0, 2 * np.pi, n_waves)
        self.amplitude = math.sqrt(2.0 / n_waves)

    def __call__(self, *coordinates: np.ndarray | float) -> np.ndarray:
        total = 0.0
        for wave_vector, phase in zip(self.wave_vectors, self.phases):
            argument = sum(k * c for k, c in zip(wave_vector, coordinates)) + phase
            total = total + np.sin(argument)
        return (self.amplitude * total).astype(np.float32)


def _ellipsoid_radius(
    coordinates: Sequence[np.ndarray],
    centre: Sequence[float],
    semi_axes: Sequence[float | np.ndarray],
) -> np.ndarray:
    """Normalised ellipsoid radius: below 1 inside, 1 on the surface."""
    return np.sqrt(sum(((c - m) / s) ** 2 for c, m, s in zip(coordinates, centre, semi_axes)))


def _ray_depth(
    coordinates: Sequence[np.ndarray], centre: Sequence[float], radius: np.ndarray
) -> np.ndarray:
    """Distance (mm) from a point to the surface ``radius == 1`` along the ray from ``centre``.

    Positive inside, negative outside; ``radius`` is a normalised star-shaped radius.
    """
    distance = np.sqrt(sum((c - m) ** 2 for c, m in zip(coordinates, centre)))
    return distance * (1 - radius) / np.maximum(radius, 1e-6)


def _path(
    control_points: Sequence[Sequence[float]], control_radii: Sequence[float], step_mm: float
) -> _Tube:
    """A smooth curve through control points, sampled every ``step_mm``, with interpolated radii.

    Returns:
        ``(points, radii)``: arrays of shape ``(n, 3)`` and ``(n,)``.
    """
    control = np.asarray(control_points, dtype=float)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    samples = np.linspace(0.0, chord[-1], max(2, int(math.ceil(chord[-1] / step_mm)) + 1))
    points = CubicSpline(chord, control, bc_type="natural")(samples)
    return points, np.interp(samples, chord, np.asarray(control_radii, dtype=float))


def _tube_distance(placement: _Placement, paths: Sequence[_Tube], reach_mm: float) -> np.ndarray:
    """Signed distance (anatomical mm) to a union of tapered tubes, exact up to ``reach_mm``.

    Voxels farther than ``reach_mm`` from every tube hold ``inf``. Each path is a pair
    ``(points, radii)`` in anatomical mm; segments are swept with linearly varying radius.
    """
    distance = np.full(placement.shape, np.inf, dtype=np.float32)
    shape = np.asarray(placement.shape)
    for points, radii in paths:
        voxels = placement.to_voxel(points)
        for start, end, start_radius, end_radius in zip(
            voxels[:-1], voxels[1:], radii[:-1], radii[1:]
        ):
            margin = (max(start_radius, end_radius) + reach_mm) / placement.voxel_mm
            low = np.maximum(np.floor(np.minimum(start, end) - margin).astype(int), 0)
            high = np.minimum(np.ceil(np.maximum(start, end) + margin).astype(int) + 1, shape)
            if np.any(high <= low):
                continue
            grid = np.ogrid[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
            offsets = [g - s for g, s in zip(grid, start)]
            direction = end - start
            length_sq = float(direction @ direction)
            along = sum(o * d for o, d in zip(offsets, direction)) / max(length_sq, 1e-12)
            along = np.clip(along, 0.0, 1.0)
            gap = np.sqrt(sum((o - along * d) ** 2 for o, d in zip(offsets, direction)))
            signed = gap * placement.voxel_mm - (start_radius + along * (end_radius - start_radius))
            block = distance[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
            np.minimum(block, signed, out=block)
    return distance


def _distance_inside(mask: np.ndarray, placement: _Placement) -> np.ndarray:
    """Distance (anatomical mm) from each voxel of ``mask`` to the nearest voxel outside it."""
    return ndimage.distance_transform_edt(mask, sampling=placement.voxel_mm).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Rendering


def _render_mri(
    rng: np.random.Generator,
    tissue: np.ndarray,
    tissue_means: np.ndarray,
    texture: np.ndarray,
    bias: np.ndarray,
    noise_sigma: float,
) -> np.ndarray:
    """T1 image: tissue means with texture, partial volume blur, bias field, Rician noise."""
    image = tissue_means[tissue].astype(np.float32) * (1 + texture)
    image = ndimage.gaussian_filter(image, _PARTIAL_VOLUME_SIGMA) * bias
    real = image + noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def _tissue_means(
    rng: np.random.Generator, relative: dict[str, float], scale: float, jitter: float
) -> np.ndarray:
    """Per-subject mean intensity of each tissue: relative means times ``scale``, jittered."""
    means = np.asarray(list(relative.values())) * scale
    return means * (1 + jitter * rng.standard_normal(len(means)))


# ----------------------------------------------------------------------------------------------
# Brain


def _brain(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """T1 brain MRI phantom and its labels (see module docstring)."""
    placement = _place_subject(rng, spec, (0.94, 1.04), 5.0, 2.0)
    half = _design_half_extent("brain")
    u, v, w = placement.anatomical_coordinates()
    shape_noise = _SmoothNoise(rng, half, 22.0).on_grid(placement)
    thickness_noise = _SmoothNoise(rng, half, 12.0).on_grid(placement)
    detail_noise = _SmoothNoise(rng, half, 6.0).on_grid(placement)
    fold_warp = [2.5 * _SmoothNoise(rng, half, 8.0).on_grid(placement) for _ in range(3)]
    folds = _RandomWaves(rng, 3, (14.0, 22.0), 24)

    # Cerebrum: an ellipsoid, flatter below its centre except for the temporal lobes, lumpy surface.
    centre = np.array([0.0, 2.0, 6.0]) + rng.normal(0, 0.7, 3)
    semi_lr, semi_ap = rng.uniform(31, 35), rng.uniform(39, 43)
    semi_up, semi_down = rng.uniform(26, 30), rng.uniform(18, 22)
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    temporal_bulge = 0.8 + 0.45 * np.minimum((du / semi_lr) ** 2, 1)
    semi_is = np.where(dw > 0, semi_up, semi_down * temporal_bulge).astype(np.float32)
    radius = _ellipsoid_radius((du, dv, dw), (0, 0, 0), (semi_lr, semi_ap, semi_is))
    radius *= 1 + 0.03 * shape_noise
    depth = _ray_depth((du, dv, dw), (0, 0, 0), radius)
    envelope = radius < 1

    # Sulci: thin sheets where a fold field, nearly constant along rays from the centre, is zero.
    inverse_radius = 1 / np.maximum(radius, 1e-3)
    fold = folds(*(d * inverse_radius + warp for d, warp in zip((du, dv, dw), fold_warp)))
    fold_gradient = np.sqrt(sum(g**2 for g in np.gradient(fold, placement.voxel_mm)))
    sulcal_distance = np.abs(fold) / np.maximum(fold_gradient, 1e-3)
    sulcus_depth = rng.uniform(6.0, 9.0) * (1 + 0.3 * thickness_noise)
    sulcus = (sulcal_distance < 0.5 * rng.uniform(1.2, 2.0)) & (depth < sulcus_depth)
    fissure = (np.abs(du) < 0.8) & ((dw > 13) | (dv > 20) | (dv < -24))

    # Cerebellum under the occipital lobes, separated from them by the tentorium.
    cerebellum_centre = np.array([0.0, -24.0, -17.0]) + rng.normal(0, 0.7, 3)
    cerebellum_semi = (rng.uniform(24, 28), rng.uniform(14, 16), rng.uniform(11, 13))
    cerebellum_radius = _ellipsoid_radius((u, v, w), cerebellum_centre, cerebellum_semi)
    cerebellum_radius *= 1 + 0.03 * shape_noise
    cerebellum_depth = _ray_depth((u, v, w), cerebellum_centre, cerebellum_radius)
    cerebellum = cerebellum_depth > 0
    tentorium = cerebellum_depth > -rng.uniform(1.0, 2.0)
    skull_base = cerebellum_centre[2] - 0.5 * cerebellum_semi[2]

    # Brain stem from the midbrain down to the foramen magnum; the spinal cord continues below.
    stem_path = _path(
        [[0, -6, -1], [0, -8, -13], [0, -10, -25], [0, -11, -40], [0, -11, -60]],
        np.array([5.5, 6.5, 4.5, 4.0, 4.0]) * rng.uniform(0.9, 1.1),
        1.0,
    )
    stem_distance = _tube_distance(placement, [_jitter_path(rng, stem_path, 0.5)], 6.0)
    brain_stem = (stem_distance < 0) & (w > skull_base - 5.0)
    spinal_cord = (stem_distance < 0) & ~brain_stem

    # Head layers outside the brain: extra-cerebral CSF, skull, scalp.
    outside_distance = _distance_inside(~(envelope | cerebellum | brain_stem), placement)
    layer_variation = 1 + 0.2 * thickness_noise
    csf_outer = rng.uniform(1.5, 3.0) * layer_variation
    skull_outer = csf_outer + rng.uniform(3.0, 5.0) * layer_variation
    scalp_outer = skull_outer + rng.uniform(3.0, 5.0) * layer_variation
    skull_middle = 0.5 * (csf_outer + skull_outer)

    tissue = np.full(spec.shape, _BRAIN["air"], dtype=np.uint8)
    label = np.zeros(spec.shape, dtype=np.uint8)
    tissue[outside_distance < scalp_outer] = _BRAIN["scalp_fat"]
    tissue[outside_distance >= scalp_outer - 1.0] = _BRAIN["skin"]
    tissue[outside_distance >= scalp_outer] = _BRAIN["air"]

    # Neck below the skull base: muscle under fat and skin, vertebrae around the spinal canal.
    neck_radius = np.sqrt((u / rng.uniform(22, 26)) ** 2 + ((v + 10) / rng.uniform(19, 22)) ** 2)
    neck_depth = (1 - neck_radius) * 20.0
    neck = (neck_depth > 0) & (w < skull_base + 4.0) & (outside_distance >= skull_outer)
    tissue[neck] = _BRAIN["skin"]
    tissue[neck & (neck_depth > 1.0)] = _BRAIN["scalp_fat"]
    tissue[neck & (neck_depth > rng.uniform(3.0, 5.0))] = _BRAIN["muscle"]
    below_skull = neck & (w < skull_base)
    tissue[below_skull & (stem_distance < 6.0)] = _BRAIN["skull"]
    tissue[below_skull & (stem_distance < 4.5)] = _BRAIN["diploe"]
    tissue[below_skull & (stem_distance < 2.0)] = _BRAIN["csf"]
    tissue[spinal_cord] = _BRAIN["brain_stem"]

    diploe = np.abs(outside_distance - skull_middle) < 0.2 * (skull_outer - csf_outer)
    tissue[outside_distance < skull_outer] = _BRAIN["skull"]
    tissue[diploe] = _BRAIN["diploe"]
    tissue[outside_distance < csf_outer] = _BRAIN["csf"]

    # Cerebrum: a cortical ribbon within a thickness of every CSF surface, white matter inside.
    cerebrum = envelope & ~sulcus & ~fissure & ~tentorium
    cortex_thickness = rng.uniform(2.0, 3.0) * (1 + 0.15 * detail_noise)
    cortex = cerebrum & (_distance_inside(cerebrum, placement) < cortex_thickness)
    tissue[cerebrum] = _BRAIN["white_matter"]
    label[cerebrum] = 1
    tissue[cortex] = _BRAIN["cortex"]
    label[cortex] = 2

    # Cerebellum: folia fanning out from its anterior core, alternating cortex and white matter.
    fan_centre = cerebellum_centre + np.array(
        [0.0, 0.45 * cerebellum_semi[1], 0.15 * cerebellum_semi[2]]
    )
    fan_angle = np.arctan2(w - fan_centre[2], fan_centre[1] - v)
    folium = np.cos(rng.uniform(15, 19) * fan_angle + 1.5 * detail_noise)
    core_depth = rng.uniform(0.5, 0.6) * min(cerebellum_semi)
    cerebellar_white = (cerebellum_depth > core_depth) | ((folium > 0.7) & (cerebellum_depth > 1.5))
    folial_fissure = (folium < -0.7) & (cerebellum_depth < 0.8 * core_depth)
    tissue[cerebellum] = _BRAIN["cerebellar_cortex"]
    tissue[cerebellum & cerebellar_white] = _BRAIN["cerebellar_white_matter"]
    tissue[cerebellum & folial_fissure] = _BRAIN["csf"]
    label[cerebellum] = 5

    tissue[brain_stem] = _BRAIN["brain_stem"]
    label[brain_stem] = 6

    # Deep grey matter: caudate heads, putamina and thalami, bilateral.
    deep_grey = np.zeros(spec.shape, dtype=bool)
    for side in (-1.0, 1.0):
        for offset, semi in (
            ((8.0, 9.0, 4.0), (3.0, 6.0, 4.0)),  # caudate head
            ((15.0, 2.0, 0.0), (3.5, 8.0, 5.0)),  # putamen
            ((6.0, -6.0, -1.0), (5.0, 8.0, 5.5)),  # thalamus
        ):
            blob_centre = (
                centre + np.array([side * offset[0], offset[1], offset[2]]) + rng.normal(0, 0.5, 3)
            )
            blob_semi = np.asarray(semi) * rng.uniform(0.9, 1.1, 3)
            deep_grey |= (
                _ellipsoid_radius((u, v, w), blob_centre, blob_semi) * (1 + 0.05 * detail_noise) < 1
            )
    tissue[deep_grey] = _BRAIN["deep_grey"]
    label[deep_grey] = 3

    # Ventricles: C-shaped lateral ventricles (taller than wide) and a midline third ventricle.
    enlargement = rng.uniform(0.8, 1.4)
    ventricle_paths = []
    for side in (-1.0, 1.0):
        control = np.array(
            [
                [5, 17, 2],
                [4.5, 10, 6],
                [4, 0, 8],
                [5, -10, 7],
                [9, -18, 2],
                [14, -10, -6],
                [16, 0, -8],
            ],
            dtype=float,
        )
        control[:, 0] *= side
        control += centre + rng.normal(0, 0.8, control.shape)
        radii = np.array([2.5, 3.0, 3.0, 3.0, 3.5, 1.8, 1.2]) * enlargement
        ventricle_paths.append(_path(control, radii, 0.7))
        roof = control[:4] + np.array([0.0, 0.0, 2.5 * enlargement])
        ventricle_paths.append(_path(roof, radii[:4], 0.7))
    ventricles = _tube_distance(placement, ventricle_paths, 0.0) < 0
    ventricles |= (
        (np.abs(du) < 0.5 * enlargement + 0.4) & (dv > -12) & (dv < 0) & (dw > -6) & (dw < 3)
    )
    tissue[ventricles] = _BRAIN["csf"]
    label[ventricles] = 4

    tissue_means = _tissue_means(rng, _BRAIN_T1, rng.uniform(600, 900), 0.03)
    bias = np.exp(rng.uniform(0.06, 0.1) * _SmoothNoise(rng, half, 45.0).on_grid(placement))
    noise_sigma = rng.uniform(0.015, 0.035) * tissue_means[_BRAIN["white_matter"]]
    image = _render_mri(rng, tissue, tissue_means, 0.03 * detail_noise, bias, noise_sigma)
    return image, label


def _jitter_path(rng: np.random.Generator, path: _Tube, sd_mm: float) -> _Tube:
    """Shift a sampled path by a smooth random offset (one random offset per end, interpolated)."""
    points, radii = path
    ends = rng.normal(0, sd_mm, (2, 3))
    weights = np.linspace(0, 1, len(points))[:, None]
    return points + (1 - weights) * ends[0] + weights * ends[1], radii


# ----------------------------------------------------------------------------------------------
# Breast


def _breast(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """T1 breast MRI phantom (prone, breasts anterior) and its pectoral muscle label."""
    placement = _place_subject(rng, spec, (0.93, 1.04), 4.0, 3.0)
    half = _design_half_extent("breast")
    u, v, w = placement.anatomical_coordinates()
    chest_waves = _RandomWaves(rng, 2, (50.0, 100.0), 6)
    pectoral_waves = _RandomWaves(rng, 2, (30.0, 70.0), 6)
    detail_noise = _SmoothNoise(rng, half, 6.0).on_grid(placement)
    shape_noise = _SmoothNoise(rng, half, 20.0).on_grid(placement)

    # Chest wall: the anterior surface of the pectoral muscle, convex anteriorly.
    chest_front = rng.uniform(-6.0, 0.0)
    curvature_lr, curvature_is = rng.uniform(110.0, 170.0), rng.uniform(150.0, 300.0)
    pectoral_thickness = rng.uniform(6.5, 11.0)
    sternum_half_width = rng.uniform(9.0, 12.0)
    pectoral_lateral_end = rng.uniform(58.0, 68.0)

    def chest_surface(lr: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Antero-posterior position of the chest wall front at left-right ``lr``, height ``si``."""
        return (
            chest_front
            - lr**2 / (2 * curvature_lr)
            - si**2 / (2 * curvature_is)
            + 2.5 * chest_waves(lr, si)
        )

    def pectoral_depth(lr: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Pectoral muscle thickness, tapering to zero at the sternum and towards the axilla."""
        medial = np.clip((np.abs(lr) - sternum_half_width) / 6.0, 0, 1)
        lateral = np.clip((pectoral_lateral_end - np.abs(lr)) / 12.0, 0, 1)
        return pectoral_thickness * (1 + 0.15 * pectoral_waves(lr, si)) * medial * lateral

    surface = chest_surface(u, w)
    pectoral_back = surface - pectoral_depth(u, w)
    fat_plane = np.maximum(0.0, 1.0 + 0.8 * shape_noise)
    chest_wall_back = pectoral_back - fat_plane - rng.uniform(10.0, 15.0)
    subcutaneous_fat = rng.uniform(3.0, 7.0)

    # Breasts: ellipsoids centred on the skin line, pendant anteriorly.
    breast_radius = np.full(spec.shape, np.inf, dtype=np.float32)
    breast_depth = np.full(spec.shape, -np.inf, dtype=np.float32)
    breast_lr, breast_si = rng.uniform(34.0, 40.0), rng.uniform(-6.0, 6.0)
    breast_semi = np.array([rng.uniform(24, 30), rng.uniform(24, 38), rng.uniform(24, 32)])
    for side in (-1.0, 1.0):
        centre_lr = side * breast_lr
        centre = np.array(
            [centre_lr, chest_surface(centre_lr, breast_si) + subcutaneous_fat, breast_si]
        )
        centre += rng.normal(0, 1.5, 3)
        semi = breast_semi * rng.uniform(0.95, 1.05, 3)
        radius = _ellipsoid_radius((u, v, w), centre, semi) * (1 + 0.05 * shape_noise)
        breast_depth = np.maximum(breast_depth, _ray_depth((u, v, w), centre, radius))
        breast_radius = np.minimum(breast_radius, radius)
    retromammary_fat = rng.uniform(1.5, 3.0)
    breast = (breast_radius < 1) & (v > surface + retromammary_fat)
    body = (v < surface + subcutaneous_fat) | breast

    tissue = np.full(spec.shape, _BREAST["air"], dtype=np.uint8)
    tissue[body] = _BREAST["fat"]
    pectoral = (v < surface) & (v >= pectoral_back)
    tissue[pectoral] = _BREAST["muscle"]
    intercostal = (v < pectoral_back - fat_plane) & (v >= chest_wall_back)
    tissue[intercostal] = _BREAST["muscle"]
    tissue[v < chest_wall_back] = _BREAST["lung"]

    # Mediastinum: the heart in pericardial fat behind the sternum.
    heart_centre = (rng.uniform(-15, -5), chest_front - rng.uniform(40, 48), rng.uniform(-10, 0))
    heart_radius = _ellipsoid_radius((u, v, w), heart_centre, (rng.uniform(28, 34), 24.0, 30.0))
    mediastinum = v < chest_wall_back
    tissue[mediastinum & (heart_radius < 1.15)] = _BREAST["fat"]
    tissue[mediastinum & (heart_radius < 1)] = _BREAST["heart"]

    # Sternum and ribs: dark cortical bone around fatty marrow.
    sternum_depth = np.minimum.reduce(
        [sternum_half_width - np.abs(u), surface - 0.5 - v, v - (surface - rng.uniform(7.0, 10.0))]
    )
    tissue[sternum_depth > 0] = _BREAST["bone_cortex"]
    tissue[sternum_depth > 1.0] = _BREAST["marrow"]
    rib_paths = []
    rib_radius = rng.uniform(3.0, 4.0)
    rib_spacing = rng.uniform(17.0, 22.0)
    first_rib = rng.uniform(-half[2] - 10.0, -half[2] - 10.0 + rib_spacing)
    for rib_si in np.arange(first_rib, half[2] + 30.0, rib_spacing):
        for side in (-1.0, 1.0):
            lr = side * np.arange(sternum_half_width - 1.0, half[0] + 15.0, 1.5)
            si = rib_si - 0.2 * np.abs(lr)
            ap = chest_surface(lr, si) - pectoral_depth(lr, si) - 1.0 - rib_radius - 1.0
            rib_paths.append((np.stack([lr, ap, si], axis=1), np.full(len(lr), rib_radius)))
    rib_distance = _tube_distance(placement, rib_paths, 0.0)
    tissue[rib_distance < 0] = _BREAST["bone_cortex"]
    tissue[rib_distance < -1.0] = _BREAST["marrow"]

    # Fibroglandular tissue: branching strands and blobs, densest near the breast centre.
    fibroglandular_noise = _SmoothNoise(rng, half, 5.0).on_grid(placement)
    density = rng.uniform(0.15, 0.45)
    core = np.sqrt(np.clip(1 - breast_radius, 0, 1))
    fibroglandular = (
        breast
        & (breast_depth > 3.0)
        & (v > surface + retromammary_fat + 2.0)
        & (
            (np.abs(fibroglandular_noise) < density * core)
            | (fibroglandular_noise + 0.6 * detail_noise > 2.2 - core)
        )
    )
    tissue[fibroglandular] = _BREAST["fibroglandular"]

    skin = body & (_distance_inside(body, placement) < rng.uniform(1.2, 2.0))
    tissue[skin] = _BREAST["skin"]

    label = (pectoral & (tissue == _BREAST["muscle"])).astype(np.uint8)
    tissue_means = _tissue_means(rng, _BREAST_T1, rng.uniform(500, 900), 0.03)
    # Fibroglandular tissue is like muscle, a little brighter in some women.
    muscle_mean = tissue_means[_BREAST["muscle"]]
    tissue_means[_BREAST["fibroglandular"]] = muscle_mean * rng.uniform(1.0, 1.15)
    bias = np.exp(rng.uniform(0.07, 0.1) * _SmoothNoise(rng, half, 50.0).on_grid(placement))
    noise_sigma = rng.uniform(0.015, 0.035) * tissue_means[_BREAST["fat"]]
    image = _render_mri(rng, tissue, tissue_means, 0.04 * detail_noise, bias, noise_sigma)
    return image, label


# ----------------------------------------------------------------------------------------------
# Cardiac CTA


def _cta(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """Cardiac CTA phantom in HU and its coronary artery label."""
    placement = _place_subject(rng, spec, (0.95, 1.03), 3.0, 1.5)
    half = _design_half_extent("cta")
    u, v, w = placement.anatomical_coordinates()
    detail_noise = _SmoothNoise(rng, half, 2.5).on_grid(placement)
    shape_noise = _SmoothNoise(rng, half, 10.0).on_grid(placement)

    # Thorax: elliptic body cylinder; subcutaneous fat, anterior pectoral muscle, chest wall, lungs.
    body_semi = np.array([rng.uniform(40, 44), rng.uniform(29, 31)])
    body_centre_ap = rng.uniform(-9.0, -7.0)
    body_radius = np.sqrt((u / body_semi[0]) ** 2 + ((v - body_centre_ap) / body_semi[1]) ** 2)
    body_depth = (1 - body_radius) * body_semi[1] * (1 + 0.05 * shape_noise)
    subcutaneous = rng.uniform(1.5, 3.0)
    pectoral = subcutaneous + rng.uniform(1.5, 3.0)
    wall = pectoral + rng.uniform(3.0, 4.5)

    pectoral_muscle = (
        (body_depth > subcutaneous) & (body_depth < pectoral) & (v > 6) & (np.abs(u) > 4)
    )
    tissue = np.full(spec.shape, _CTA["air"], dtype=np.uint8)
    tissue[body_depth > 0] = _CTA["fat"]
    tissue[pectoral_muscle] = _CTA["muscle"]
    tissue[(body_depth >= pectoral) & (body_depth < wall)] = _CTA["muscle"]
    cavity = body_depth >= wall
    tissue[cavity] = _CTA["lung"]

    # Heart frame: long axis from the base (right, posterior, up) to the apex (left, front, down).
    apex_direction = np.array([-0.62, 0.42, -0.62]) + rng.normal(0, 0.06, 3)
    long_axis = apex_direction / np.linalg.norm(apex_direction)
    anterior_axis = np.array([0.0, 1.0, 0.0]) - long_axis[1] * long_axis
    anterior_axis /= np.linalg.norm(anterior_axis)
    side_axis = np.cross(long_axis, anterior_axis)
    # Columns: the heart frame's axes in anatomical coordinates.
    heart_rotation = np.stack([long_axis, anterior_axis, side_axis], axis=1)
    heart_centre = np.array([-6.0, 4.0, -3.0]) + rng.normal(0, 1.0, 3)
    relative = (u - heart_centre[0], v - heart_centre[1], w - heart_centre[2])
    along, front, across = (
        sum(heart_rotation[j, k] * relative[j] for j in range(3)) for k in range(3)
    )
    heart = (along, front, across)
    semi = np.array([rng.uniform(17, 20), rng.uniform(13, 15), rng.uniform(12, 14)])

    def heart_point(local: np.ndarray) -> np.ndarray:
        """Anatomical coordinates of heart-frame points ``(..., 3)``."""
        return heart_centre + np.asarray(local) @ heart_rotation.T

    ventricles_radius = _ellipsoid_radius(heart, (0, 0, 0), semi) * (1 + 0.02 * shape_noise)
    lv_centre = np.array([-0.05 * semi[0], -0.2 * semi[1], -0.15 * semi[2]])
    lv_semi = np.array([0.8 * semi[0], 0.45 * semi[1], 0.5 * semi[2]]) * rng.uniform(0.92, 1.05)
    rv_centre = np.array([-0.1 * semi[0], 0.4 * semi[1], 0.35 * semi[2]])
    rv_semi = np.array([0.7 * semi[0], 0.5 * semi[1], 0.6 * semi[2]]) * rng.uniform(0.92, 1.05)
    lv_cavity = _ellipsoid_radius(heart, lv_centre, lv_semi) < 1
    septum = _ellipsoid_radius(heart, lv_centre, lv_semi + rng.uniform(3.0, 4.0)) < 1
    rv_cavity = (
        (_ellipsoid_radius(heart, rv_centre, rv_semi) < 1)
        & (_ellipsoid_radius(heart, (0, 0, 0), semi - 1.3) < 1)
        & ~septum
    )
    atria = []
    for centre, atrium_semi in (
        ((-semi[0] - 3.0, -0.45 * semi[1], -0.05 * semi[2]), (6.5, 5.5, 7.5)),  # left atrium
        ((-semi[0] - 1.0, 0.15 * semi[1], 0.7 * semi[2]), (7.5, 7.0, 7.0)),  # right atrium
    ):
        atrium_semi = np.asarray(atrium_semi) * rng.uniform(0.9, 1.1, 3)
        atria.append((np.asarray(centre) + rng.normal(0, 0.7, 3), atrium_semi))
    atrium_radius = np.minimum.reduce([_ellipsoid_radius(heart, c, s) for c, s in atria])
    atrial_cavity = np.logical_or.reduce(
        [_ellipsoid_radius(heart, c, s - 1.0) < 1 for c, s in atria]
    )
    heart_tissue = (ventricles_radius < 1) | (atrium_radius < 1)
    epicardial = rng.uniform(2.0, 3.5) * (1 + 0.3 * shape_noise)
    pericardium = (ventricles_radius < 1 + epicardial / semi[2]) | (
        atrium_radius < 1 + epicardial / 7.0
    )

    # Great vessels: ascending aorta and pulmonary trunk leave the base upwards; descending aorta
    # beside the spine.
    aortic_root = heart_point((-semi[0] + 1.0, 0.05 * semi[1], 0.1 * semi[2]))
    aortic_radius = rng.uniform(4.5, 5.5)
    ascending = _path(
        [aortic_root, aortic_root + (2.0, 1.0, 8.0), aortic_root + (3.0, 0.0, 40.0)],
        [aortic_radius + 1.0, aortic_radius, aortic_radius],
        1.0,
    )
    pulmonary_root = heart_point((-semi[0] + 2.0, 0.75 * semi[1], -0.25 * semi[2]))
    pulmonary = _path(
        [pulmonary_root, pulmonary_root + (-4.0, -3.0, 8.0), pulmonary_root + (-8.0, -8.0, 40.0)],
        [4.5, 4.5, 4.0],
        1.0,
    )
    descending_centre = np.array([rng.uniform(-12, -10), rng.uniform(-17, -15)])
    descending = (
        np.array([[descending_centre[0], descending_centre[1], z] for z in (-40.0, 0.0, 40.0)]),
        np.full(3, rng.uniform(4.0, 5.0)),
    )
    mediastinal_fat = rng.uniform(2.0, 4.0)
    vessel_distance = _tube_distance(
        placement, [ascending, pulmonary, descending], mediastinal_fat + 1.0
    )

    # Spine: vertebral body (cortex around marrow) with the spinal canal behind it.
    spine_centre = np.array([0.0, body_centre_ap - body_semi[1] + rng.uniform(15.0, 17.0)])
    spine_radius = rng.uniform(5.5, 6.5)
    spine_distance = np.sqrt(u**2 + (v - spine_centre[1]) ** 2) - spine_radius
    canal_distance = np.sqrt(u**2 + (v - spine_centre[1] + spine_radius + 3.0) ** 2) - 2.5

    midline = (np.abs(u) < 3) & (v > spine_centre[1])
    around_organs = (vessel_distance < mediastinal_fat) | (spine_distance < mediastinal_fat)
    tissue[cavity & (pericardium | midline | around_organs)] = _CTA["fat"]

    # Ribs: bone tubes around the chest wall, sloping down anteriorly; sternum in front.
    rib_paths = []
    rib_radius = rng.uniform(1.8, 2.3)
    rib_spacing = rng.uniform(9.0, 11.0)
    for rib_si in np.arange(
        rng.uniform(-half[2] - 5, -half[2] - 5 + rib_spacing), half[2] + 15, rib_spacing
    ):
        for side in (-1.0, 1.0):
            angle = np.linspace(-0.45 * np.pi, 0.42 * np.pi, 60)
            inset = 1 - (0.5 * (pectoral + wall)) / body_semi[1]
            lr = side * body_semi[0] * inset * np.cos(angle)
            ap = body_centre_ap + body_semi[1] * inset * np.sin(angle)
            si = rib_si - 4.0 * (np.sin(angle) + 1)
            rib_paths.append((np.stack([lr, ap, si], axis=1), np.full(len(angle), rib_radius)))
    rib_distance = _tube_distance(placement, rib_paths, 0.0)
    bone = (rib_distance < 0) | (spine_distance < 0)
    sternum = (np.abs(u) < 4) & (body_depth > subcutaneous) & (body_depth < wall)
    marrow = (rib_distance < -0.8) | (spine_distance < -1.0) | (sternum & (np.abs(u) < 3))
    tissue[bone | sternum] = _CTA["bone_cortex"]
    tissue[marrow] = _CTA["marrow"]
    tissue[canal_distance < 0] = _CTA["spinal_canal"]

    # Coronary arteries on the ventricular surface, from the aortic root.
    coronary_paths = _coronary_paths(
        rng, semi, lv_centre, rv_centre, heart_point, aortic_root, aortic_radius
    )
    coronary_distance = _tube_distance(placement, coronary_paths, 2.0)
    tissue[coronary_distance < 1.5] = _CTA["fat"]

    tissue[heart_tissue] = _CTA["myocardium"]
    blood = lv_cavity | rv_cavity | atrial_cavity | (vessel_distance < 0)
    tissue[blood] = _CTA["blood"]
    coronary = coronary_distance < 0
    tissue[coronary] = _CTA["blood"]

    # Intensities: tissue means, texture (lung strongest), partial volume, noise, field of view.
    hu_ranges = np.asarray(list(_CTA_HU.values()))
    tissue_means = rng.uniform(hu_ranges[:, 0], hu_ranges[:, 1]).astype(np.float32)
    texture_hu = np.full(len(tissue_means), 12.0, dtype=np.float32)
    texture_hu[[_CTA["air"], _CTA["lung"]]] = (0.0, 40.0)
    image = tissue_means[tissue] + texture_hu[tissue] * detail_noise
    image = ndimage.gaussian_filter(image, _PARTIAL_VOLUME_SIGMA)
    image += rng.uniform(20.0, 40.0) * rng.standard_normal(spec.shape, dtype=np.float32)
    x, y = np.ix_(*placement.axes()[:2])
    field_of_view = (x**2 + y**2) < (0.49 * min(spec.shape[:2]) * placement.voxel_mm) ** 2
    image = np.where(field_of_view[..., None], image, np.float32(-2048.0))
    label = (coronary & field_of_view[..., None]).astype(np.uint8)
    return image, label


def _coronary_paths(
    rng: np.random.Generator,
    semi: np.ndarray,
    lv_centre: np.ndarray,
    rv_centre: np.ndarray,
    heart_point: Callable[[np.ndarray], np.ndarray],
    aortic_root: np.ndarray,
    aortic_radius: float,
) -> list[_Tube]:
    """Centre lines and radii (anatomical mm) of the coronary tree on the ventricles' surface.

    Surface positions use ellipsoid angles in the heart frame: ``theta`` from the base (0) to
    the apex (pi) and ``phi`` around the long axis (0 anterior).
    """

    def surface(theta: np.ndarray, phi: np.ndarray, radii: np.ndarray) -> _Tube:
        """Centre-line points of vessels with ``radii`` lying on the ventricles' surface."""
        local = np.stack(
            [
                -semi[0] * np.cos(theta),
                semi[1] * np.sin(theta) * np.cos(phi),
                semi[2] * np.sin(theta) * np.sin(phi),
            ],
            axis=1,
        )
        normal = local / semi**2
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        return heart_point(local + (radii + 0.3)[:, None] * normal), radii

    def along_surface(
        theta: tuple[float, float], phi: tuple[float, float], radius: tuple[float, float]
    ) -> _Tube:
        """A vessel between two surface positions, radius tapering linearly, with a small wiggle."""
        n = 200
        wiggle = 0.05 * np.sin(
            np.linspace(0, rng.uniform(2, 4) * np.pi, n) + rng.uniform(0, 2 * np.pi)
        )
        return surface(
            np.linspace(*theta, n), np.linspace(*phi, n) + wiggle, np.linspace(*radius, n)
        )

    # Interventricular grooves: where the septum (mid-plane between the cavities) meets the surface.
    normal = (rv_centre - lv_centre)[1:]
    normal /= np.linalg.norm(normal)
    midpoint = 0.5 * (rv_centre + lv_centre)[1:]
    amplitude = math.hypot(normal[0] * semi[1], normal[1] * semi[2])
    direction = math.atan2(normal[1] * semi[2], normal[0] * semi[1])
    spread = math.acos(np.clip(normal @ midpoint / amplitude, -1, 1))
    anterior_groove, posterior_groove = direction - spread, direction + spread

    size = rng.uniform(0.9, 1.05)
    thinnest = 0.75
    av_groove = rng.uniform(0.7, 0.85)
    apex = rng.uniform(2.6, 2.9)
    paths = []

    # Left main to its bifurcation, then LAD down the anterior groove, circumflex around the left.
    bifurcation_phi = anterior_groove - rng.uniform(0.25, 0.4)
    left_main_radius = min(1.9, 1.85 * size)
    bifurcation, _ = surface(
        np.array([av_groove]), np.array([bifurcation_phi]), np.array([left_main_radius])
    )
    paths.append(_ostium_path(aortic_root, aortic_radius, bifurcation[0], left_main_radius))
    lad = along_surface(
        (av_groove, apex), (bifurcation_phi, anterior_groove), (1.6 * size, thinnest)
    )
    circumflex_end = bifurcation_phi - rng.uniform(1.8, 2.4)
    circumflex = along_surface(
        (av_groove, av_groove + 0.15), (bifurcation_phi, circumflex_end), (1.4 * size, thinnest)
    )
    paths += [lad, circumflex]
    # Diagonals off the LAD.
    for fraction in rng.uniform(0.2, 0.7, rng.integers(1, 4)):
        theta = av_groove + fraction * (apex - av_groove)
        phi = bifurcation_phi + fraction * (anterior_groove - bifurcation_phi)
        paths.append(
            along_surface(
                (theta, theta + rng.uniform(0.5, 0.8)),
                (phi, phi - rng.uniform(0.6, 1.0)),
                (1.1, thinnest),
            )
        )
    # Obtuse marginals off the circumflex.
    for fraction in rng.uniform(0.3, 0.8, rng.integers(1, 3)):
        phi = bifurcation_phi + fraction * (circumflex_end - bifurcation_phi)
        paths.append(
            along_surface(
                (av_groove + 0.1, av_groove + rng.uniform(0.9, 1.3)),
                (phi, phi - 0.2),
                (1.1, thinnest),
            )
        )

    # Right coronary artery around the right atrioventricular groove, down the posterior groove.
    rca_start_phi = anterior_groove + rng.uniform(0.5, 0.8)
    rca_radius = min(1.85, 1.75 * size)
    rca_start, _ = surface(np.array([av_groove]), np.array([rca_start_phi]), np.array([rca_radius]))
    paths.append(_ostium_path(aortic_root, aortic_radius, rca_start[0], rca_radius))
    paths.append(
        along_surface((av_groove, av_groove), (rca_start_phi, posterior_groove), (rca_radius, 1.2))
    )
    paths.append(
        along_surface(
            (av_groove, rng.uniform(2.0, 2.4)),
            (posterior_groove, posterior_groove),
            (1.2, thinnest),
        )
    )
    return paths


def _ostium_path(
    aortic_root: np.ndarray, aortic_radius: float, target: np.ndarray, radius: float
) -> _Tube:
    """Straight coronary segment from inside the aortic root wall to ``target``."""
    direction = target - aortic_root
    start = aortic_root + direction / np.linalg.norm(direction) * (aortic_radius + 0.5)
    return _path([start, 0.5 * (start + target), target], [radius, radius, radius], 0.4)


_GENERATORS: dict[
    str, Callable[[np.random.Generator, PhantomSpec], tuple[np.ndarray, np.ndarray]]
] = {
    "brain": _brain,
    "breast": _breast,
    "cta": _cta,
}
