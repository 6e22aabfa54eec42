"""Drawing helpers shared by the phantom generators.

A subject's anatomy is laid out in anatomical millimetres for its task's design field of view;
:class:`Placement` maps that frame onto the voxel grid with the subject's size, rotation and
shift. The helpers draw in that frame: ellipsoids and star-shaped surfaces, tapered tubes along
smooth paths, smooth random fields and plane waves (shape, texture, folds, bias fields), and
render tissue maps to MRI images (partial volume blur, bias field, Rician noise).

Every helper that takes a random generator draws from it in a fixed order: the generators'
output, bit for bit, depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

#: Voxel coordinates of a grid along its three axes (anatomical mm or world mm).
Coordinates = tuple[np.ndarray, np.ndarray, np.ndarray]

#: Gaussian blur (voxels) applied to the noise-free image: partial volume.
PARTIAL_VOLUME_SIGMA = 0.6

#: A tube: centre-line points ``(n, 3)`` and radii ``(n,)``, anatomical mm.
Tube = tuple[np.ndarray, np.ndarray]


def tissue_codes(table: dict) -> dict[str, int]:
    """Tissue code of each tissue name: its position in ``table``."""
    return {name: code for code, name in enumerate(table)}


def design_field_of_view(shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """Field of view (mm per axis) of a task's default grid, the frame its anatomy is laid out in.

    The array is read-only: task modules keep it as a constant.
    """
    field_of_view = np.asarray(shape) * spacing
    field_of_view.flags.writeable = False
    return field_of_view


# ----------------------------------------------------------------------------------------------
# Placement of a subject on the voxel grid


@dataclass(frozen=True)
class Placement:
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


def place_subject(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: float,
    design_fov: np.ndarray,
    size_range: tuple[float, float],
    max_rotation_deg: float,
    max_shift_mm: float,
) -> Placement:
    """Random size, rotation and shift of a subject in the field of view of a grid.

    Args:
        rng: Random generator; draws the size, then three angles, then three shifts.
        shape: Voxels per axis of the grid.
        spacing: Isotropic voxel size (mm) of the grid.
        design_fov: Field of view (mm per axis) the task's anatomy is laid out for; the anatomy
            is scaled isotropically to fit the grid's field of view.
        size_range: Range of the subject's size relative to the design.
        max_rotation_deg: Largest rotation about each axis.
        max_shift_mm: Largest shift along each axis, anatomical mm.
    """
    fov_scale = float(np.min(np.asarray(shape) * spacing / design_fov))
    size = rng.uniform(*size_range)
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return Placement(shape, spacing, fov_scale * size, rotation_matrix(angles), shift)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, y and z, applied in that order."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


# ----------------------------------------------------------------------------------------------
# Random fields


class SmoothNoise:
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

    def on_grid(self, placement: Placement) -> np.ndarray:
        """The field at the voxel centres (unrotated frame), float32."""
        w0, w1, w2 = (self._weights(k, axis) for k, axis in enumerate(placement.axes()))
        field = np.tensordot(w0, self.values, axes=(1, 0))  # (n0, c1, c2)
        field = np.tensordot(field, w1, axes=(1, 1))  # (n0, c2, n1)
        field = np.tensordot(field, w2, axes=(1, 1))  # (n0, n1, n2)
        return field.astype(np.float32)


class RandomWaves:
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


# ----------------------------------------------------------------------------------------------
# Shapes


def ellipsoid_radius(
    coordinates: Sequence[np.ndarray],
    centre: Sequence[float],
    semi_axes: Sequence[float | np.ndarray],
) -> np.ndarray:
    """Normalised ellipsoid radius: below 1 inside, 1 on the surface."""
    return np.sqrt(sum(((c - m) / s) ** 2 for c, m, s in zip(coordinates, centre, semi_axes)))


def ray_depth(
    coordinates: Sequence[np.ndarray], centre: Sequence[float], radius: np.ndarray
) -> np.ndarray:
    """Distance (mm) from a point to the surface ``radius == 1`` along the ray from ``centre``.

    Positive inside, negative outside; ``radius`` is a normalised star-shaped radius.
    """
    distance = np.sqrt(sum((c - m) ** 2 for c, m in zip(coordinates, centre)))
    return distance * (1 - radius) / np.maximum(radius, 1e-6)


def distance_inside(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """Distance (anatomical mm) from each voxel of ``mask`` to the nearest voxel outside it."""
    return ndimage.distance_transform_edt(mask, sampling=placement.voxel_mm).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Tubes along paths


def smooth_path(
    control_points: Sequence[Sequence[float]], control_radii: Sequence[float], step_mm: float
) -> Tube:
    """A smooth curve through control points, sampled every ``step_mm``, with interpolated radii.

    Returns:
        ``(points, radii)``: arrays of shape ``(n, 3)`` and ``(n,)``.
    """
    control = np.asarray(control_points, dtype=float)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    samples = np.linspace(0.0, chord[-1], max(2, int(math.ceil(chord[-1] / step_mm)) + 1))
    points = CubicSpline(chord, control, bc_type="natural")(samples)
    return points, np.interp(samples, chord, np.asarray(control_radii, dtype=float))


def jitter_path(rng: np.random.Generator, path: Tube, sd_mm: float) -> Tube:
    """Shift a sampled path by a smooth random offset (one random offset per end, interpolated)."""
    points, radii = path
    ends = rng.normal(0, sd_mm, (2, 3))
    weights = np.linspace(0, 1, len(points))[:, None]
    return points + (1 - weights) * ends[0] + weights * ends[1], radii


def tube_distance(placement: Placement, paths: Sequence[Tube], reach_mm: float) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# MRI rendering


def tissue_means(
    rng: np.random.Generator, relative: dict[str, float], scale: float, jitter: float
) -> np.ndarray:
    """Per-subject mean intensity of each tissue: relative means times ``scale``, jittered."""
    means = np.asarray(list(relative.values())) * scale
    return means * (1 + jitter * rng.standard_normal(len(means)))


def render_mri(
    rng: np.random.Generator,
    tissue: np.ndarray,
    tissue_means: np.ndarray,
    texture: np.ndarray,
    bias: np.ndarray,
    noise_sigma: float,
) -> np.ndarray:
    """T1 image: tissue means with texture, partial volume blur, bias field, Rician noise."""
    image = tissue_means[tissue].astype(np.float32) * (1 + texture)
    image = ndimage.gaussian_filter(image, PARTIAL_VOLUME_SIGMA) * bias
    real = image + noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary)
