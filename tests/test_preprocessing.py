"""Preprocessing: orientation, spacing, sampling mask on stored intensities, normalisation."""

import numpy as np
import pytest
import torch
import torchio as tio

from mtseg.data.preprocessing import SAMPLING_MASK, build_preprocessing


def subject(affine, shape=(20, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-100, 900, size=shape).astype(np.float32)
    label = (rng.uniform(size=shape) > 0.7).astype(np.uint8)
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
        task="breast",
    )


MRI = [tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(0.5, 99.5))]


def test_grid_at_target_spacing_is_kept_voxel_for_voxel():
    s = subject(np.diag([1.3, 1.3, 1.3, 1.0]))
    out = build_preprocessing(1.3, 0.0, [])(s)
    assert out["image"].shape == s["image"].shape
    assert torch.equal(out["image"].data, s["image"].data)
    np.testing.assert_allclose(out["image"].affine, s["image"].affine)


def test_reorients_to_ras_and_resamples_to_isotropic_spacing():
    # LPS-like orientation with anisotropic voxels
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.0, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    original = subject(affine)
    out = build_preprocessing(1.0, 0.0, [])(original)
    assert out["image"].orientation == ("R", "A", "S")
    np.testing.assert_allclose(out["image"].spacing, (1.0, 1.0, 1.0))
    assert out["image"].shape[1:] == (20, 16, 24)
    # x and y were flipped: the voxel nearest a world point keeps its intensity
    world = original["image"].affine @ np.array([3, 5, 4, 1.0])  # voxel (3, 5, 4), z centre at 2 mm spacing
    index = np.round(np.linalg.solve(out["image"].affine, world)[:3]).astype(int)
    assert index.tolist()[:2] == [20 - 1 - 3, 16 - 1 - 5]
    assert out["label"].data[0][tuple(index)] == original["label"].data[0, 3, 5, 4]
    assert out["label"].shape == out["image"].shape == out[SAMPLING_MASK].shape
    assert set(torch.unique(out["label"].data).tolist()) <= {0, 1}


def test_sampling_mask_uses_stored_intensities_before_normalisation():
    s = subject(np.eye(4))
    out = build_preprocessing(1.0, 0.0, MRI)(s)
    expected = s["image"].data > 0
    assert torch.equal(out[SAMPLING_MASK].data.bool(), expected)
    assert out["image"].data.min() >= 0 and out["image"].data.max() <= 1
    # normalised intensities of excluded voxels are not all <= 0: the mask is not a threshold on them
    assert (out["image"].data[~expected] > 0).any()


def test_bad_spacing_is_an_error():
    with pytest.raises(ValueError, match="spacing must be positive"):
        build_preprocessing(0.0, 0.0, [])


def test_resampling_to_a_grid_above_the_voxel_limit_is_refused_before_it_is_built():
    import numpy as np
    import torch
    import torchio as tio

    from mtseg.data.preprocessing import ResampleToSpacing

    coarse = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 10, 10, 10), affine=np.diag([50.0, 50.0, 50.0, 1.0])))
    with pytest.raises(ValueError, match=r"resampled to 0.05 mm, its grid would hold 1,000,000,000,000 voxels, more than max_voxels="):
        ResampleToSpacing(0.05)(coarse)
