"""Cardiac CTA phantom: CT angiography in HU, 0.45 mm by default.

A thorax and heart scaled to about 40 % of adult size with coronary arteries of real size
(1.5-4 mm diameter) running in the epicardial fat from the aortic root (left main into LAD and
circumflex with diagonal and marginal branches, right coronary artery with a posterior
descending branch). Coronary lumen and blood pool share one intensity distribution. Voxels
outside a circular field of view are -2048 HU. Label (:mod:`mtseg.tasks`): 1 coronary arteries.

The generator runs in named steps (random fields, thorax, heart frame and chambers, great
vessels, spine, ribs, coronary tree, then painting and intensities); each step draws from the
random generator in the order the steps run, which fixes the output bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mtseg.data.phantoms.drawing import (
    Coordinates,
    PARTIAL_VOLUME_SIGMA,
    Placement,
    SmoothNoise,
    Tube,
    design_field_of_view,
    ellipsoid_radius,
    place_subject,
    smooth_path,
    tissue_codes,
    tube_distance,
)

#: Default grid: voxels per axis (RAS) and isotropic voxel size (mm).
DEFAULT_SHAPE = (128, 128, 96)
DEFAULT_SPACING = 0.45
#: Field of view (mm) the anatomy is laid out for: the default grid's.
DESIGN_FOV = design_field_of_view(DEFAULT_SHAPE, DEFAULT_SPACING)

#: Range of the mean intensity (HU) of each CTA tissue; the order gives tissue codes.
HU_RANGES = {
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
#: Tissue code of each CTA tissue.
TISSUE = tissue_codes(HU_RANGES)

#: Value (HU) of the voxels outside the scanner's circular field of view.
OUTSIDE_FIELD_OF_VIEW_HU = -2048.0

#: Radius (mm) the coronary branches taper to.
_THINNEST_CORONARY_RADIUS = 0.75



def cta_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cardiac CTA phantom in HU and its coronary artery label."""
    placement = place_subject(rng, shape, spacing, DESIGN_FOV, (0.95, 1.03), 3.0, 1.5)
    half = 0.5 * DESIGN_FOV
    uvw = placement.anatomical_coordinates()
    detail_noise = SmoothNoise(rng, half, 2.5).on_grid(placement)
    shape_noise = SmoothNoise(rng, half, 10.0).on_grid(placement)

    thorax = _lay_out_thorax(rng, uvw, shape_noise)
    tissue = np.full(shape, TISSUE["air"], dtype=np.uint8)
    _paint_thorax(tissue, uvw, thorax)

    frame = _draw_heart_frame(rng, uvw)
    chambers = _lay_out_chambers(rng, frame, shape_noise)
    vessels = _lay_out_great_vessels(rng, placement, frame)
    spine = _lay_out_spine(rng, uvw, thorax)
    _paint_mediastinal_fat(tissue, uvw, thorax, chambers, vessels, spine)
    _paint_bones(rng, tissue, placement, uvw, half, thorax, spine)

    coronary_paths = _coronary_paths(rng, frame, chambers, vessels)
    coronary_distance = tube_distance(placement, coronary_paths, 2.0)
    coronary = _paint_heart_and_blood(tissue, chambers, vessels, coronary_distance)
    return _render_image(rng, tissue, coronary, placement, detail_noise)


# ----------------------------------------------------------------------------------------------
# Thorax


@dataclass(frozen=True)
class _Thorax:
    """Elliptic body cylinder and the depths (mm below the skin) where its layers end.

    Args:
        semi: Left-right and antero-posterior semi-axes (mm).
        centre_ap: Antero-posterior position (mm) of the body's centre.
        depth: Depth (mm) of every voxel below the skin, negative outside.
        subcutaneous_end: Depth where the subcutaneous fat ends.
        pectoral_end: Depth where the pectoral muscle ends.
        wall_end: Depth where the chest wall ends and the thoracic cavity begins.
    """

    semi: np.ndarray
    centre_ap: float
    depth: np.ndarray
    subcutaneous_end: float
    pectoral_end: float
    wall_end: float

    @property
    def cavity(self) -> np.ndarray:
        """The thoracic cavity inside the chest wall."""
        return self.depth >= self.wall_end


