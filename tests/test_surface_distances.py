"""HD95 and ASSD (MONAI) against a brute-force computation, empty masks included."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from mtseg.evaluation.metrics import surface_distances


def brute_force(reference: np.ndarray, prediction: np.ndarray, spacing) -> tuple[float, float]:
    """Surface voxels (the mask minus its 6-connected erosion), every pairwise distance in mm."""

    def surface(mask):
        return np.argwhere(mask & ~binary_erosion(mask)) * np.asarray(spacing)

    a, b = surface(prediction), surface(reference)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    a_to_b, b_to_a = distances.min(1), distances.min(0)
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    return float(hd95), float(np.concatenate([a_to_b, b_to_a]).mean())


def ball(shape, centre, radius):
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return ((grid - np.asarray(centre)) ** 2).sum(-1) <= radius**2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_surface_distances_match_a_brute_force_computation(spacing):
    rng = np.random.default_rng(0)
    shape = (18, 16, 14)
    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    reference[ball(shape, (8, 8, 7), 5)] = 1
    prediction[ball(shape, (9, 7, 7), 4)] = 1
    reference[2:6, 2:5, 2:12] = 2  # class 2: a box and a noisy copy of it
    noisy = np.zeros(shape, bool)
    noisy[2:7, 2:5, 3:12] = True
    noisy &= rng.random(shape) > 0.1
    prediction[noisy] = 2
    hd95, assd = surface_distances(torch.from_numpy(reference), torch.from_numpy(prediction), 4, spacing)
    for c in (1, 2):
        expected = brute_force(reference == c, prediction == c, spacing)
        assert hd95[c - 1].item() == pytest.approx(expected[0], rel=1e-4)
        assert assd[c - 1].item() == pytest.approx(expected[1], rel=1e-4)
    # class 3 is in neither map: undefined, like Dice
    assert math.isnan(hd95[2]) and math.isnan(assd[2])


def test_a_class_missing_from_one_map_has_no_distance_not_a_crash():
    reference = torch.zeros((8, 8, 8), dtype=torch.uint8)
    reference[2:5, 2:5, 2:5] = 1
    empty = torch.zeros_like(reference)
    for a, b in ((reference, empty), (empty, reference), (empty, empty)):
        hd95, assd = surface_distances(a, b, 2, (1.0, 1.0, 1.0))
        assert math.isnan(hd95[0]) and math.isnan(assd[0])
    hd95, assd = surface_distances(reference, reference, 2, (1.0, 1.0, 1.0))
    assert hd95[0] == 0 and assd[0] == 0
