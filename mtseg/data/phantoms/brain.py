"""Brain phantom: T1 MRI of a head scaled to about 60 % of adult size, 1.0 mm by default.

Scalp fat, skull, extra-cerebral CSF, a folded cortical ribbon with sulci, white matter,
lateral and third ventricles, caudate, putamen and thalami, a cerebellum with folia, a brain
stem and the neck below the skull base. Labels (:mod:`mtseg.tasks`): 1 white matter, 2 cortical
grey matter, 3 basal ganglia and thalami, 4 ventricular CSF, 5 cerebellum, 6 brain stem.

The generator runs in named steps (random fields, layout of the cerebrum, cerebellum, brain stem
and head layers, then painting tissues and labels, then intensities); each step draws from the
random generator in the order the steps run, which fixes the output bit for bit.
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
    jitter_path,
    place_subject,
    ray_depth,
    render_mri,
    smooth_path,
    tissue_codes,
    tissue_means,
    tube_distance,
)

#: Default grid: voxels per axis (RAS) and isotropic voxel size (mm).
DEFAULT_SHAPE = (96, 112, 96)
DEFAULT_SPACING = 1.0
#: Field of view (mm) the anatomy is laid out for: the default grid's.
DESIGN_FOV = design_field_of_view(DEFAULT_SHAPE, DEFAULT_SPACING)

#: Mean T1 intensity of each brain tissue relative to white matter; the order gives tissue codes.
RELATIVE_T1 = {
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
#: Tissue code of each brain tissue.
TISSUE = tissue_codes(RELATIVE_T1)



def brain_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """T1 brain MRI phantom and its labels (see the module docstring)."""
    placement = place_subject(rng, shape, spacing, DESIGN_FOV, (0.94, 1.04), 5.0, 2.0)
    half = 0.5 * DESIGN_FOV
    uvw = placement.anatomical_coordinates()
    fields = _draw_fields(rng, placement, half)

    cerebrum = _lay_out_cerebrum(rng, placement, uvw, fields)
    cerebellum = _lay_out_cerebellum(rng, uvw, fields)
    stem = _lay_out_brain_stem(rng, placement, uvw, cerebellum.skull_base)
    brain = cerebrum.envelope | cerebellum.inside | stem.brain_stem
    layers = _lay_out_head_layers(rng, placement, brain, fields)

    tissue = np.full(shape, TISSUE["air"], dtype=np.uint8)
    label = np.zeros(shape, dtype=np.uint8)
    _paint_scalp(tissue, layers)
    _paint_neck(rng, tissue, uvw, layers, cerebellum.skull_base, stem)
    _paint_skull(tissue, layers)
    _paint_cerebrum(rng, tissue, label, placement, cerebrum, cerebellum, fields)
    _paint_cerebellum(rng, tissue, label, uvw, cerebellum, fields)
    tissue[stem.brain_stem] = TISSUE["brain_stem"]
    label[stem.brain_stem] = 6
    _paint_deep_grey(rng, tissue, label, uvw, cerebrum.centre, fields)
    _paint_ventricles(rng, tissue, label, placement, cerebrum)

    image = _render_image(rng, tissue, placement, half, fields)
    return image, label


# ----------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class _Fields:
    """The subject's random fields: shape, thickness and detail noise, cortical folds."""

    shape_noise: np.ndarray
    thickness_noise: np.ndarray
    detail_noise: np.ndarray
    fold_warp: list[np.ndarray]
    folds: RandomWaves


def _draw_fields(rng: np.random.Generator, placement: Placement, half: np.ndarray) -> _Fields:
    shape_noise = SmoothNoise(rng, half, 22.0).on_grid(placement)
    thickness_noise = SmoothNoise(rng, half, 12.0).on_grid(placement)
    detail_noise = SmoothNoise(rng, half, 6.0).on_grid(placement)
    fold_warp = [2.5 * SmoothNoise(rng, half, 8.0).on_grid(placement) for _ in range(3)]
    folds = RandomWaves(rng, 3, (14.0, 22.0), 24)
    return _Fields(shape_noise, thickness_noise, detail_noise, fold_warp, folds)


@dataclass(frozen=True)
class _Cerebrum:
    """Cerebral hemispheres: centre, voxel offsets from it, envelope, sulci and the fissure."""

    centre: np.ndarray
    offsets: Coordinates
    envelope: np.ndarray
    sulcus: np.ndarray
    fissure: np.ndarray


