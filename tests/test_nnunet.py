"""nnU-Net v2 raw data sets: reading, splits, channels, dataset.json against the files, writing."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mtseg.data.check import check_subjects
from mtseg.data.nnunet import nnunet_cases, read_dataset_json, write_dataset
from mtseg.data.sources import task_subjects
from niftidata import nnunet_folder, save, volumes


def cfg(root, **extra):
    return {"source": "nnunet", "root": str(root), "channel": 0, "label_map": None, "split": None, **extra}


def ids(splits):
    return {split: [s["case_id"] for s in subjects] for split, subjects in splits.items()}


def test_labelled_imagesTs_are_the_held_out_split(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset001_Toy", n_train=3, n_test=2)
    splits = task_subjects("cta", cfg(root), "unused")
    assert ids(splits) == {"train": ["case_000", "case_001", "case_002"], "test": ["case_100", "case_101"]}
    subject = splits["test"][1]
    assert torch.equal(subject["label"].data[0], torch.from_numpy(volumes(101, 2)[1].astype(np.uint8)))
    assert str(subject["image"].path).endswith("case_101_0000.nii.gz")
    summary = check_subjects(splits, "cta")
    assert summary.split_sizes() == {"train": 3, "test": 2}


def test_without_labelsTs_the_rule_splits_imagesTr_and_lists_override(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset002_Toy", n_train=5, n_test=0)
    assert not (root / "labelsTs").exists()
    save(root / "imagesTs" / "unlabelled_0000.nii.gz", volumes(9, 2)[0])
    splits = ids(task_subjects("cta", cfg(root), "unused"))
    assert len(splits["test"]) == 1 and len(splits["train"]) == 4  # 20 % of imagesTr
    listed = ids(task_subjects("cta", cfg(root, split={"test": ["case_000", "case_004"]}), "unused"))
    assert listed == {"train": ["case_001", "case_002", "case_003"], "test": ["case_000", "case_004"]}


def test_channel_is_selectable(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset003_Toy", n_train=2, n_test=1, channels=2)
    subject = task_subjects("breast", cfg(root, channel=1), "unused")["train"][0]
    assert str(subject["image"].path).endswith("case_000_0001.nii.gz")
    np.testing.assert_allclose(subject["image"].data[0].numpy(), 2 * volumes(0, 2)[0])
    with pytest.raises(ValueError, match=r"channel 2 requested, but .*dataset.json declares channels \[0, 1\]"):
        task_subjects("breast", cfg(root, channel=2), "unused")


def test_label_map_maps_source_ids_and_undeclared_values_fail(tmp_path):
    labels = {"background": 0, "liver": 1, "muscle": 2}
    root = nnunet_folder(tmp_path / "Dataset004_Toy", n_train=2, n_test=1, n_classes=3, labels=labels)
    mapped = cfg(root, label_map={"classes": {"pectoral_muscle": [2]}, "background": [0, 1]})
    splits = task_subjects("breast", mapped, "unused")
    stored = volumes(0, 3)[1]
    assert torch.equal(splits["train"][0]["label"].data[0], torch.from_numpy((stored == 2).astype(np.uint8)))
    # a value the files hold but dataset.json does not declare
    content = json.loads((root / "dataset.json").read_text())
    content["labels"] = {"background": 0, "muscle": 2}
    (root / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"case_000.nii.gz: label values \[1\] are outside .*restricted to the labels declared in .*dataset.json"):
        check_subjects(task_subjects("breast", mapped, "unused"), "breast")


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda r: (r / "dataset.json").unlink(), r"dataset.json: missing"),
        (lambda r: (r / "dataset.json").write_text("{"), r"dataset.json: not valid JSON"),
        (lambda r: edit(r, numTraining=5), r"numTraining is 5 but imagesTr holds 3 case\(s\)"),
        (lambda r: edit(r, channel_names={"0": "T1", "1": "T2"}), r"case 'case_000' has channel files \[0\] but .* declares channels \[0, 1\] \(missing \[1\]\)"),
        (lambda r: edit(r, file_ending=".mha"), r"file_ending '.mha' is not supported"),
        (lambda r: edit(r, labels={"background": 0, "tumour": [1, 2]}), r"label 'tumour' is a region"),
        (lambda r: edit(r, labels={"muscle": 1}), r"labels must declare background as 0"),
        (lambda r: (r / "labelsTr" / "case_001.nii.gz").unlink(), r"case_001_0000.nii.gz: no label case_001.nii.gz in .*labelsTr"),
        (lambda r: (r / "imagesTs" / "case_100_0000.nii.gz").unlink(), r"case_100.nii.gz: label without an image"),
        (lambda r: (r / "imagesTr" / "case_002_0000.nii.gz").rename(r / "imagesTr" / "case_002.nii.gz"), r"case_002.nii.gz: not named <case>_<channel as 4 digits>"),
        (lambda r: (r / "imagesTr" / "case_003_0001.nii.gz").write_bytes(b""), r"case 'case_003' has channel files \[1\] .*\(missing \[0\]\)"),
        (lambda r: [p.unlink() for p in (r / "imagesTr").iterdir()] and [p.unlink() for p in (r / "labelsTr").iterdir()], r"imagesTr: the folder is empty"),
    ],
)
def test_dataset_json_and_files_must_agree(tmp_path, break_it, message):
    root = nnunet_folder(tmp_path / "Dataset005_Toy", n_train=3, n_test=1)
    break_it(root)
    with pytest.raises(ValueError, match=message):
        task_subjects("cta", cfg(root), "unused")


def edit(root, **changes):
    content = json.loads((root / "dataset.json").read_text())
    content.update(changes)
    (root / "dataset.json").write_text(json.dumps(content))


def test_missing_folder_and_unset_root(tmp_path):
    with pytest.raises(ValueError, match="nnU-Net data set folder not found"):
        task_subjects("cta", cfg(tmp_path / "nothing"), "unused")
    with pytest.raises(ValueError, match=r"data.cta.root is not set"):
        task_subjects("cta", cfg("???"), "unused")


def test_write_dataset_round_trips_and_replaces_atomically(tmp_path):
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    cases = []
    for i in range(3):
        image, label = volumes(i, 7)
        cases.append((f"t{i}", nib.Nifti1Image(image, affine), nib.Nifti1Image(label.astype(np.uint8), affine)))
    names = {"background": 0, **{f"c{k}": k for k in range(1, 7)}}
    folder = tmp_path / "Dataset990_Test"
    write_dataset(folder, cases[:2], cases[2:], "T1", names, {"description": "toy"}, {"licences/x.txt": b"MIT"})
    dataset, listed = nnunet_cases(folder)
    assert [c.case_id for c in listed] == ["t0", "t1", "t2"] and [c.split for c in listed] == ["train", "train", "test"]
    assert dataset.labels == names and dataset.num_training == 2
    assert json.loads((folder / "dataset.json").read_text())["description"] == "toy"
    assert (folder / "licences" / "x.txt").read_bytes() == b"MIT"
    np.testing.assert_array_equal(np.asarray(nib.load(str(listed[2].label)).dataobj), volumes(2, 7)[1])
    np.testing.assert_allclose(nib.load(str(listed[0].image)).affine, affine)
    write_dataset(folder, cases[:1], [], "T1", names)  # replaced as a whole
    assert [c.case_id for c in nnunet_cases(folder)[1]] == ["t0"]
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert read_dataset_json(folder).channel_names == {0: "T1"}