def _lay_out_thorax(
    rng: np.random.Generator, uvw: Coordinates, shape_noise: np.ndarray
) -> _Thorax:
    u, v, _ = uvw
    semi = np.array([rng.uniform(40, 44), rng.uniform(29, 31)])
    centre_ap = rng.uniform(-9.0, -7.0)
    body_radius = np.sqrt((u / semi[0]) ** 2 + ((v - centre_ap) / semi[1]) ** 2)
    depth = (1 - body_radius) * semi[1] * (1 + 0.05 * shape_noise)
    subcutaneous_end = rng.uniform(1.5, 3.0)
    pectoral_end = subcutaneous_end + rng.uniform(1.5, 3.0)
    wall_end = pectoral_end + rng.uniform(3.0, 4.5)
    return _Thorax(semi, centre_ap, depth, subcutaneous_end, pectoral_end, wall_end)


def _paint_thorax(tissue: np.ndarray, uvw: Coordinates, thorax: _Thorax) -> None:
    """Subcutaneous fat, anterior pectoral muscle, chest wall, lungs."""
    u, v, _ = uvw
    depth = thorax.depth
    pectoral_muscle = (
        (depth > thorax.subcutaneous_end)
        & (depth < thorax.pectoral_end)
        & (v > 6)
        & (np.abs(u) > 4)
    )
    tissue[depth > 0] = TISSUE["fat"]
    tissue[pectoral_muscle] = TISSUE["muscle"]
    tissue[(depth >= thorax.pectoral_end) & (depth < thorax.wall_end)] = TISSUE["muscle"]
    tissue[thorax.cavity] = TISSUE["lung"]


# ----------------------------------------------------------------------------------------------
# Heart


@dataclass(frozen=True)
class _HeartFrame:
    """The heart's frame: long axis from the base (right, posterior, up) to the apex.

    Args:
        centre: Centre (anatomical mm) of the ventricles.
        rotation: Columns: the heart frame's axes (long, anterior, side) in anatomical coordinates.
        local: Heart-frame coordinates (along, front, across) of every voxel, mm.
        semi: Semi-axes (mm) of the ventricles' ellipsoid in the heart frame.
    """

    centre: np.ndarray
    rotation: np.ndarray
    local: Coordinates
    semi: np.ndarray

    def to_anatomical(self, local: np.ndarray) -> np.ndarray:
        """Anatomical coordinates of heart-frame points ``(..., 3)``."""
        return self.centre + np.asarray(local) @ self.rotation.T


def _draw_heart_frame(rng: np.random.Generator, uvw: Coordinates) -> _HeartFrame:
    """Heart frame: long axis from the base (right, posterior, up) to the apex (left, front, down).

    Draws the apex direction, the centre, then the semi-axes.
    """
    u, v, w = uvw
    apex_direction = np.array([-0.62, 0.42, -0.62]) + rng.normal(0, 0.06, 3)
    long_axis = apex_direction / np.linalg.norm(apex_direction)
    anterior_axis = np.array([0.0, 1.0, 0.0]) - long_axis[1] * long_axis
    anterior_axis /= np.linalg.norm(anterior_axis)
    side_axis = np.cross(long_axis, anterior_axis)
    rotation = np.stack([long_axis, anterior_axis, side_axis], axis=1)
    centre = np.array([-6.0, 4.0, -3.0]) + rng.normal(0, 1.0, 3)
    relative = (u - centre[0], v - centre[1], w - centre[2])
    along, front, across = (sum(rotation[j, k] * relative[j] for j in range(3)) for k in range(3))
    semi = np.array([rng.uniform(17, 20), rng.uniform(13, 15), rng.uniform(12, 14)])
    return _HeartFrame(centre, rotation, (along, front, across), semi)


@dataclass(frozen=True)
class _Chambers:
    """Ventricles and atria: centres of the ventricular cavities (heart frame), masks.

    Args:
        lv_centre: Centre of the left ventricular cavity, heart frame (mm).
        rv_centre: Centre of the right ventricular cavity, heart frame (mm).
        blood_pool: Ventricular and atrial cavities.
        myocardium: The heart's walls and cavities (cavities are painted over).
        pericardium: The heart with its epicardial fat.
    """

    lv_centre: np.ndarray
    rv_centre: np.ndarray
    blood_pool: np.ndarray
    myocardium: np.ndarray
    pericardium: np.ndarray