def _lay_out_cerebrum(
    rng: np.random.Generator, placement: Placement, uvw: Coordinates, fields: _Fields
) -> _Cerebrum:
    """Ellipsoid, flatter below its centre except for the temporal lobes, lumpy surface; sulci."""
    u, v, w = uvw
    centre = np.array([0.0, 2.0, 6.0]) + rng.normal(0, 0.7, 3)
    semi_lr, semi_ap = rng.uniform(31, 35), rng.uniform(39, 43)
    semi_up, semi_down = rng.uniform(26, 30), rng.uniform(18, 22)
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    temporal_bulge = 0.8 + 0.45 * np.minimum((du / semi_lr) ** 2, 1)
    semi_is = np.where(dw > 0, semi_up, semi_down * temporal_bulge).astype(np.float32)
    radius = ellipsoid_radius((du, dv, dw), (0, 0, 0), (semi_lr, semi_ap, semi_is))
    radius *= 1 + 0.03 * fields.shape_noise
    depth = ray_depth((du, dv, dw), (0, 0, 0), radius)
    envelope = radius < 1

    # Sulci: thin sheets where a fold field, nearly constant along rays from the centre, is zero.
    inverse_radius = 1 / np.maximum(radius, 1e-3)
    fold = fields.folds(
        *(d * inverse_radius + warp for d, warp in zip((du, dv, dw), fields.fold_warp))
    )
    fold_gradient = np.sqrt(sum(g**2 for g in np.gradient(fold, placement.voxel_mm)))
    sulcal_distance = np.abs(fold) / np.maximum(fold_gradient, 1e-3)
    sulcus_depth = rng.uniform(6.0, 9.0) * (1 + 0.3 * fields.thickness_noise)
    sulcus = (sulcal_distance < 0.5 * rng.uniform(1.2, 2.0)) & (depth < sulcus_depth)
    fissure = (np.abs(du) < 0.8) & ((dw > 13) | (dv > 20) | (dv < -24))
    return _Cerebrum(centre, (du, dv, dw), envelope, sulcus, fissure)


@dataclass(frozen=True)
class _Cerebellum:
    """Cerebellum: ellipsoid, depth below its surface, the tentorium above it, the skull base."""

    centre: np.ndarray
    semi: tuple[float, float, float]
    depth: np.ndarray
    inside: np.ndarray
    tentorium: np.ndarray
    skull_base: float


def _lay_out_cerebellum(
    rng: np.random.Generator, uvw: Coordinates, fields: _Fields
) -> _Cerebellum:
    """Cerebellum under the occipital lobes, separated from them by the tentorium."""
    centre = np.array([0.0, -24.0, -17.0]) + rng.normal(0, 0.7, 3)
    semi = (rng.uniform(24, 28), rng.uniform(14, 16), rng.uniform(11, 13))
    radius = ellipsoid_radius(uvw, centre, semi)
    radius *= 1 + 0.03 * fields.shape_noise
    depth = ray_depth(uvw, centre, radius)
    inside = depth > 0
    tentorium = depth > -rng.uniform(1.0, 2.0)
    skull_base = centre[2] - 0.5 * semi[2]
    return _Cerebellum(centre, semi, depth, inside, tentorium, skull_base)


@dataclass(frozen=True)
class _BrainStem:
    """Distance to the brain stem tube, the brain stem above the skull base, the cord below."""

    distance: np.ndarray
    brain_stem: np.ndarray
    spinal_cord: np.ndarray


def _lay_out_brain_stem(
    rng: np.random.Generator, placement: Placement, uvw: Coordinates, skull_base: float
) -> _BrainStem:
    """Brain stem from the midbrain down to the foramen magnum; the spinal cord continues below."""
    stem_path = smooth_path(
        [[0, -6, -1], [0, -8, -13], [0, -10, -25], [0, -11, -40], [0, -11, -60]],
        np.array([5.5, 6.5, 4.5, 4.0, 4.0]) * rng.uniform(0.9, 1.1),
        1.0,
    )
    distance = tube_distance(placement, [jitter_path(rng, stem_path, 0.5)], 6.0)
    brain_stem = (distance < 0) & (uvw[2] > skull_base - 5.0)
    spinal_cord = (distance < 0) & ~brain_stem
    return _BrainStem(distance, brain_stem, spinal_cord)


@dataclass(frozen=True)
class _HeadLayers:
    """Distance (mm) outside the brain and the outer limits of the CSF, skull and scalp layers."""

    outside_distance: np.ndarray
    csf_outer: np.ndarray
    skull_outer: np.ndarray
    scalp_outer: np.ndarray
    skull_middle: np.ndarray


