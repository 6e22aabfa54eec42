"""Breast phantom: prone T1 breast MRI, 1.3 mm by default.

Two fatty breasts with fibroglandular tissue, lying anterior to a thin pectoral muscle sheet,
intercostal muscle, ribs, sternum, lungs and the heart. Pectoral and intercostal muscle are one
tissue type, so they share their intensity distribution. Label (:mod:`mtseg.tasks`): 1 pectoral
muscle.

The generator runs in named steps (random fields, chest wall, breasts, chest tissues, bones,
fibroglandular tissue and skin, intensities); each step draws from the random generator in the
order the steps run, which fixes the output bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtseg.data.phantoms.drawing import (
    Coordinates,
    Placement,
    RandomWaves,
    SmoothNoise,
    design_field_of_view,
    distance_inside,
    ellipsoid_radius,
    place_subject,
    ray_depth,
    render_mri,
    tissue_codes,
    tissue_means,
    tube_distance,
)

#: Default grid: voxels per axis (RAS) and isotropic voxel size (mm).
DEFAULT_SHAPE = (112, 80, 64)
DEFAULT_SPACING = 1.3
#: Field of view (mm) the anatomy is laid out for: the default grid's.
DESIGN_FOV = design_field_of_view(DEFAULT_SHAPE, DEFAULT_SPACING)

#: Mean T1 intensity of each breast MRI tissue relative to fat; the order gives tissue codes.
RELATIVE_T1 = {
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
#: Tissue code of each breast MRI tissue.
TISSUE = tissue_codes(RELATIVE_T1)



def breast_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """T1 breast MRI phantom (prone, breasts anterior) and its pectoral muscle label."""
    placement = place_subject(rng, shape, spacing, DESIGN_FOV, (0.93, 1.04), 4.0, 3.0)
    half = 0.5 * DESIGN_FOV
    uvw = placement.anatomical_coordinates()
    chest_waves = RandomWaves(rng, 2, (50.0, 100.0), 6)
    pectoral_waves = RandomWaves(rng, 2, (30.0, 70.0), 6)
    detail_noise = SmoothNoise(rng, half, 6.0).on_grid(placement)
    shape_noise = SmoothNoise(rng, half, 20.0).on_grid(placement)

    chest = _draw_chest_wall(rng, chest_waves, pectoral_waves)
    layers = _lay_out_chest_layers(rng, uvw, chest, shape_noise)
    breasts = _lay_out_breasts(rng, placement, uvw, chest, layers, shape_noise)

    tissue = np.full(shape, TISSUE["air"], dtype=np.uint8)
    pectoral = _paint_chest(tissue, uvw, layers, breasts)
    _paint_heart(rng, tissue, uvw, chest, layers)
    _paint_bones(rng, tissue, placement, uvw, half, chest, layers)
    _paint_fibroglandular_tissue(rng, tissue, placement, uvw, half, layers, breasts, detail_noise)
    _paint_skin(rng, tissue, placement, breasts)

    label = (pectoral & (tissue == TISSUE["muscle"])).astype(np.uint8)
    image = _render_image(rng, tissue, placement, half, detail_noise)
    return image, label


# ----------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class _ChestWall:
    """The anterior surface of the pectoral muscle, convex anteriorly, and the muscle's thickness.

    Args:
        front: Antero-posterior position (mm) of the chest wall front at the midline.
        curvature_lr: Radius of curvature (mm) of the chest wall from left to right.
        curvature_is: Radius of curvature (mm) of the chest wall from bottom to top.
        pectoral_thickness: Largest thickness (mm) of the pectoral muscle.
        sternum_half_width: Half width (mm) of the sternum, where the muscle ends medially.
        pectoral_lateral_end: Distance (mm) from the midline where the muscle ends laterally.
        chest_waves: Smooth undulation of the chest wall.
        pectoral_waves: Smooth variation of the muscle's thickness.
    """

    front: float
    curvature_lr: float
    curvature_is: float
    pectoral_thickness: float
    sternum_half_width: float
    pectoral_lateral_end: float
    chest_waves: RandomWaves
    pectoral_waves: RandomWaves

    def surface(self, lr: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Antero-posterior position of the chest wall front at left-right ``lr``, height ``si``."""
        return (
            self.front
            - lr**2 / (2 * self.curvature_lr)
            - si**2 / (2 * self.curvature_is)
            + 2.5 * self.chest_waves(lr, si)
        )

    def pectoral_depth(self, lr: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Pectoral muscle thickness, tapering to zero at the sternum and towards the axilla."""
        medial = np.clip((np.abs(lr) - self.sternum_half_width) / 6.0, 0, 1)
        lateral = np.clip((self.pectoral_lateral_end - np.abs(lr)) / 12.0, 0, 1)
        return self.pectoral_thickness * (1 + 0.15 * self.pectoral_waves(lr, si)) * medial * lateral


def _draw_chest_wall(
    rng: np.random.Generator, chest_waves: RandomWaves, pectoral_waves: RandomWaves
) -> _ChestWall:
    front = rng.uniform(-6.0, 0.0)
    curvature_lr, curvature_is = rng.uniform(110.0, 170.0), rng.uniform(150.0, 300.0)
    pectoral_thickness = rng.uniform(6.5, 11.0)
    sternum_half_width = rng.uniform(9.0, 12.0)
    pectoral_lateral_end = rng.uniform(58.0, 68.0)
    return _ChestWall(
        front,
        curvature_lr,
        curvature_is,
        pectoral_thickness,
        sternum_half_width,
        pectoral_lateral_end,
        chest_waves,
        pectoral_waves,
    )


@dataclass(frozen=True)
class _ChestLayers:
    """Antero-posterior limits (mm) of the chest layers at every voxel.

    Args:
        surface: Front of the pectoral muscle (the chest wall's front).
        pectoral_back: Back of the pectoral muscle.
        fat_plane: Thickness of the fat plane between pectoral and intercostal muscle.
        chest_wall_back: Back of the intercostal muscle, front of the lungs.
        subcutaneous_fat: Thickness of the fat in front of the chest wall.
    """

    surface: np.ndarray
    pectoral_back: np.ndarray
    fat_plane: np.ndarray
    chest_wall_back: np.ndarray
    subcutaneous_fat: float


def _lay_out_chest_layers(
    rng: np.random.Generator, uvw: Coordinates, chest: _ChestWall, shape_noise: np.ndarray
) -> _ChestLayers:
    u, _, w = uvw
    surface = chest.surface(u, w)
    pectoral_back = surface - chest.pectoral_depth(u, w)
    fat_plane = np.maximum(0.0, 1.0 + 0.8 * shape_noise)
    chest_wall_back = pectoral_back - fat_plane - rng.uniform(10.0, 15.0)
    subcutaneous_fat = rng.uniform(3.0, 7.0)
    return _ChestLayers(surface, pectoral_back, fat_plane, chest_wall_back, subcutaneous_fat)


@dataclass(frozen=True)
class _Breasts:
    """Both breasts: normalised radius, depth (mm) below their surface, masks of breast and body."""

    radius: np.ndarray
    depth: np.ndarray
    retromammary_fat: float
    inside: np.ndarray
    body: np.ndarray


def _lay_out_breasts(
    rng: np.random.Generator,
    placement: Placement,
    uvw: Coordinates,
    chest: _ChestWall,
    layers: _ChestLayers,
    shape_noise: np.ndarray,
) -> _Breasts:
    """Breasts: ellipsoids centred on the skin line, pendant anteriorly."""
    v = uvw[1]
    breast_radius = np.full(placement.shape, np.inf, dtype=np.float32)
    breast_depth = np.full(placement.shape, -np.inf, dtype=np.float32)
    breast_lr, breast_si = rng.uniform(34.0, 40.0), rng.uniform(-6.0, 6.0)
    breast_semi = np.array([rng.uniform(24, 30), rng.uniform(24, 38), rng.uniform(24, 32)])
    for side in (-1.0, 1.0):
        centre_lr = side * breast_lr
        centre = np.array(
            [centre_lr, chest.surface(centre_lr, breast_si) + layers.subcutaneous_fat, breast_si]
        )
        centre += rng.normal(0, 1.5, 3)
        semi = breast_semi * rng.uniform(0.95, 1.05, 3)
        radius = ellipsoid_radius(uvw, centre, semi) * (1 + 0.05 * shape_noise)
        breast_depth = np.maximum(breast_depth, ray_depth(uvw, centre, radius))
        breast_radius = np.minimum(breast_radius, radius)
    retromammary_fat = rng.uniform(1.5, 3.0)
    breast = (breast_radius < 1) & (v > layers.surface + retromammary_fat)
    body = (v < layers.surface + layers.subcutaneous_fat) | breast
    return _Breasts(breast_radius, breast_depth, retromammary_fat, breast, body)


# ----------------------------------------------------------------------------------------------
# Tissues, painted in order: later steps overwrite earlier ones


def _paint_chest(
    tissue: np.ndarray, uvw: Coordinates, layers: _ChestLayers, breasts: _Breasts
) -> np.ndarray:
    """Fat of body and breasts, pectoral and intercostal muscle, lungs; returns the pectoral."""
    v = uvw[1]
    tissue[breasts.body] = TISSUE["fat"]
    pectoral = (v < layers.surface) & (v >= layers.pectoral_back)
    tissue[pectoral] = TISSUE["muscle"]
    intercostal = (v < layers.pectoral_back - layers.fat_plane) & (v >= layers.chest_wall_back)
    tissue[intercostal] = TISSUE["muscle"]
    tissue[v < layers.chest_wall_back] = TISSUE["lung"]
    return pectoral


def _paint_heart(
    rng: np.random.Generator,
    tissue: np.ndarray,
    uvw: Coordinates,
    chest: _ChestWall,
    layers: _ChestLayers,
) -> None:
    """Mediastinum: the heart in pericardial fat behind the sternum."""
    v = uvw[1]
    heart_centre = (rng.uniform(-15, -5), chest.front - rng.uniform(40, 48), rng.uniform(-10, 0))
    heart_radius = ellipsoid_radius(uvw, heart_centre, (rng.uniform(28, 34), 24.0, 30.0))
    mediastinum = v < layers.chest_wall_back
    tissue[mediastinum & (heart_radius < 1.15)] = TISSUE["fat"]
    tissue[mediastinum & (heart_radius < 1)] = TISSUE["heart"]


def _paint_bones(
    rng: np.random.Generator,
    tissue: np.ndarray,
    placement: Placement,
    uvw: Coordinates,
    half: np.ndarray,
    chest: _ChestWall,
    layers: _ChestLayers,
) -> None:
    """Sternum and ribs: dark cortical bone around fatty marrow."""
    u, v, _ = uvw
    surface = layers.surface
    sternum_depth = np.minimum.reduce(
        [
            chest.sternum_half_width - np.abs(u),
            surface - 0.5 - v,
            v - (surface - rng.uniform(7.0, 10.0)),
        ]
    )
    tissue[sternum_depth > 0] = TISSUE["bone_cortex"]
    tissue[sternum_depth > 1.0] = TISSUE["marrow"]
    rib_paths = []
    rib_radius = rng.uniform(3.0, 4.0)
    rib_spacing = rng.uniform(17.0, 22.0)
    first_rib = rng.uniform(-half[2] - 10.0, -half[2] - 10.0 + rib_spacing)
    for rib_si in np.arange(first_rib, half[2] + 30.0, rib_spacing):
        for side in (-1.0, 1.0):
            lr = side * np.arange(chest.sternum_half_width - 1.0, half[0] + 15.0, 1.5)
            si = rib_si - 0.2 * np.abs(lr)
            ap = chest.surface(lr, si) - chest.pectoral_depth(lr, si) - 1.0 - rib_radius - 1.0
            rib_paths.append((np.stack([lr, ap, si], axis=1), np.full(len(lr), rib_radius)))
    rib_distance = tube_distance(placement, rib_paths, 0.0)
    tissue[rib_distance < 0] = TISSUE["bone_cortex"]
    tissue[rib_distance < -1.0] = TISSUE["marrow"]


def _paint_fibroglandular_tissue(
    rng: np.random.Generator,
    tissue: np.ndarray,
    placement: Placement,
    uvw: Coordinates,
    half: np.ndarray,
    layers: _ChestLayers,
    breasts: _Breasts,
    detail_noise: np.ndarray,
) -> None:
    """Fibroglandular tissue: branching strands and blobs, densest near the breast centre."""
    v = uvw[1]
    fibroglandular_noise = SmoothNoise(rng, half, 5.0).on_grid(placement)
    density = rng.uniform(0.15, 0.45)
    core = np.sqrt(np.clip(1 - breasts.radius, 0, 1))
    fibroglandular = (
        breasts.inside
        & (breasts.depth > 3.0)
        & (v > layers.surface + breasts.retromammary_fat + 2.0)
        & (
            (np.abs(fibroglandular_noise) < density * core)
            | (fibroglandular_noise + 0.6 * detail_noise > 2.2 - core)
        )
    )
    tissue[fibroglandular] = TISSUE["fibroglandular"]


def _paint_skin(
    rng: np.random.Generator, tissue: np.ndarray, placement: Placement, breasts: _Breasts
) -> None:
    """Skin: a thin layer inside the body's surface."""
    skin = breasts.body & (distance_inside(breasts.body, placement) < rng.uniform(1.2, 2.0))
    tissue[skin] = TISSUE["skin"]


# ----------------------------------------------------------------------------------------------
# Intensities


def _render_image(
    rng: np.random.Generator,
    tissue: np.ndarray,
    placement: Placement,
    half: np.ndarray,
    detail_noise: np.ndarray,
) -> np.ndarray:
    """Tissue means relative to fat, texture, bias field and Rician noise."""
    means = tissue_means(rng, RELATIVE_T1, rng.uniform(500, 900), 0.03)
    # Fibroglandular tissue is like muscle, a little brighter in some women.
    muscle_mean = means[TISSUE["muscle"]]
    means[TISSUE["fibroglandular"]] = muscle_mean * rng.uniform(1.0, 1.15)
    bias = np.exp(rng.uniform(0.07, 0.1) * SmoothNoise(rng, half, 50.0).on_grid(placement))
    noise_sigma = rng.uniform(0.015, 0.035) * means[TISSUE["fat"]]
    return render_mri(rng, tissue, means, 0.04 * detail_noise, bias, noise_sigma)
