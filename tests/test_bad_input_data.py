"""Bad input to `python -m mtseg.data check` and `convert-labels`: one line naming the file and the
problem, exit status 1, no traceback, and nothing written or changed."""

import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mtseg.data.__main__ import main
from niftidata import nifti_folder, nnunet_folder, save, volumes
from test_nnunet import edit

CONVERT = ["convert-labels", "--scheme", "miccai2012"]


def tree(root: Path) -> dict:
    """Every path under ``root`` (hidden ones included) with the hash of its content."""
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in root.rglob("*")}


def run_bad(argv: list[str], root: Path, capsys) -> str:
    """Run ``argv``; assert status 1, one error message and no change under ``root``; return stderr."""
    before = tree(root)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtseg.data: error: ") and "Traceback" not in err
    assert tree(root) == before
    return err


def labels_file(path: Path) -> Path:
    """A MICCAI 2012 label file (white matter and cortex IDs)."""
    return save(path, volumes(0, 3, label_values=[0, 44, 100])[1].astype(np.int16))


def rgb_file(path: Path) -> Path:
    """An RGB NIfTI (a structured voxel type)."""
    rgb = np.zeros((6, 6, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return save(path, rgb)


def truncated_file(path: Path) -> Path:
    """A label file cut to half its length."""
    labels_file(path)
    path.write_bytes(path.read_bytes()[:1000])
    return path


def nnunet(root: Path) -> Path:
    """A valid nnU-Net raw data set of two training cases."""
    return nnunet_folder(root / "Dataset001_Bad", n_train=2, n_test=0)


def set_voxel(path: Path, value) -> None:
    """Rewrite the label file ``path`` (as int16, or float32 for a float ``value``) with one voxel set to ``value``."""
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj).astype(np.float32 if isinstance(value, float) else np.int16)
    data[2, 2, 2] = value
    save(path, data, image.affine)


def drop(root: Path, key: str) -> None:
    """Remove ``key`` from ``root/dataset.json``."""
    content = json.loads((root / "dataset.json").read_text())
    del content[key]
    (root / "dataset.json").write_text(json.dumps(content))


def text_file(path: Path, text="not an image") -> Path:
    """A text file at ``path`` (whatever its name says)."""
    path.write_text(text)
    return path


def convert_case(make_input, output="out.nii.gz"):
    def setup(root):
        source = make_input(root / "in.nii.gz")
        return [*CONVERT, str(source), str(root / output)]
    return setup


def check_case(make, *options):
    def setup(root):
        return ["check", str(make(root)), *options]
    return setup


def broken_nnunet(change):
    def make(root):
        folder = nnunet(root)
        change(folder)
        return folder
    return make


def folder_with_label(value, **kwargs):
    def make(root):
        folder = nifti_folder(root / "d", n_cases=2, **kwargs)
        set_voxel(folder / "labels" / "case0.nii.gz", value)
        return folder
    return make


def empty_nnunet(root: Path) -> None:
    for path in (*(root / "imagesTr").iterdir(), *(root / "labelsTr").iterdir()):
        path.unlink()
    edit(root, numTraining=0)


def gzipped_csv(root: Path) -> Path:
    (root / "d.csv").write_bytes(gzip.compress(b"image,label\n"))
    return root / "d.csv"


BAD_INPUTS = [
    # convert-labels
    ("rgb", convert_case(rgb_file), "in.nii.gz: voxels of type [('R', 'u1'), ('G', 'u1'), ('B', 'u1')] (e.g. RGB or complex)"),
    ("truncated .nii", convert_case(lambda p: truncated_file(p.with_suffix(""))), "in.nii: truncated: its header declares 960 voxels"),
    ("text named .nii.gz", convert_case(text_file), "in.nii.gz: cannot be read as NIfTI"),
    ("missing input", convert_case(lambda p: p), "in.nii.gz: no such label file"),
    ("output not NIfTI", convert_case(labels_file, "out.txt"), "out.txt: the name must end in .nii or .nii.gz"),
    ("label outside scheme (convert)", convert_case(lambda p: save(p, np.full((6, 6, 6), 250, np.int16))),
     "in.nii.gz: label values [250] are outside the label mapping (miccai2012)"),
    # check: dataset.json
    ("json invalid", check_case(broken_nnunet(lambda r: (r / "dataset.json").write_text('{"labels": '))), "dataset.json: not valid JSON"),
    ("json binary", check_case(broken_nnunet(lambda r: (r / "dataset.json").write_bytes(b"\x1f\x8b\xff"))), "dataset.json: not valid JSON"),
    ("json not an object", check_case(broken_nnunet(lambda r: (r / "dataset.json").write_text("[1, 2]"))), "dataset.json: must hold a JSON object, got list"),
    ("labels a list", check_case(broken_nnunet(lambda r: edit(r, labels=["background", "class1"]))), "dataset.json: labels must map label names to values"),
    ("label value float", check_case(broken_nnunet(lambda r: edit(r, labels={"background": 0, "class1": 1.5}))), "dataset.json: label 'class1' has value 1.5"),
    ("label value null", check_case(broken_nnunet(lambda r: edit(r, labels={"background": 0, "class1": None}))), "dataset.json: label 'class1' has value None"),
    ("label regions", check_case(broken_nnunet(lambda r: edit(r, labels={"background": 0, "tumour": [1, 2]}))), "dataset.json: label 'tumour' is a region ([1, 2]); region-based labels are not supported"),
    ("channel_names missing", check_case(broken_nnunet(lambda r: drop(r, "channel_names"))), "dataset.json: missing key(s) ['channel_names']"),
    ("channel_names a list", check_case(broken_nnunet(lambda r: edit(r, channel_names=["T1"]))), "dataset.json: channel_names must map channel indices to names"),
    ("numTraining a string", check_case(broken_nnunet(lambda r: edit(r, numTraining="2"))), "dataset.json: numTraining must be the number of training cases, got '2'"),
    ("numTraining wrong", check_case(broken_nnunet(lambda r: edit(r, numTraining=3))), "dataset.json: numTraining is 3 but imagesTr holds 2 case(s)"),
    ("file_ending", check_case(broken_nnunet(lambda r: edit(r, file_ending=".mha"))), "dataset.json: file_ending '.mha' is not supported"),
    ("channel not declared", check_case(nnunet, "--channel", "1"), "channel 1 requested, but"),
    # check: layout
    ("non-NIfTI in imagesTr", check_case(broken_nnunet(lambda r: text_file(r / "imagesTr" / "notes.txt"))), "imagesTr/notes.txt: not named <case>_<channel as 4 digits>.nii.gz"),
    ("folder in imagesTr", check_case(broken_nnunet(lambda r: (r / "imagesTr" / "case_009_0000.nii.gz").mkdir())), "case_009_0000.nii.gz: not a file"),
    ("label missing", check_case(broken_nnunet(lambda r: (r / "labelsTr" / "case_001.nii.gz").unlink())), "case_001_0000.nii.gz: no label case_001.nii.gz in"),
    ("empty imagesTr", check_case(broken_nnunet(empty_nnunet)), "imagesTr: the folder is empty"),
    ("empty images folder", check_case(lambda r: (r / "d" / "images").mkdir(parents=True) or r / "d"), "images: the images folder holds no NIfTI files"),
    ("split file missing", check_case(lambda r: nifti_folder(r / "d", n_cases=2), "--split-file", "split.json"), "split.json: split file not found"),
    ("CSV not text", check_case(gzipped_csv), "d.csv: not a readable CSV file"),
    ("--images malformed", check_case(lambda r: nifti_folder(r / "d", n_cases=2), "--images", "train=a,b"), "--images/--labels: expected NAME or train=NAME,test=NAME"),
    # check: content
    ("text image named .nii.gz", check_case(broken_nnunet(lambda r: text_file(r / "imagesTr" / "case_001_0000.nii.gz"))), "case_001_0000.nii.gz: cannot be read as NIfTI"),
    ("rgb image", check_case(broken_nnunet(lambda r: rgb_file(r / "imagesTr" / "case_001_0000.nii.gz"))), "case_001_0000.nii.gz: voxels of type"),
    ("label on another grid", check_case(broken_nnunet(lambda r: save(r / "labelsTr" / "case_000.nii.gz", np.zeros((6, 6, 6), np.uint8)))),
     "labelsTr/case_000.nii.gz: label and image"),
    ("label undeclared", check_case(broken_nnunet(lambda r: set_voxel(r / "labelsTr" / "case_000.nii.gz", 7))),
     "case_000.nii.gz: label values [7] are outside the label mapping"),
    ("label outside scheme", check_case(folder_with_label(250, n_classes=3, label_values=[0, 44, 100]), "--scheme", "miccai2012"),
     "labels/case0.nii.gz: label values [250] are outside the label mapping (miccai2012)"),
    ("label value 2**31", check_case(folder_with_label(2.0**31)),
     "case0.nii.gz: label values [2147483648.0] are outside 0..65535"),
]


@pytest.mark.parametrize("setup, message", [pytest.param(s, m, id=i) for i, s, m in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, setup, message):
    argv = setup(tmp_path)
    assert message in run_bad(argv, tmp_path, capsys)


def test_split_file_that_is_not_json(tmp_path, capsys):
    root = nifti_folder(tmp_path / "d", n_cases=2)
    (root / "split.json").write_text('{"train": ["case0"],')
    err = run_bad(["check", str(root), "--split-file", "split.json"], tmp_path, capsys)
    assert "split.json: not valid JSON" in err


@pytest.mark.parametrize("link", ["same path", "symlink", "hard link"])
def test_convert_never_writes_over_its_input(tmp_path, capsys, link):
    source = labels_file(tmp_path / "in.nii.gz")
    output = tmp_path / "out.nii.gz"
    if link == "same path":
        output = tmp_path / "sub" / ".." / "in.nii.gz"
        (tmp_path / "sub").mkdir()
    elif link == "symlink":
        output.symlink_to(source)
    else:
        os.link(source, output)
    for overwrite in ([], ["--overwrite"]):
        err = run_bad([*CONVERT, str(source), str(output), *overwrite], tmp_path, capsys)
        assert f"output {output} would replace the input label file {source}" in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    source = labels_file(tmp_path / "in.nii.gz")
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"old")
    err = run_bad([*CONVERT, str(source), str(output)], tmp_path, capsys)
    assert f"output {output} exists; pass --overwrite to replace it" in err
    assert main([*CONVERT, str(source), str(output), "--overwrite"]) == 0
    written = np.asarray(nib.load(str(output)).dataobj)
    np.testing.assert_array_equal(written, volumes(0, 3)[1])  # 0, 44, 100 -> background, white matter, cortex
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]


