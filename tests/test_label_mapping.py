"""Label mappings: the MICCAI 2012 scheme on every ID, config rules, convert-labels."""

import nibabel as nib
import numpy as np
import pytest

from mtseg.data.__main__ import main
from mtseg.data.label_mapping import LabelMapping, load_scheme, parse_ids

# The default MICCAI 2012 (Neuromorphometrics) mapping, written out independently of conf/.
MICCAI2012 = {
    "white_matter": {44, 45},
    "cortical_grey_matter": set(range(100, 208)) | {47, 48, 31, 32},
    "basal_ganglia_and_thalami": {23, 30, 36, 37, 55, 56, 57, 58, 59, 60},
    "ventricular_csf": {4, 11, 49, 50, 51, 52},
    "cerebellum": {38, 39, 40, 41, 71, 72, 73},
    "brain_stem": {35},
}


def expected_miccai2012(ids):
    classes = list(MICCAI2012)
    return np.array([next((classes.index(c) + 1 for c in classes if i in MICCAI2012[c]), 0) for i in ids])


def every_id_volume(dtype):
    ids = np.arange(208)
    return np.resize(ids, (13, 16, 3)).astype(dtype), np.resize(ids, 13 * 16 * 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_miccai2012_maps_every_id_to_the_six_tissues(dtype):
    task, mapping = load_scheme("miccai2012")
    assert task == "brain"
    assert mapping.names == ("background", *MICCAI2012)
    volume, flat = every_id_volume(dtype)
    mapped = mapping.apply(volume, "synthetic")
    assert mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped.ravel(), expected_miccai2012(flat))
    # 46 (extra-cerebral CSF), 61/62 (ventral DC), 69 (optic chiasm), 75/76 (basal forebrain) are background
    assert mapping.apply(np.array([46, 61, 62, 69, 75, 76, 0])).tolist() == [0] * 7
    with pytest.raises(ValueError, match=r"synthetic: label values \[208, 300\] are outside the label mapping \(miccai2012\)"):
        mapping.apply(np.array([0, 208, 300, 44]), "synthetic")


def test_config_rules():
    assert parse_ids([1, "3-5", "7"]) == [1, 3, 4, 5, 7]
    with pytest.raises(ValueError, match="empty range"):
        parse_ids(["5-3"])
    with pytest.raises(ValueError, match="neither a label ID"):
        parse_ids(["a"])
    identity = LabelMapping.from_config(None, ("pectoral_muscle",))
    assert identity.apply(np.array([0, 1, 1])).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"label values \[2\]"):
        identity.apply(np.array([0, 2]))
    with pytest.raises(ValueError, match="listed for both"):
        LabelMapping.from_config({"classes": {"a": [1], "b": [1]}}, ("a", "b"))
    with pytest.raises(ValueError, match=r"class\(es\) \['liver'\] are not classes"):
        LabelMapping.from_config({"classes": {"liver": [1]}}, ("pectoral_muscle",))
    with pytest.raises(ValueError, match="NaN or infinite"):
        identity.apply(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="unknown label mapping scheme 'oasis'; known schemes: identity, miccai2012"):
        load_scheme("oasis")


def test_convert_labels_writes_the_six_class_map(tmp_path, capsys):
    volume, flat = every_id_volume(np.int16)
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.25, -72], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "1000_3_glm.nii.gz"))
    out = tmp_path / "out" / "1000_3_tissues.nii.gz"
    assert main(["convert-labels", "--scheme", "miccai2012", str(tmp_path / "1000_3_glm.nii.gz"), str(out)]) == 0
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj).ravel(), expected_miccai2012(flat))
    assert "cortical_grey_matter" in capsys.readouterr().out


def test_convert_labels_writes_nothing_on_bad_input(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 250, dtype=np.int16), np.eye(4)), str(tmp_path / "bad.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert main(["convert-labels", "--scheme", "miccai2012", str(tmp_path / "bad.nii.gz"), str(out)]) == 1
    assert "bad.nii.gz: label values [250] are outside the label mapping" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.nii.gz"]
    assert main(["convert-labels", "--scheme", "miccai2012", str(tmp_path / "none.nii.gz"), str(out)]) == 1
    assert "none.nii.gz: no such label file" in capsys.readouterr().err