def _lay_out_head_layers(
    rng: np.random.Generator, placement: Placement, brain: np.ndarray, fields: _Fields
) -> _HeadLayers:
    """Head layers outside the brain: extra-cerebral CSF, skull, scalp."""
    outside_distance = distance_inside(~brain, placement)
    layer_variation = 1 + 0.2 * fields.thickness_noise
    csf_outer = rng.uniform(1.5, 3.0) * layer_variation
    skull_outer = csf_outer + rng.uniform(3.0, 5.0) * layer_variation
    scalp_outer = skull_outer + rng.uniform(3.0, 5.0) * layer_variation
    skull_middle = 0.5 * (csf_outer + skull_outer)
    return _HeadLayers(outside_distance, csf_outer, skull_outer, scalp_outer, skull_middle)


# ----------------------------------------------------------------------------------------------
# Tissues and labels, painted in order: later steps overwrite earlier ones


def _paint_scalp(tissue: np.ndarray, layers: _HeadLayers) -> None:
    """Scalp fat under the skin; air outside the head."""
    tissue[layers.outside_distance < layers.scalp_outer] = TISSUE["scalp_fat"]
    tissue[layers.outside_distance >= layers.scalp_outer - 1.0] = TISSUE["skin"]
    tissue[layers.outside_distance >= layers.scalp_outer] = TISSUE["air"]


def _paint_neck(
    rng: np.random.Generator,
    tissue: np.ndarray,
    uvw: Coordinates,
    layers: _HeadLayers,
    skull_base: float,
    stem: _BrainStem,
) -> None:
    """Neck below the skull base: muscle under fat and skin, vertebrae around the spinal canal."""
    u, v, w = uvw
    neck_radius = np.sqrt((u / rng.uniform(22, 26)) ** 2 + ((v + 10) / rng.uniform(19, 22)) ** 2)
    neck_depth = (1 - neck_radius) * 20.0
    below_skull_outer = layers.outside_distance >= layers.skull_outer
    neck = (neck_depth > 0) & (w < skull_base + 4.0) & below_skull_outer
    tissue[neck] = TISSUE["skin"]
    tissue[neck & (neck_depth > 1.0)] = TISSUE["scalp_fat"]
    tissue[neck & (neck_depth > rng.uniform(3.0, 5.0))] = TISSUE["muscle"]
    below_skull = neck & (w < skull_base)
    tissue[below_skull & (stem.distance < 6.0)] = TISSUE["skull"]
    tissue[below_skull & (stem.distance < 4.5)] = TISSUE["diploe"]
    tissue[below_skull & (stem.distance < 2.0)] = TISSUE["csf"]
    tissue[stem.spinal_cord] = TISSUE["brain_stem"]


def _paint_skull(tissue: np.ndarray, layers: _HeadLayers) -> None:
    """Skull with a diploe in its middle, extra-cerebral CSF inside it."""
    skull_thickness = layers.skull_outer - layers.csf_outer
    diploe = np.abs(layers.outside_distance - layers.skull_middle) < 0.2 * skull_thickness
    tissue[layers.outside_distance < layers.skull_outer] = TISSUE["skull"]
    tissue[diploe] = TISSUE["diploe"]
    tissue[layers.outside_distance < layers.csf_outer] = TISSUE["csf"]


def _paint_cerebrum(
    rng: np.random.Generator,
    tissue: np.ndarray,
    label: np.ndarray,
    placement: Placement,
    cerebrum: _Cerebrum,
    cerebellum: _Cerebellum,
    fields: _Fields,
) -> None:
    """A cortical ribbon within a thickness of every CSF surface, white matter inside."""
    inside = cerebrum.envelope & ~cerebrum.sulcus & ~cerebrum.fissure & ~cerebellum.tentorium
    cortex_thickness = rng.uniform(2.0, 3.0) * (1 + 0.15 * fields.detail_noise)
    cortex = inside & (distance_inside(inside, placement) < cortex_thickness)
    tissue[inside] = TISSUE["white_matter"]
    label[inside] = 1
    tissue[cortex] = TISSUE["cortex"]
    label[cortex] = 2


def _paint_cerebellum(
    rng: np.random.Generator,
    tissue: np.ndarray,
    label: np.ndarray,
    uvw: Coordinates,
    cerebellum: _Cerebellum,
    fields: _Fields,
) -> None:
    """Folia fanning out from the anterior core of the cerebellum, cortex and white matter."""
    _, v, w = uvw
    semi = cerebellum.semi
    fan_centre = cerebellum.centre + np.array([0.0, 0.45 * semi[1], 0.15 * semi[2]])
    fan_angle = np.arctan2(w - fan_centre[2], fan_centre[1] - v)
    folium = np.cos(rng.uniform(15, 19) * fan_angle + 1.5 * fields.detail_noise)
    core_depth = rng.uniform(0.5, 0.6) * min(semi)
    depth = cerebellum.depth
    white_matter = (depth > core_depth) | ((folium > 0.7) & (depth > 1.5))
    folial_fissure = (folium < -0.7) & (depth < 0.8 * core_depth)
    tissue[cerebellum.inside] = TISSUE["cerebellar_cortex"]
    tissue[cerebellum.inside & white_matter] = TISSUE["cerebellar_white_matter"]
    tissue[cerebellum.inside & folial_fissure] = TISSUE["csf"]
    label[cerebellum.inside] = 5