def _lay_out_chambers(
    rng: np.random.Generator, frame: _HeartFrame, shape_noise: np.ndarray
) -> _Chambers:
    """Ventricles (left cavity, septum, right cavity), atria and epicardial fat."""
    heart, semi = frame.local, frame.semi
    ventricles_radius = ellipsoid_radius(heart, (0, 0, 0), semi) * (1 + 0.02 * shape_noise)
    lv_centre = np.array([-0.05 * semi[0], -0.2 * semi[1], -0.15 * semi[2]])
    lv_semi = np.array([0.8 * semi[0], 0.45 * semi[1], 0.5 * semi[2]]) * rng.uniform(0.92, 1.05)
    rv_centre = np.array([-0.1 * semi[0], 0.4 * semi[1], 0.35 * semi[2]])
    rv_semi = np.array([0.7 * semi[0], 0.5 * semi[1], 0.6 * semi[2]]) * rng.uniform(0.92, 1.05)
    lv_cavity = ellipsoid_radius(heart, lv_centre, lv_semi) < 1
    septum = ellipsoid_radius(heart, lv_centre, lv_semi + rng.uniform(3.0, 4.0)) < 1
    rv_cavity = (
        (ellipsoid_radius(heart, rv_centre, rv_semi) < 1)
        & (ellipsoid_radius(heart, (0, 0, 0), semi - 1.3) < 1)
        & ~septum
    )
    atrium_radius, atrial_cavity = _lay_out_atria(rng, frame)
    myocardium = (ventricles_radius < 1) | (atrium_radius < 1)
    epicardial = rng.uniform(2.0, 3.5) * (1 + 0.3 * shape_noise)
    pericardium = (ventricles_radius < 1 + epicardial / semi[2]) | (
        atrium_radius < 1 + epicardial / 7.0
    )
    blood_pool = lv_cavity | rv_cavity | atrial_cavity
    return _Chambers(lv_centre, rv_centre, blood_pool, myocardium, pericardium)