@pytest.mark.parametrize("failure", ["full disk", "SIGTERM", "Ctrl+C"])
def test_a_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch, failure):
    source = labels_file(tmp_path / "in.nii.gz")
    output = tmp_path / "new" / "folder" / "out.nii.gz"
    before = tree(tmp_path)

    def failing_save(image, filename):
        Path(filename).write_bytes(b"\0" * 100)  # partly written
        if failure == "full disk":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        if failure == "Ctrl+C":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(nib, "save", failing_save)
    status = main([*CONVERT, str(source), str(output)])
    err = capsys.readouterr().err
    assert status == {"full disk": 1, "SIGTERM": 143, "Ctrl+C": 130}[failure]
    if failure == "full disk":
        assert f"mtseg.data: error: {output}: cannot be written (No space left on device)" in err
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # no temporary file, no created folder


def huge_header_file(path: Path) -> Path:
    """A ~4 KB .nii.gz whose header declares a 2000^3 uint8 volume."""
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * (352 - 348 + (4 << 20)), compresslevel=9))
    return path


def test_huge_declared_volume_is_refused_unread(tmp_path):
    source = huge_header_file(tmp_path / "in.nii.gz")
    assert source.stat().st_size < 8192
    child = (
        "import resource, sys\n"
        "from mtseg.data.__main__ import main\n"
        "status = main(sys.argv[1:])\n"
        "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # KiB on Linux
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", child, *CONVERT, str(source), str(tmp_path / "out.nii.gz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "in.nii.gz: its header declares a 2000x2000x2000 image that would hold 8,000,000,000 voxels" in result.stderr
    assert int(result.stdout.split("peak")[1]) < 1 << 20  # below 1 GiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_unusual_but_well_formed_dataset_json_is_read(tmp_path, capsys):
    root = nnunet_folder(tmp_path / "Dataset002_Two", n_train=2, n_test=1, channels=2)
    edit(root, description="two channels", reference="x", overwrite_image_reader_writer="NibabelIOWithReorient")
    assert main(["check", str(root), "--channel", "1"]) == 0
    assert "3 image(s) (2 train, 1 test)" in capsys.readouterr().out
