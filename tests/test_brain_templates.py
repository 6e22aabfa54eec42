"""The brain template builder, from tiny fake wheels (no network): mapping, resampling, nnU-Net output, caching."""

import gzip
import json
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pytest

from mtseg.data.brain_templates import build_brain_templates, load_build_config
from mtseg.data.check import check_dataset
from mtseg.data.sources import task_subjects
from test_label_mapping import expected_miccai2012

CFG = load_build_config()
ATLAS_AFFINE = np.array([[-2.0, 0, 0, 18], [0, 2.0, 0, -10], [0, 0, 2.0, -8], [0, 0, 0, 1]])  # LAS, 2 mm
# two T1 grids, placed so that no voxel centre falls half-way between atlas voxels
T1_AFFINES = {
    "deepmriprep_t1_05mm": np.array([[1.0, 0, 0, 0.3], [0, 1.0, 0, 0.3], [0, 0, 1.0, 0.3], [0, 0, 0, 1]]),  # RAS, 1 mm
    "mni152_2009a_t1_1mm": np.array([[-2.0, 0, 0, 20.6], [0, -2.0, 0, 13.4], [0, 0, 2.0, -7.4], [0, 0, 0, 1]]),  # LPS, 2 mm
}
T1_SHAPES = {"deepmriprep_t1_05mm": (16, 18, 14), "mni152_2009a_t1_1mm": (9, 10, 8)}
IDS = np.array([0, 44, 45, 100, 207, 47, 31, 23, 59, 4, 51, 38, 71, 35, 46, 61, 69])


def nifti_bytes(data, affine):
    return gzip.compress(nib.Nifti1Image(data, affine).to_bytes())


def atlas_data():
    return np.resize(IDS, (10, 12, 10)).astype(np.uint8)


def t1_data(case_id, seed):
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.1, 1.0, size=T1_SHAPES[case_id]).astype(np.float64)
    data[0] = 0.0  # outside the brain, as in skull-stripped templates
    return data


def fake_wheels(folder, drop=None, only=None):
    """Wheels of the pinned versions holding only the members the builder reads."""
    members = {(CFG["atlas"]["package"], CFG["atlas"]["member"]): atlas_data()}
    for seed, entry in enumerate(CFG["images"]):
        members[(entry["package"], entry["member"])] = t1_data(entry["case_id"], seed)
    folder.mkdir(parents=True, exist_ok=True)
    for package, version in CFG["packages"].items():
        if only is not None and package != only:
            continue
        with zipfile.ZipFile(folder / f"{package}-{version}-py3-none-any.whl", "w") as wheel:
            for (owner, member), data in members.items():
                if owner == package and member != drop:
                    affine = ATLAS_AFFINE if data.dtype == np.uint8 else T1_AFFINES[next(e["case_id"] for e in CFG["images"] if e["member"] == member)]
                    wheel.writestr(member, nifti_bytes(data, affine))
            for entry in CFG["licences"]:
                if entry["package"] == package:
                    wheel.writestr(entry["member"], f"licence of {package}")
    return folder


def expected_labels(case_id, seed):
    """Nearest atlas voxel of every T1 voxel centre, mapped with MICCAI 2012, 0 outside the atlas and the brain."""
    shape, affine = T1_SHAPES[case_id], T1_AFFINES[case_id]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    atlas_ijk = np.rint((world - ATLAS_AFFINE[:3, 3]) @ np.linalg.inv(ATLAS_AFFINE[:3, :3]).T).astype(int)
    inside = np.all((atlas_ijk >= 0) & (atlas_ijk < (10, 12, 10)), axis=1)
    ids = np.zeros(len(ijk), dtype=int)
    ids[inside] = atlas_data()[tuple(atlas_ijk[inside].T)]
    labels = expected_miccai2012(ids).reshape(shape)
    labels[t1_data(case_id, seed) <= 0] = 0
    return labels


def test_builds_an_nnunet_data_set_with_six_class_labels_on_each_t1(tmp_path, capsys):
    wheels = fake_wheels(tmp_path / "wheels")
    out = build_brain_templates(tmp_path / "data", wheels=wheels)
    assert out == tmp_path / "data" / "nnunet_raw" / CFG["dataset"]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {
        "background": 0, "white_matter": 1, "cortical_grey_matter": 2, "basal_ganglia_and_thalami": 3,
        "ventricular_csf": 4, "cerebellum": 5, "brain_stem": 6,
    }
    assert dataset["numTraining"] == 1 and "not manual segmentations" in dataset["description"]
    assert (out / "licences" / "nilearn" / "LICENSE").read_text() == "licence of nilearn"
    # read back through the nnU-Net source, as data/brain=templates does
    splits = task_subjects("brain", {"source": "nnunet", "root": str(out), "label_map": None, "split": None}, "unused")
    assert [s["case_id"] for s in splits["train"]] == ["deepmriprep_t1_05mm"]
    assert [s["case_id"] for s in splits["test"]] == ["mni152_2009a_t1_1mm"]
    for seed, entry in enumerate(CFG["images"]):
        subject = next(s for split in splits.values() for s in split if s["case_id"] == entry["case_id"])
        np.testing.assert_allclose(subject["image"].affine, T1_AFFINES[entry["case_id"]])
        np.testing.assert_allclose(subject["image"].data[0].numpy(), t1_data(entry["case_id"], seed), rtol=1e-6)
        np.testing.assert_array_equal(subject["label"].data[0].numpy(), expected_labels(entry["case_id"], seed))
    assert len({c for s in splits["train"] for c in np.unique(s["label"].data.numpy())}) == 7  # every class present
    assert check_dataset(out, task="brain").split_sizes() == {"train": 1, "test": 1}


def test_the_build_is_cached_and_never_half_written(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    cache = fake_wheels(data / "cache" / "wheels")  # wheels already fetched: pip is not run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the wheels are cached"))
    out = build_brain_templates(data)
    written = (out / "dataset.json").stat().st_mtime_ns
    build_brain_templates(data)
    assert "up to date" in capsys.readouterr().out
    assert (out / "dataset.json").stat().st_mtime_ns == written
    build_brain_templates(data, force=True)
    assert (out / "dataset.json").stat().st_mtime_ns != written
    # a wheel without a needed file fails before anything is replaced
    fake_wheels(cache, drop=CFG["images"][1]["member"])
    with pytest.raises(ValueError, match=r"nilearn-0.14.1-py3-none-any.whl: has no file nilearn/datasets/data/mni_icbm152"):
        build_brain_templates(data)
    assert sorted(p.name for p in out.parent.iterdir()) == [CFG["dataset"]]


def test_wheels_are_fetched_with_pip_download_no_deps(tmp_path, monkeypatch):
    commands = []

    def fake_pip(command, **kwargs):
        commands.append(command)
        fake_wheels(tmp_path / "data" / "cache" / "wheels", only=command[-1].split("==")[0])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    build_brain_templates(tmp_path / "data")
    assert [c[c.index("download") + 1] for c in commands] == ["--no-deps"] * 2
    assert {c[-1] for c in commands} == {f"{p}=={v}" for p, v in CFG["packages"].items()}

    monkeypatch.setattr(subprocess, "run", lambda command, **k: subprocess.CompletedProcess(command, 1, "", "no network"))
    with pytest.raises(OSError, match=r"pip download of deepmriprep==0.3.0 failed .*--wheels DIR"):
        build_brain_templates(tmp_path / "other")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"no wheel of deepmriprep==0.3.0"):
        build_brain_templates(tmp_path / "other", wheels=tmp_path / "empty_dir")
    assert not (tmp_path / "other").exists()  # a failed build leaves nothing