def _lay_out_atria(
    rng: np.random.Generator, frame: _HeartFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Left and right atrium: their normalised radius (the nearer one's) and their cavities."""
    heart, semi = frame.local, frame.semi
    atria = []
    for centre, atrium_semi in (
        ((-semi[0] - 3.0, -0.45 * semi[1], -0.05 * semi[2]), (6.5, 5.5, 7.5)),  # left atrium
        ((-semi[0] - 1.0, 0.15 * semi[1], 0.7 * semi[2]), (7.5, 7.0, 7.0)),  # right atrium
    ):
        atrium_semi = np.asarray(atrium_semi) * rng.uniform(0.9, 1.1, 3)
        atria.append((np.asarray(centre) + rng.normal(0, 0.7, 3), atrium_semi))
    atrium_radius = np.minimum.reduce([ellipsoid_radius(heart, c, s) for c, s in atria])
    atrial_cavity = np.logical_or.reduce(
        [ellipsoid_radius(heart, c, s - 1.0) < 1 for c, s in atria]
    )
    return atrium_radius, atrial_cavity


# ----------------------------------------------------------------------------------------------
# Great vessels, spine, ribs


@dataclass(frozen=True)
class _GreatVessels:
    """Aortic root (anatomical mm) and radius, distance to the vessels' lumen, mediastinal fat."""

    aortic_root: np.ndarray
    aortic_radius: float
    distance: np.ndarray
    mediastinal_fat: float


def _lay_out_great_vessels(
    rng: np.random.Generator, placement: Placement, frame: _HeartFrame
) -> _GreatVessels:
    """Ascending aorta and pulmonary trunk leave the base upwards; descending aorta by the spine."""
    semi = frame.semi
    aortic_root = frame.to_anatomical((-semi[0] + 1.0, 0.05 * semi[1], 0.1 * semi[2]))
    aortic_radius = rng.uniform(4.5, 5.5)
    ascending = smooth_path(
        [aortic_root, aortic_root + (2.0, 1.0, 8.0), aortic_root + (3.0, 0.0, 40.0)],
        [aortic_radius + 1.0, aortic_radius, aortic_radius],
        1.0,
    )
    pulmonary_root = frame.to_anatomical((-semi[0] + 2.0, 0.75 * semi[1], -0.25 * semi[2]))
    pulmonary = smooth_path(
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
    distance = tube_distance(placement, [ascending, pulmonary, descending], mediastinal_fat + 1.0)
    return _GreatVessels(aortic_root, aortic_radius, distance, mediastinal_fat)


@dataclass(frozen=True)
class _Spine:
    """Vertebral body: antero-posterior centre (mm), signed distances to it and the spinal canal."""

    centre_ap: float
    distance: np.ndarray
    canal_distance: np.ndarray


def _lay_out_spine(rng: np.random.Generator, uvw: Coordinates, thorax: _Thorax) -> _Spine:
    """Vertebral body (cortex around marrow) with the spinal canal behind it."""
    u, v, _ = uvw
    centre_ap = thorax.centre_ap - thorax.semi[1] + rng.uniform(15.0, 17.0)
    radius = rng.uniform(5.5, 6.5)
    distance = np.sqrt(u**2 + (v - centre_ap) ** 2) - radius
    canal_distance = np.sqrt(u**2 + (v - centre_ap + radius + 3.0) ** 2) - 2.5
    return _Spine(centre_ap, distance, canal_distance)


def _paint_mediastinal_fat(
    tissue: np.ndarray,
    uvw: Coordinates,
    thorax: _Thorax,
    chambers: _Chambers,
    vessels: _GreatVessels,
    spine: _Spine,
) -> None:
    """Fat in the thoracic cavity around the heart, the great vessels and the spine, and midline."""
    u, v, _ = uvw
    midline = (np.abs(u) < 3) & (v > spine.centre_ap)
    fat = vessels.mediastinal_fat
    around_organs = (vessels.distance < fat) | (spine.distance < fat)
    tissue[thorax.cavity & (chambers.pericardium | midline | around_organs)] = TISSUE["fat"]


def _paint_bones(
    rng: np.random.Generator,
    tissue: np.ndarray,
    placement: Placement,
    uvw: Coordinates,
    half: np.ndarray,
    thorax: _Thorax,
    spine: _Spine,
) -> None:
    """Ribs: bone tubes around the chest wall, sloping down anteriorly; sternum in front; spine."""
    u = uvw[0]
    rib_paths = []
    rib_radius = rng.uniform(1.8, 2.3)
    rib_spacing = rng.uniform(9.0, 11.0)
    semi, centre_ap = thorax.semi, thorax.centre_ap
    for rib_si in np.arange(
        rng.uniform(-half[2] - 5, -half[2] - 5 + rib_spacing), half[2] + 15, rib_spacing
    ):
        for side in (-1.0, 1.0):
            angle = np.linspace(-0.45 * np.pi, 0.42 * np.pi, 60)
            inset = 1 - (0.5 * (thorax.pectoral_end + thorax.wall_end)) / semi[1]
            lr = side * semi[0] * inset * np.cos(angle)
            ap = centre_ap + semi[1] * inset * np.sin(angle)
            si = rib_si - 4.0 * (np.sin(angle) + 1)
            rib_paths.append((np.stack([lr, ap, si], axis=1), np.full(len(angle), rib_radius)))
    rib_distance = tube_distance(placement, rib_paths, 0.0)
    bone = (rib_distance < 0) | (spine.distance < 0)
    depth = thorax.depth
    sternum = (np.abs(u) < 4) & (depth > thorax.subcutaneous_end) & (depth < thorax.wall_end)
    marrow = (rib_distance < -0.8) | (spine.distance < -1.0) | (sternum & (np.abs(u) < 3))
    tissue[bone | sternum] = TISSUE["bone_cortex"]
    tissue[marrow] = TISSUE["marrow"]
    tissue[spine.canal_distance < 0] = TISSUE["spinal_canal"]


# ----------------------------------------------------------------------------------------------
# Coronary arteries


@dataclass(frozen=True)
class _VentricularSurface:
    """Positions on the ventricles' surface, as ellipsoid angles in the heart frame.

    ``theta`` runs from the base (0) to the apex (pi) and ``phi`` around the long axis
    (0 anterior).

    Args:
        semi: Semi-axes (mm) of the ventricles' ellipsoid in the heart frame.
        to_anatomical: Maps heart-frame points ``(..., 3)`` to anatomical coordinates.
    """

    semi: np.ndarray
    to_anatomical: Callable[[np.ndarray], np.ndarray]

    def vessel_points(self, theta: np.ndarray, phi: np.ndarray, radii: np.ndarray) -> Tube:
        """Centre-line points of vessels with ``radii`` lying on the ventricles' surface."""
        semi = self.semi
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
        return self.to_anatomical(local + (radii + 0.3)[:, None] * normal), radii

    def vessel(
        self,
        rng: np.random.Generator,
        theta: tuple[float, float],
        phi: tuple[float, float],
        radius: tuple[float, float],
    ) -> Tube:
        """A vessel between two surface positions, radius tapering linearly, with a small wiggle."""
        n = 200
        wiggle = 0.05 * np.sin(
            np.linspace(0, rng.uniform(2, 4) * np.pi, n) + rng.uniform(0, 2 * np.pi)
        )
        return self.vessel_points(
            np.linspace(*theta, n), np.linspace(*phi, n) + wiggle, np.linspace(*radius, n)
        )


def _coronary_paths(
    rng: np.random.Generator, frame: _HeartFrame, chambers: _Chambers, vessels: _GreatVessels
) -> list[Tube]:
    """Centre lines and radii (anatomical mm) of the coronary tree on the ventricles' surface."""
    surface = _VentricularSurface(frame.semi, frame.to_anatomical)
    anterior_groove, posterior_groove = _interventricular_grooves(
        frame.semi, chambers.lv_centre, chambers.rv_centre
    )
    size = rng.uniform(0.9, 1.05)
    av_groove = rng.uniform(0.7, 0.85)
    apex = rng.uniform(2.6, 2.9)
    left = _left_coronary_tree(rng, surface, vessels, size, av_groove, apex, anterior_groove)
    right = _right_coronary_tree(
        rng, surface, vessels, size, av_groove, anterior_groove, posterior_groove
    )
    return left + right


def _interventricular_grooves(
    semi: np.ndarray, lv_centre: np.ndarray, rv_centre: np.ndarray
) -> tuple[float, float]:
    """Angles ``phi`` of the anterior and posterior interventricular grooves.

    The grooves lie where the septum (the mid-plane between the ventricular cavities) meets the
    ventricles' surface.
    """
    normal = (rv_centre - lv_centre)[1:]
    normal /= np.linalg.norm(normal)
    midpoint = 0.5 * (rv_centre + lv_centre)[1:]
    amplitude = math.hypot(normal[0] * semi[1], normal[1] * semi[2])
    direction = math.atan2(normal[1] * semi[2], normal[0] * semi[1])
    spread = math.acos(np.clip(normal @ midpoint / amplitude, -1, 1))
    return direction - spread, direction + spread


def _left_coronary_tree(
    rng: np.random.Generator,
    surface: _VentricularSurface,
    vessels: _GreatVessels,
    size: float,
    av_groove: float,
    apex: float,
    anterior_groove: float,
) -> list[Tube]:
    """Left main to its bifurcation, then LAD down the anterior groove, circumflex around the left.

    Diagonal branches leave the LAD, obtuse marginal branches the circumflex.
    """
    thinnest = _THINNEST_CORONARY_RADIUS
    bifurcation_phi = anterior_groove - rng.uniform(0.25, 0.4)
    left_main_radius = min(1.9, 1.85 * size)
    bifurcation, _ = surface.vessel_points(
        np.array([av_groove]), np.array([bifurcation_phi]), np.array([left_main_radius])
    )
    paths = [_ostium_path(vessels, bifurcation[0], left_main_radius)]
    lad = surface.vessel(
        rng, (av_groove, apex), (bifurcation_phi, anterior_groove), (1.6 * size, thinnest)
    )
    circumflex_end = bifurcation_phi - rng.uniform(1.8, 2.4)
    circumflex = surface.vessel(
        rng,
        (av_groove, av_groove + 0.15),
        (bifurcation_phi, circumflex_end),
        (1.4 * size, thinnest),
    )
    paths += [lad, circumflex]
    for fraction in rng.uniform(0.2, 0.7, rng.integers(1, 4)):  # diagonals
        theta = av_groove + fraction * (apex - av_groove)
        phi = bifurcation_phi + fraction * (anterior_groove - bifurcation_phi)
        paths.append(
            surface.vessel(
                rng,
                (theta, theta + rng.uniform(0.5, 0.8)),
                (phi, phi - rng.uniform(0.6, 1.0)),
                (1.1, thinnest),
            )
        )
    for fraction in rng.uniform(0.3, 0.8, rng.integers(1, 3)):  # obtuse marginals
        phi = bifurcation_phi + fraction * (circumflex_end - bifurcation_phi)
        paths.append(
            surface.vessel(
                rng,
                (av_groove + 0.1, av_groove + rng.uniform(0.9, 1.3)),
                (phi, phi - 0.2),
                (1.1, thinnest),
            )
        )
    return paths


def _right_coronary_tree(
    rng: np.random.Generator,
    surface: _VentricularSurface,
    vessels: _GreatVessels,
    size: float,
    av_groove: float,
    anterior_groove: float,
    posterior_groove: float,
) -> list[Tube]:
    """Right coronary artery around the right atrioventricular groove, down the posterior groove."""
    rca_start_phi = anterior_groove + rng.uniform(0.5, 0.8)
    rca_radius = min(1.85, 1.75 * size)
    rca_start, _ = surface.vessel_points(
        np.array([av_groove]), np.array([rca_start_phi]), np.array([rca_radius])
    )
    return [
        _ostium_path(vessels, rca_start[0], rca_radius),
        surface.vessel(
            rng, (av_groove, av_groove), (rca_start_phi, posterior_groove), (rca_radius, 1.2)
        ),
        surface.vessel(  # posterior descending artery
            rng,
            (av_groove, rng.uniform(2.0, 2.4)),
            (posterior_groove, posterior_groove),
            (1.2, _THINNEST_CORONARY_RADIUS),
        ),
    ]


def _ostium_path(vessels: _GreatVessels, target: np.ndarray, radius: float) -> Tube:
    """Straight coronary segment from inside the aortic root wall to ``target``."""
    root, root_radius = vessels.aortic_root, vessels.aortic_radius
    direction = target - root
    start = root + direction / np.linalg.norm(direction) * (root_radius + 0.5)
    return smooth_path([start, 0.5 * (start + target), target], [radius, radius, radius], 0.4)


# ----------------------------------------------------------------------------------------------
# Heart tissues and intensities


def _paint_heart_and_blood(
    tissue: np.ndarray,
    chambers: _Chambers,
    vessels: _GreatVessels,
    coronary_distance: np.ndarray,
) -> np.ndarray:
    """Fat around the coronaries, myocardium, blood pool and coronary lumen; returns the lumen."""
    tissue[coronary_distance < 1.5] = TISSUE["fat"]
    tissue[chambers.myocardium] = TISSUE["myocardium"]
    tissue[chambers.blood_pool | (vessels.distance < 0)] = TISSUE["blood"]
    coronary = coronary_distance < 0
    tissue[coronary] = TISSUE["blood"]
    return coronary


def _render_image(
    rng: np.random.Generator,
    tissue: np.ndarray,
    coronary: np.ndarray,
    placement: Placement,
    detail_noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue means, texture (lung strongest), partial volume, noise, field of view; the label."""
    hu_ranges = np.asarray(list(HU_RANGES.values()))
    tissue_means = rng.uniform(hu_ranges[:, 0], hu_ranges[:, 1]).astype(np.float32)
    texture_hu = np.full(len(tissue_means), 12.0, dtype=np.float32)
    texture_hu[[TISSUE["air"], TISSUE["lung"]]] = (0.0, 40.0)
    image = tissue_means[tissue] + texture_hu[tissue] * detail_noise
    image = ndimage.gaussian_filter(image, PARTIAL_VOLUME_SIGMA)
    image += rng.uniform(20.0, 40.0) * rng.standard_normal(placement.shape, dtype=np.float32)
    x, y = np.ix_(*placement.axes()[:2])
    field_of_view = (x**2 + y**2) < (0.49 * min(placement.shape[:2]) * placement.voxel_mm) ** 2
    image = np.where(field_of_view[..., None], image, np.float32(OUTSIDE_FIELD_OF_VIEW_HU))
    label = (coronary & field_of_view[..., None]).astype(np.uint8)
    return image, label
