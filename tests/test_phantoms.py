import re

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mtseg.data.phantoms import PhantomSpec, default_spec, generate_phantom, write_phantom_dataset
from mtseg.tasks import TASKS

# Coarse grids with (about) the default field of view, so anatomy keeps its real size.
SMALL = {
    "brain": PhantomSpec("brain", (48, 56, 48), 2.0),
    "breast": PhantomSpec("breast", (56, 40, 32), 2.6),
    "cta": PhantomSpec("cta", (64, 64, 48), 0.9),
}
TASK_NAMES = list(SMALL)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_same_seed_gives_identical_arrays_and_another_seed_differs(task):
    image, label, affine = generate_phantom(SMALL[task], 3)
    again = generate_phantom(SMALL[task], 3)
    other_image, other_label, _ = generate_phantom(SMALL[task], 4)
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1])
    assert np.array_equal(affine, again[2])
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(label, other_label)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_geometry_dtypes_and_affine(task):
    spec = SMALL[task]
    image, label, affine = generate_phantom(spec, 0)
    assert image.shape == label.shape == spec.shape
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    assert np.allclose(np.diag(affine), [spec.spacing] * 3 + [1.0])
    centre = affine @ np.append(0.5 * (np.asarray(spec.shape) - 1), 1.0)
    assert np.allclose(centre[:3], 0.0)
    assert np.isfinite(image).all()


# Plausible share of the volume of each foreground class (task-local label order).
FRACTIONS = {
    "brain": [
        (0.02, 0.12),
        (0.02, 0.12),
        (0.001, 0.01),
        (0.001, 0.015),
        (0.005, 0.04),
        (0.001, 0.01),
    ],
    "breast": [(0.01, 0.12)],
    "cta": [(0.001, 0.02)],
}


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_class_present_with_a_plausible_fraction(task, seed):
    _, label, _ = generate_phantom(SMALL[task], seed)
    assert label.max() == len(TASKS[task].classes)
    fractions = np.bincount(label.ravel(), minlength=TASKS[task].n_classes) / label.size
    assert fractions[0] > 0.5
    for fraction, (low, high) in zip(fractions[1:], FRACTIONS[task]):
        assert low <= fraction <= high


def test_mri_intensities_are_positive_and_ct_is_in_hounsfield_units():
    for task in ("brain", "breast"):
        image, _, _ = generate_phantom(SMALL[task], 0)
        assert image.min() >= 0 and image.max() > 100
    image, label, _ = generate_phantom(SMALL["cta"], 0)
    assert image.min() == -2048.0  # scanner padding outside the circular field of view
    assert image[0, 0, 0] == -2048.0 and image[32, 32, 24] > -2048.0
    inside = image[image > -2048]
    assert np.percentile(inside, 1) < -700  # lungs and air
    assert 200 < np.median(image[label == 1]) < 600  # contrast-filled lumen


def test_anatomy_is_the_same_at_another_resolution():
    coarse = generate_phantom(PhantomSpec("breast", (56, 40, 32), 2.6), 5)[1]
    fine = generate_phantom(PhantomSpec("breast", (112, 80, 64), 1.3), 5)[1]
    downsampled = fine.reshape(56, 2, 40, 2, 32, 2).mean(axis=(1, 3, 5)) > 0.5
    agreement = np.sum(downsampled & (coarse == 1)) / np.sum(coarse == 1)
    assert agreement > 0.8


def test_coronary_diameters_are_in_the_real_range():
    spec = PhantomSpec("cta", (96, 96, 72), 0.6)  # default field of view, coarser voxels
    for seed in (0, 1):
        _, label, _ = generate_phantom(spec, seed)
        inscribed_radius = ndimage.distance_transform_edt(label, sampling=spec.spacing)
        assert 0.6 <= inscribed_radius.max() <= 2.2
        # Thin tubes: most lumen voxels lie within 1.5 mm of the wall.
        assert np.mean(inscribed_radius[label == 1] <= 1.5) > 0.8


def test_default_specs_follow_the_paper_spacings():
    assert default_spec("brain").spacing == 1.0
    assert default_spec("breast").spacing == 1.3
    assert default_spec("cta").spacing == 0.45
    for task in TASK_NAMES:
        assert min(default_spec(task).shape) >= 64


