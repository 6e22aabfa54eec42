"""`python -m mtseg.data check` and the same checks at the start of training."""

import nibabel as nib
import numpy as np
import pytest

import mtseg.data.datamodule as datamodule_module
from mtseg.data.__main__ import main
from mtseg.data.check import check_dataset
from mtseg.data.datamodule import MultiTaskDataModule
from mtseg.training.patches import PatchTraining
from niftidata import LPS_ANISOTROPIC, nifti_folder, nnunet_folder, save, volumes


def test_check_summarises_a_nifti_folder(tmp_path, capsys):
    root = nifti_folder(tmp_path, n_cases=5, affine=LPS_ANISOTROPIC)
    assert main(["check", str(root), "--task", "breast"]) == 0
    out = capsys.readouterr().out
    assert "NIfTI folder" in out and "5 image(s) (4 train, 1 test)" in out
    assert "12x10x8" in out and "0.8x0.8x1.6" in out and "LPS" in out
    labels = [volumes(i, 2)[1] for i in range(5)]
    images = [volumes(i, 2)[0] for i in range(5)]
    muscle = sum(int((lab == 1).sum()) for lab in labels)
    assert f"pectoral_muscle {muscle:,d} (5 image(s))" in " ".join(out.split())
    summary = check_dataset(root, task="breast")
    case = next(c for c in summary.cases if c.case_id == "case0")
    assert case.intensity_range == (0.0, pytest.approx(float(images[0].max())))
    assert case.class_voxels == (int((labels[0] == 0).sum()), int((labels[0] == 1).sum()))
    assert case.orientation == "LPS" and case.spacing == pytest.approx((0.8, 0.8, 1.6))
    assert "OK: 5 image(s) checked" in out


def test_check_with_a_scheme_counts_classes_after_mapping(tmp_path):
    ids = [0, 44, 45, 100, 35, 46]  # background, WM, WM, cortex, brain stem, CSF (background)
    root = nifti_folder(tmp_path, n_cases=2, n_classes=6, label_values=ids)
    summary = check_dataset(root, scheme="miccai2012")
    stored = volumes(0, 6, label_values=ids)[1]
    counts = summary.cases[[c.case_id for c in summary.cases].index("case0")].class_voxels
    assert counts[1] == int(np.isin(stored, [44, 45]).sum())
    assert counts[2] == int((stored == 100).sum()) and counts[6] == int((stored == 35).sum())
    assert counts[0] == int(np.isin(stored, [0, 46]).sum())
    assert summary.class_names[1] == "white_matter"


def test_check_of_an_nnunet_folder_and_its_errors(tmp_path, capsys):
    root = nnunet_folder(tmp_path / "Dataset010_Toy", n_train=2, n_test=1, n_classes=3)
    assert main(["check", str(root)]) == 0  # no task: the labels declared in dataset.json
    out = capsys.readouterr().out
    assert "nnU-Net raw data set" in out and "3 image(s) (2 train, 1 test)" in out and "class2" in out
    assert main(["check", str(root), "--task", "cta"]) == 1  # label 2 is not a CTA class
    assert "case_000.nii.gz: label values [2] are outside" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such folder or file" in capsys.readouterr().err


def data_module(sources, batch_size=4):
    return MultiTaskDataModule(
        tasks=list(sources), root="unused", depth=2, pad_value=0.0, seed=0, **sources,
        training=PatchTraining(batch_size, queue={"max_length": 40, "samples_per_volume": 20, "block": 5}),
    )


def source(root, **extra):
    return {
        "source": "nifti_folder", "root": str(root), "label_map": None, "split": {"test": ["case2"]},
        "preprocessing": {"spacing": 1.0, "threshold": 0.0, "intensity": []}, **extra,
    }


def test_training_checks_every_task_before_any_preprocessing(tmp_path, monkeypatch):
    nifti_folder(tmp_path / "breast", n_cases=3)
    nifti_folder(tmp_path / "cta", n_cases=3)
    image, _ = volumes(2, 2)
    image[4, 4, 4] = np.nan
    save(tmp_path / "cta" / "images" / "case2.nii.gz", image)  # the last image of the last task
    prepared = []
    monkeypatch.setattr(datamodule_module, "prepare_subject", lambda *args: prepared.append(args))
    dm = data_module({"breast": source(tmp_path / "breast"), "cta": source(tmp_path / "cta")})
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"cta.images.case2.nii.gz: 1 voxel\(s\) with NaN"):
        dm.setup("fit")
    assert prepared == []  # nothing was preprocessed


def test_training_on_a_folder_source_sets_up_with_mapped_labels(tmp_path, caplog):
    nifti_folder(tmp_path, n_cases=3, n_classes=2, label_values=[0, 5], affine=LPS_ANISOTROPIC)
    dm = data_module({"breast": source(tmp_path, label_map={"classes": {"pectoral_muscle": [5]}, "background": [0]})})
    with caplog.at_level("INFO", logger="mtseg.data.datamodule"):
        dm.setup("fit")
    assert "3 image(s) (2 train, 1 test)" in caplog.text
    train = dm.subjects["breast"]["train"]
    assert [s["case_id"] for s in train] == ["case0", "case1"]
    assert train[0]["image"].orientation == ("R", "A", "S") and train[0]["image"].shape[1:] == (9, 8, 12)  # 0.8 x 0.8 x 1.6 mm resampled to 1 mm by tio.Resample
    assert set(np.unique(train[0]["label"].data.numpy())) == {0, 1}
    batch = dm.gather(next(iter(dm.train_batches(1))))
    assert batch["planes"].shape == (4, 3, 5, 5) and set(batch["target"].tolist()) <= {0, 1}


def test_no_half_written_output_when_the_check_fails(tmp_path):
    root = nifti_folder(tmp_path / "d", n_cases=2)
    nib.save(nib.Nifti1Image(np.zeros((3, 3), np.float32), np.eye(4)), str(root / "images" / "case1.nii.gz"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"case1.nii.gz: expected a 3-D image"):
        check_dataset(root, task="breast")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_check_of_the_miccai2012_layout_from_the_command_line(tmp_path, capsys):
    ids = [0, 44, 100, 35, 4, 38, 23]
    for split, offset in (("training", 0), ("testing", 10)):
        for i in range(2):
            image, label = volumes(offset + i, 7, label_values=ids)
            save(tmp_path / f"{split}-images" / f"{1000 + offset + i}_3.nii", image)
            save(tmp_path / f"{split}-labels" / f"{1000 + offset + i}_3_glm.nii", label.astype(np.int16))
    argv = ["check", str(tmp_path), "--scheme", "miccai2012", "--images", "train=training-images,test=testing-images",
            "--labels", "train=training-labels,test=testing-labels", "--label-suffix", "_glm"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 image(s) (2 train, 2 test)" in out and "labels: miccai2012" in out
    assert all(name in out for name in ("white_matter", "cortical_grey_matter", "brain_stem", "ventricular_csf"))
