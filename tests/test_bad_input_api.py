"""Hostile and careless use of the Python API and of predict's settings.

Every image type (a path, a nibabel image, a ``tio.ScalarImage``, a ``tio.Subject``) passes the
same checks before its voxels are read; every message names the image (its path or
``<in-memory image>``) or the setting; the API raises ``ValueError``/``TypeError`` (or the
``OSError`` of a path), the command line exits with 1, and nothing is left behind.
"""

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from mtseg import Segmenter
from mtseg.image_input import IN_MEMORY
from mtseg.settings import PREDICT_RULES, TRAIN_RULES, Rule, check_settings, config_values
from test_bad_input import forged, network, refused, save, scan, snapshot  # noqa: F401 (fixtures)


def bomb(path, shape=(1800, 1800, 1800)):
    """A few kilobytes of .nii.gz whose header declares ``shape`` float32 voxels."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(4096)))
    return path


@pytest.fixture
def segmenter(network):
    return Segmenter.from_checkpoint(network, "cpu")


# --- one validation path for every image type --------------------------------------------------


@pytest.mark.parametrize("load", ["nibabel", "torchio", "subject"])
def test_a_tiny_file_declaring_a_huge_volume_is_refused_unread_whatever_its_type(tmp_path, network, load):
    """The denial of service: read through nibabel or TorchIO, the voxels used to be read before any check."""
    path = bomb(tmp_path / "bomb.nii.gz")
    opener = {"nibabel": "nib.load(path)", "torchio": "tio.ScalarImage(path)", "subject": "tio.Subject(t1=tio.ScalarImage(path))"}[load]
    code = (
        "import resource, sys, nibabel as nib, torchio as tio; from mtseg import Segmenter\n"
        f"path = {str(path)!r}; segmenter = Segmenter.from_checkpoint({str(network)!r}, 'cpu')\n"
        f"try:\n    segmenter.segment({opener})\nexcept ValueError as error:\n    print('REFUSED', error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED" in result.stdout and "bomb.nii.gz" in result.stdout and "more than max_voxels=" in result.stdout
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_a_nibabel_image_whose_file_holds_less_than_its_header_declares_is_refused(tmp_path, segmenter):
    path = tmp_path / "short.nii"
    path.write_bytes(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)).to_bytes()[:-4000])
    with pytest.raises(ValueError, match=r"short.nii: truncated"):
        segmenter.segment(nib.load(path))


def test_a_multichannel_torchio_image_is_a_clear_error(segmenter):
    with pytest.raises(ValueError, match=rf"{IN_MEMORY}: expected a single 3-D volume \(one channel\), got a tensor of shape \(2, 16, 16, 16\)"):
        segmenter.segment(tio.ScalarImage(tensor=torch.rand(2, 16, 16, 16)))


AFFINES = {
    "tiny-spacing": (np.diag([1e-4, 1e-4, 1e-4, 1.0]), r"voxel spacing \[0.0001, 0.0001, 0.0001\] mm lies outside min_spacing_mm=0.01"),
    "singular": (np.diag([1.0, 1.0, 0.0, 1.0]), r"voxel spacing \[1.0, 1.0, 0.0\] mm is not finite and positive"),
    "sheared-flat": (np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "its affine is not finite or not invertible"),
    "nan": (np.diag([1.0, np.nan, 1.0, 1.0]), "is not finite and positive"),
}


@pytest.mark.parametrize("case", AFFINES)
@pytest.mark.parametrize("kind", ["nibabel", "torchio"])
def test_in_memory_images_with_a_bad_affine_are_refused_naming_them(segmenter, case, kind):
    affine, message = AFFINES[case]
    data = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    if kind == "nibabel":  # nibabel refuses to build some of these; an image's affine can still be changed in place
        image = nib.Nifti1Image(data, np.eye(4))
        image.affine[:] = affine
    else:
        image = tio.ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine)
    with pytest.raises(ValueError, match=message) as error:
        segmenter.segment(image)
    assert str(error.value).startswith(IN_MEMORY) and "None" not in str(error.value)


def test_a_torchio_image_of_a_file_with_a_tiny_spacing_is_refused_as_the_path_is(tmp_path, segmenter):
    path = forged(tmp_path / "tiny.nii.gz", pixdim=(1.0, 0.001, 1.0))
    for image in (path, tio.ScalarImage(path)):
        with pytest.raises(ValueError, match=r"tiny.nii.gz: voxel spacing \[1.0, 0.001, 1.0\] mm lies outside"):
            segmenter.segment(image)


def test_an_all_zero_in_memory_image_is_named_not_none(segmenter):
    with pytest.raises(ValueError, match=rf"^{IN_MEMORY}: all 1,728 voxels have intensity 0: no contrast"):
        segmenter.segment(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)))


def test_every_image_type_gives_the_same_labels(scan, segmenter):
    expected = segmenter.segment(scan).labels
    nifti = nib.load(scan)
    in_memory = nib.Nifti1Image(np.asarray(nifti.dataobj), nifti.affine)
    loaded = tio.ScalarImage(scan)
    loaded.load()
    for image in (nifti, in_memory, tio.ScalarImage(scan), loaded, tio.Subject(t1=tio.ScalarImage(scan), seg=tio.LabelMap(scan))):
        assert torch.equal(segmenter.segment(image).labels, expected), type(image).__name__


@pytest.mark.parametrize(
    "image, error, message",
    [
        (lambda p: tio.Subject(a=tio.ScalarImage(p), b=tio.ScalarImage(p)), ValueError, r"holds 2 \(a, b\)"),
        (lambda p: tio.LabelMap(p), TypeError, "not a LabelMap"),
        (lambda p: np.zeros((8, 8, 8)), TypeError, "not ndarray"),
        (lambda p: p.parent, IsADirectoryError, "is a folder, not a file"),
    ],
    ids=["two-images", "label-map", "array", "folder"],
)
def test_what_is_not_one_image_is_a_clear_error(scan, segmenter, image, error, message):
    with pytest.raises(error, match=message):
        segmenter.segment(image(scan))


# --- the API's settings and outputs ----------------------------------------------------------------


def test_from_checkpoint_refuses_what_is_not_a_checkpoint_path(tmp_path, network):
    with pytest.raises(TypeError, match="a checkpoint is given as a path"):
        Segmenter.from_checkpoint(None)
    with pytest.raises(IsADirectoryError, match=f"checkpoint {tmp_path} is a folder"):
        Segmenter.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"device='tpu': expected one of auto, cpu, cuda"):
        Segmenter.from_checkpoint(network, device="tpu")


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"slab_voxels": 0}, "slab_voxels=0: expected an integer >= 1"),
        ({"slab_voxels": -5}, "slab_voxels=-5: expected an integer >= 1"),
        ({"slab_voxels": 2.5}, "slab_voxels=2.5: expected an integer"),
        ({"max_voxels": -1}, "max_voxels=-1: expected an integer >= 1"),
        ({"min_dominance": 1.5}, r"min_dominance=1.5: expected a number in \[0, 1\]"),
        ({"min_dominance": "high"}, "min_dominance='high'"),
    ],
)
def test_segmenter_settings_are_checked(network, setting, message):
    with pytest.raises(ValueError, match=message):
        Segmenter.from_checkpoint(network, "cpu", **setting)


def test_save_refuses_a_name_or_place_it_cannot_write_naming_it_not_a_temporary_file(tmp_path, scan, segmenter):
    result = segmenter.segment(scan)
    before = snapshot(tmp_path)
    for target, message in [
        (tmp_path / "seg.txt", "output .*seg.txt: the name must end in .nii or .nii.gz"),
        (tmp_path / "missing" / "seg.nii.gz", "output .*seg.nii.gz: folder .*missing does not exist"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            result.save(target)
        assert "/." not in str(error.value)  # no hidden temporary name
    with pytest.raises(ValueError, match="probabilities folder .*scan.nii.gz is a file"):
        result.save(tmp_path / "seg.nii.gz", probabilities=scan)
    assert snapshot(tmp_path) == before


# --- predict's flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--slab-voxels", "0"], "--slab-voxels=0: expected an integer >= 1"),
        (["--slab-voxels", "-3"], "--slab-voxels=-3: expected an integer >= 1"),
        (["--max-voxels", "-1"], "--max-voxels=-1: expected an integer >= 1"),
        (["--min-foreground-percent", "200"], "--min-foreground-percent=200.0: expected a number in [0, 100]"),
        (["--device", "tpu"], "device='tpu': expected one of auto, cpu, cuda"),
    ],
)
def test_predict_refuses_bad_settings_before_reading_anything(tmp_path, network, scan, capsys, flags, message):
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz", *flags)
    assert message in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_probabilities_onto_the_input_before_the_network_runs(tmp_path, network, scan, capsys, monkeypatch):
    monkeypatch.setattr(Segmenter, "segment", lambda *a, **k: pytest.fail("the network ran"))
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz", "--probabilities", scan)
    assert "would replace the input image" in err


@pytest.mark.parametrize("role", ["--input", "--checkpoint"])
def test_predict_names_a_folder_given_as_a_file(tmp_path, network, scan, capsys, role):
    folder = tmp_path / "folder"
    folder.mkdir()
    arguments = {"--checkpoint": network, "--input": scan, "--output": tmp_path / "seg.nii.gz", role: folder}
    err = refused(tmp_path, capsys, *[x for pair in arguments.items() for x in pair])
    assert f"{folder} is a folder, not a file" in err


# --- the settings rules themselves ------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (Rule(int, low=1), [1, 10**9], [0, -1, 1.5, True, "3", None, float("nan")]),
        (Rule(float, low=0, low_open=True), [1e-6, 3, 0.5], [0, -1e-3, "abc", False, float("inf")]),
        (Rule(int, low=1, optional=True), [None, 2], [0, "all"]),
        (Rule(float, low=0, high=1, high_open=True, pair=True), [[0.9, 0.999], (0, 0.5)], [[0.9], [0.9, 1.0], 0.9, ["a", 0.1]]),
    ],
)
def test_a_rule_accepts_exactly_its_values(rule, good, bad):
    assert all(rule.accepts(v) for v in good)
    assert not any(rule.accepts(v) for v in bad)


def test_the_rules_cover_the_numbers_of_the_configs():
    """Every key the rules name exists in today's configs (a renamed setting must not go unchecked)."""
    from hydra import compose, initialize_config_dir

    from mtseg import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        patch = compose("train")
        dense = compose("train", overrides=["training=cubes"])
    from omegaconf import OmegaConf

    missing = [k for k in TRAIN_RULES if OmegaConf.select(patch, k, default="?") == "?" and OmegaConf.select(dense, k, default="?") == "?"]
    assert not missing
    check_settings(config_values(patch, TRAIN_RULES), TRAIN_RULES)  # the defaults pass their own rules
    check_settings(config_values(dense, TRAIN_RULES), TRAIN_RULES)
    from mtseg.inference.segmenter import default_settings

    assert set(PREDICT_RULES) - {"max_voxels"} <= set(default_settings())