def write_small(root, task="breast", n_subjects=2, seed=0, **kwargs):
    spec = SMALL[task]
    kwargs = {"shape": spec.shape, "spacing": spec.spacing, **kwargs}
    return write_phantom_dataset(task, root, n_subjects, seed, progress=False, **kwargs)


def test_nifti_files_keep_affine_zooms_dtypes_and_data(tmp_path):
    spec = SMALL["cta"]
    pairs = write_small(tmp_path, "cta")
    assert [p.name for pair in pairs for p in pair] == [
        "cta_000.nii.gz",
        "cta_000.nii.gz",
        "cta_001.nii.gz",
        "cta_001.nii.gz",
    ]
    image_file, label_file = (nib.load(path) for path in pairs[0])
    for nifti, dtype in ((image_file, np.float32), (label_file, np.uint8)):
        assert nifti.get_data_dtype() == dtype
        assert np.allclose(nifti.header.get_zooms(), [spec.spacing] * 3)
        assert np.allclose(nifti.affine, spec.affine)
        assert int(nifti.header["qform_code"]) == 1 and int(nifti.header["sform_code"]) == 1
        assert np.allclose(nifti.get_qform(), spec.affine) and np.allclose(
            nifti.get_sform(), spec.affine
        )
    label = np.asarray(label_file.dataobj)
    assert label.dtype == np.uint8 and label.shape == spec.shape and label.max() == 1
    # Subject i does not depend on the number of subjects.
    more = write_small(tmp_path / "more", "cta", n_subjects=3)
    for i in range(2):
        assert np.array_equal(
            np.asarray(nib.load(pairs[i][0]).dataobj), np.asarray(nib.load(more[i][0]).dataobj)
        )
        assert np.array_equal(
            np.asarray(nib.load(pairs[i][1]).dataobj), np.asarray(nib.load(more[i][1]).dataobj)
        )


def test_dataset_is_cached_and_parameters_change_the_folder(tmp_path):
    pairs = write_small(tmp_path)
    folder = pairs[0][0].parent.parent
    assert folder.name.startswith("breast-") and (folder / "params.json").is_file()
    mtimes = {path: path.stat().st_mtime_ns for pair in pairs for path in pair}
    assert write_small(tmp_path) == pairs
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes
    other_seed = write_small(tmp_path, seed=1)[0][0].parent.parent
    other_shape = write_small(tmp_path, shape=(56, 40, 40))[0][0].parent.parent
    assert len({folder, other_seed, other_shape}) == 3
    assert not list(tmp_path.rglob(".*"))  # no temporary files left


def test_incomplete_dataset_is_completed(tmp_path):
    pairs = write_small(tmp_path)
    folder = pairs[0][0].parent.parent
    kept = pairs[0][0].stat().st_mtime_ns
    (folder / "params.json").unlink()
    pairs[1][1].unlink()
    assert write_small(tmp_path) == pairs
    assert pairs[1][1].is_file() and (folder / "params.json").is_file()
    assert pairs[0][0].stat().st_mtime_ns == kept


@pytest.mark.parametrize(
    "kwargs, bad_value",
    [
        ({"task": "liver"}, "liver"),
        ({"shape": (16, 40, 32)}, "(16, 40, 32)"),
        ({"spacing": -1.0}, "-1.0"),
        ({"spacing": 0}, "0"),
        ({"n_subjects": 0}, "n_subjects=0"),
        ({"seed": -2}, "seed=-2"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_value(tmp_path, kwargs, bad_value):
    arguments = {
        "task": "breast",
        "root": tmp_path,
        "n_subjects": 2,
        "seed": 0,
        "shape": (56, 40, 32),
        **kwargs,
    }
    with pytest.raises(ValueError, match=re.escape(bad_value)):
        write_phantom_dataset(**arguments, progress=False)
    assert not list(tmp_path.iterdir())


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="brain, breast, cta"):
        default_spec("liver")
    with pytest.raises(ValueError, match="liver"):
        PhantomSpec("liver", (64, 64, 64), 1.0)