#: Deep grey nuclei of one hemisphere: offset (mm, from the cerebrum's centre) and semi-axes;
#: ``x`` is mirrored for the other.
_DEEP_GREY_NUCLEI = (
    ((8.0, 9.0, 4.0), (3.0, 6.0, 4.0)),  # caudate head
    ((15.0, 2.0, 0.0), (3.5, 8.0, 5.0)),  # putamen
    ((6.0, -6.0, -1.0), (5.0, 8.0, 5.5)),  # thalamus
)


def _paint_deep_grey(
    rng: np.random.Generator,
    tissue: np.ndarray,
    label: np.ndarray,
    uvw: Coordinates,
    centre: np.ndarray,
    fields: _Fields,
) -> None:
    """Deep grey matter: caudate heads, putamina and thalami, bilateral."""
    deep_grey = np.zeros(tissue.shape, dtype=bool)
    for side in (-1.0, 1.0):
        for offset, semi in _DEEP_GREY_NUCLEI:
            blob_centre = (
                centre + np.array([side * offset[0], offset[1], offset[2]]) + rng.normal(0, 0.5, 3)
            )
            blob_semi = np.asarray(semi) * rng.uniform(0.9, 1.1, 3)
            deep_grey |= (
                ellipsoid_radius(uvw, blob_centre, blob_semi) * (1 + 0.05 * fields.detail_noise) < 1
            )
    tissue[deep_grey] = TISSUE["deep_grey"]
    label[deep_grey] = 3


#: Centre line (mm from the cerebrum's centre) of one lateral ventricle, front to temporal horn;
#: ``x`` is mirrored for the other.
_LATERAL_VENTRICLE = (
    (5, 17, 2),
    (4.5, 10, 6),
    (4, 0, 8),
    (5, -10, 7),
    (9, -18, 2),
    (14, -10, -6),
    (16, 0, -8),
)
#: Radii (mm) of the lateral ventricle at its control points, before enlargement.
_LATERAL_VENTRICLE_RADII = (2.5, 3.0, 3.0, 3.0, 3.5, 1.8, 1.2)


def _paint_ventricles(
    rng: np.random.Generator,
    tissue: np.ndarray,
    label: np.ndarray,
    placement: Placement,
    cerebrum: _Cerebrum,
) -> None:
    """C-shaped lateral ventricles (taller than wide) and a midline third ventricle."""
    enlargement = rng.uniform(0.8, 1.4)
    ventricle_paths = []
    for side in (-1.0, 1.0):
        control = np.array(_LATERAL_VENTRICLE, dtype=float)
        control[:, 0] *= side
        control += cerebrum.centre + rng.normal(0, 0.8, control.shape)
        radii = np.array(_LATERAL_VENTRICLE_RADII) * enlargement
        ventricle_paths.append(smooth_path(control, radii, 0.7))
        roof = control[:4] + np.array([0.0, 0.0, 2.5 * enlargement])
        ventricle_paths.append(smooth_path(roof, radii[:4], 0.7))
    ventricles = tube_distance(placement, ventricle_paths, 0.0) < 0
    du, dv, dw = cerebrum.offsets
    ventricles |= (
        (np.abs(du) < 0.5 * enlargement + 0.4) & (dv > -12) & (dv < 0) & (dw > -6) & (dw < 3)
    )
    tissue[ventricles] = TISSUE["csf"]
    label[ventricles] = 4


# ----------------------------------------------------------------------------------------------
# Intensities


def _render_image(
    rng: np.random.Generator,
    tissue: np.ndarray,
    placement: Placement,
    half: np.ndarray,
    fields: _Fields,
) -> np.ndarray:
    """Tissue means relative to white matter, texture, bias field and Rician noise."""
    means = tissue_means(rng, RELATIVE_T1, rng.uniform(600, 900), 0.03)
    bias = np.exp(rng.uniform(0.06, 0.1) * SmoothNoise(rng, half, 45.0).on_grid(placement))
    noise_sigma = rng.uniform(0.015, 0.035) * means[TISSUE["white_matter"]]
    return render_mri(rng, tissue, means, 0.03 * fields.detail_noise, bias, noise_sigma)
