"""NIfTI folder and CSV sources: listing, label mapping, splits, orientation and resampling, bad input."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from mtseg import CONFIG_DIR
from mtseg.data.check import check_subjects
from mtseg.data.preprocessing import build_preprocessing
from mtseg.data.sources import task_subjects
from niftidata import LPS_ANISOTROPIC, SHAPE, nifti_folder, save, volumes


def folder_cfg(root, **extra):
    return {"source": "nifti_folder", "root": str(root), "label_map": None, "split": None, **extra}


def case_ids(splits):
    return {split: [s["case_id"] for s in subjects] for split, subjects in splits.items()}


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32, np.float32])
def test_folder_source_reads_int_and_float_labels_as_task_labels(tmp_path, label_dtype):
    nifti_folder(tmp_path, n_cases=5, label_dtype=label_dtype)
    splits = task_subjects("breast", folder_cfg(tmp_path), "unused")
    assert sum(len(s) for s in splits.values()) == 5
    subject = splits["train"][0]
    expected = volumes(int(subject["case_id"][4:]), 2)[1]
    assert subject["label"].data.dtype == torch.uint8
    assert torch.equal(subject["label"].data[0], torch.from_numpy(expected.astype(np.uint8)))
    assert subject["image"].data.dtype == torch.float32 and subject["task"] == "breast"


def test_label_mapping_is_applied_when_files_are_read(tmp_path):
    # stored IDs 0, 7, 9 -> background, pectoral muscle, background
    nifti_folder(tmp_path, n_cases=2, n_classes=3, label_values=[0, 7, 9])
    cfg = folder_cfg(tmp_path, label_map={"classes": {"pectoral_muscle": [7]}, "background": [0, 9]}, split={"test": ["case1"]})
    splits = task_subjects("breast", cfg, "unused")
    label = splits["train"][0]["label"].data[0].numpy()
    stored = np.asarray(nib.load(str(tmp_path / "labels" / "case0.nii.gz")).dataobj)
    assert np.array_equal(label, (stored == 7).astype(np.uint8))
    summary = check_subjects(splits, "breast")
    assert summary.cases[0].class_voxels == (int((stored != 7).sum()), int((stored == 7).sum()))


def test_splits_default_rule_lists_and_file(tmp_path):
    nifti_folder(tmp_path, n_cases=10, suffix=".nii")
    default = case_ids(task_subjects("cta", folder_cfg(tmp_path), "unused"))
    assert len(default["test"]) == 2 and len(default["train"]) == 8  # 20 % held out
    assert default == case_ids(task_subjects("cta", folder_cfg(tmp_path), "unused"))  # seeded
    other_seed = case_ids(task_subjects("cta", folder_cfg(tmp_path, split={"seed": 1}), "unused"))
    assert other_seed["test"] != default["test"]
    listed = case_ids(task_subjects("cta", folder_cfg(tmp_path, split={"test": ["case3", "case5"]}), "unused"))
    assert listed["test"] == ["case3", "case5"] and len(listed["train"]) == 8
    only_train = case_ids(task_subjects("cta", folder_cfg(tmp_path, split={"train": ["case0"]}), "unused"))
    assert only_train["train"] == ["case0"] and len(only_train["test"]) == 9
    (tmp_path / "split.json").write_text(json.dumps({"train": ["case1", "case2"], "test": ["case4"]}))
    from_file = case_ids(task_subjects("cta", folder_cfg(tmp_path, split={"file": "split.json"}), "unused"))
    assert from_file == {"train": ["case1", "case2"], "test": ["case4"]}


def test_csv_source_with_split_column(tmp_path):
    nifti_folder(tmp_path, n_cases=3)
    rows = ["image,label,split"] + [f"images/case{i}.nii.gz,labels/case{i}.nii.gz,{'test' if i == 2 else 'train'}" for i in range(3)]
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    splits = case_ids(task_subjects("breast", folder_cfg(tmp_path, csv="cases.csv"), "unused"))
    assert splits == {"train": ["case0", "case1"], "test": ["case2"]}


def test_train_and_test_folders_are_the_layouts_split(tmp_path):
    for split, offset in (("training", 0), ("testing", 10)):
        for i in range(2):
            image, label = volumes(offset + i, 7)
            save(tmp_path / f"{split}-images" / f"{1000 + offset + i}_3.nii", image)
            save(tmp_path / f"{split}-labels" / f"{1000 + offset + i}_3_glm.nii", label)
    cfg = folder_cfg(
        tmp_path,
        images={"train": "training-images", "test": "testing-images"},
        labels={"train": "training-labels", "test": "testing-labels"},
        label_suffix="_glm",
    )
    assert case_ids(task_subjects("brain", cfg, "unused")) == {"train": ["1000_3", "1001_3"], "test": ["1010_3", "1011_3"]}


def test_orientation_and_anisotropic_spacing_are_handled_by_preprocessing(tmp_path):
    nifti_folder(tmp_path, n_cases=2, affine=LPS_ANISOTROPIC)
    subject = task_subjects("breast", folder_cfg(tmp_path), "unused")["train"][0]
    assert subject["image"].orientation == ("L", "P", "S")
    stored = subject["label"].data[0].clone()
    out = build_preprocessing(0.8, 0.0, [])(subject)
    assert out["image"].orientation == ("R", "A", "S")
    np.testing.assert_allclose(out["image"].spacing, (0.8, 0.8, 0.8))
    assert out["image"].shape[1:] == (SHAPE[0], SHAPE[1], 2 * SHAPE[2])
    # x and y flipped, z doubled: voxel (i, j, k) of the file is voxel (X-1-i, Y-1-j, ~2k) now
    i, j, k = 3, 4, 5
    assert out["label"].data[0, SHAPE[0] - 1 - i, SHAPE[1] - 1 - j, 2 * k] == stored[i, j, k]
    assert out["label"].data.dtype == torch.uint8
    assert set(torch.unique(out["label"].data).tolist()) <= {0, 1}


def test_inplane_spacing_rule_resamples_to_each_images_finest_spacing(tmp_path):
    nifti_folder(tmp_path, n_cases=2, affine=LPS_ANISOTROPIC)
    subject = task_subjects("breast", folder_cfg(tmp_path), "unused")["train"][0]
    out = build_preprocessing("inplane", 0.0, [])(subject)
    np.testing.assert_allclose(out["image"].spacing, (0.8, 0.8, 0.8))
    with pytest.raises(ValueError, match="'inplane'"):
        build_preprocessing("coarse", 0.0, [])


def bad(tmp_path, task="breast", **extra):
    splits = task_subjects(task, folder_cfg(tmp_path, **extra), "unused")
    check_subjects(splits, task)


def test_bad_input_is_named(tmp_path):
    root = nifti_folder(tmp_path / "d", n_cases=3)
    with pytest.raises(ValueError, match="root is not set"):
        task_subjects("breast", folder_cfg("???"), "unused")
    with pytest.raises(ValueError, match="data set folder not found"):
        bad(tmp_path / "missing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(ValueError, match=r"empty.images: the images folder holds no NIfTI files"):
        bad(tmp_path / "empty")
    (root / "labels" / "case1.nii.gz").rename(tmp_path / "aside.nii.gz")
    with pytest.raises(ValueError, match=r"case1\.nii\.gz: no label file case1"):
        bad(root)
    (tmp_path / "aside.nii.gz").rename(root / "labels" / "case9.nii.gz")
    with pytest.raises(ValueError, match=r"case9\.nii\.gz: label file without an image"):
        bad(root)
    (root / "labels" / "case9.nii.gz").rename(root / "labels" / "case1.nii.gz")
    with pytest.raises(ValueError, match=r"case ID\(s\) \['case7'\] in split.train / split.test do not exist"):
        bad(root, split={"test": ["case7"]})
    with pytest.raises(ValueError, match=r"\['case0'\] are in both"):
        bad(root, split={"test": ["case0"], "train": ["case0", "case1"]})
    (root / "images" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes.txt: not a NIfTI file"):
        bad(root)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("shape", r"label and image .*case0.nii.gz differ in shape or geometry: shape"),
        ("affine", r"label and image .*case0.nii.gz differ in shape or geometry: affines differ"),
        ("values", r"labels.case0.nii.gz: label values \[5\] are outside the label mapping"),
        ("float_values", r"labels.case0.nii.gz: label map holds non-integer values"),
        ("2d", r"images.case0.nii.gz: expected a 3-D image, got 2-D data of shape \(12, 10\)"),
        ("4d", r"images.case0.nii.gz: expected a 3-D image, got 4-D data of shape \(12, 10, 8, 2\)"),
        ("nan", r"images.case0.nii.gz: 1 voxel\(s\) with NaN or infinite intensity"),
        ("inf", r"images.case0.nii.gz: 1 voxel\(s\) with NaN or infinite intensity"),
    ],
)
def test_bad_files_fail_the_check_naming_the_file(tmp_path, problem, message):
    root = nifti_folder(tmp_path, n_cases=3)
    image, label = volumes(0, 2)
    image_path, label_path = root / "images" / "case0.nii.gz", root / "labels" / "case0.nii.gz"
    if problem == "shape":
        save(label_path, label[:, :, :-1].astype(np.uint8))
    elif problem == "affine":
        save(label_path, label.astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    elif problem == "values":
        label[2, 2, 2] = 5
        save(label_path, label.astype(np.uint8))
    elif problem == "float_values":
        save(label_path, label.astype(np.float32) + 0.5)
    elif problem == "2d":
        save(image_path, image[:, :, 0])
    elif problem == "4d":
        save(image_path, np.stack([image, image], axis=-1))
    else:
        image[3, 3, 3] = np.nan if problem == "nan" else np.inf
        save(image_path, image)
    with pytest.raises(ValueError, match=message):
        bad(root, split={"test": ["case2"]})


@pytest.mark.parametrize(
    "task, choice, spacing",
    [("brain", "templates", 1.0), ("brain", "miccai2012", 1.0), ("brain", "nifti_folder", 1.0), ("brain", "nnunet", 1.0),
     ("breast", "nifti_folder", "inplane"), ("breast", "nnunet", "inplane"), ("cta", "nifti_folder", 0.45), ("cta", "nnunet", 0.45)],
)
def test_data_source_configs_compose_with_the_papers_resampling(task, choice, spacing):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={task}", f"data/{task}={choice}", f"data.{task}.root=/x"])
    data = cfg.data[task]
    assert data.source in ("nifti_folder", "nnunet")
    assert data.preprocessing.spacing == spacing
    assert data.split.test_fraction == 0.2 and data.split.seed == 0
    assert data.preprocessing.threshold == (-1024.0 if task == "cta" else 0.0)
    assert data.augmentation.copies == (4 if choice == "templates" else 0)
    assert cfg.data.breast.source == "phantoms" or task == "breast"  # other tasks keep the phantoms


def test_phantoms_stay_the_default_without_augmentation():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=brain_breast_cta"])
    for task in ("brain", "breast", "cta"):
        assert cfg.data[task].source == "phantoms"
        assert cfg.data[task].augmentation.copies == 0
