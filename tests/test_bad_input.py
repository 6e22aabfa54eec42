"""Hostile and malformed input to predict, evaluate and figures, and checkpoints that try to act.

Every case checks what the user sees: exit status, a message naming the file or setting
and the problem, no traceback, no file left behind and every input unchanged.
"""

import hashlib
import os
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from checkpoints import write_checkpoint
from mtseg.predict import main
from test_predict import PECTORAL, oblique_anisotropic_image


def snapshot(folder):
    """Every file under ``folder`` (hidden ones included) with a hash of its content."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in folder.rglob("*")}


@pytest.fixture
def network(tmp_path):
    return write_checkpoint(tmp_path / "net.ckpt", ["brain", "breast"], bias={PECTORAL: 20.0}, thresholds={"breast": 0.5})


@pytest.fixture
def scan(tmp_path):
    return oblique_anisotropic_image(tmp_path / "scan.nii.gz")


def refused(tmp_path, capsys, *arguments, code=1):
    """Run predict; assert the exit status, no traceback, nothing added or changed; return stderr."""
    before = snapshot(tmp_path)
    assert main(list(map(str, arguments))) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "an input changed or something was left behind"
    return err


def save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def forged(path, pixdim=(1.0, 1.0, 1.0), srow_z=None, shape=(6, 6, 6)):
    """A .nii.gz written byte by byte, so its header can say what nibabel would not write."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["pixdim"][1:4] = pixdim
    if srow_z is not None:
        header.set_sform(np.eye(4), code=1)
        header["srow_z"] = srow_z
    header["vox_offset"] = 352
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + data.tobytes()))
    return path


# --- checkpoints that try to run code or create files ------------------------------------


def with_meta(path, edit):
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_stored_target_outside_the_allowlist_never_runs(tmp_path, network, scan, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("data that must survive")
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    with_meta(network, lambda c: c["hyper_parameters"]["preprocessing"]["brain"]["intensity"].append(opener))
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz")
    assert "names _target_ 'builtins.open'" in err and "intensity[1]" in err
    assert victim.read_text() == "data that must survive"


def test_an_interpolation_cannot_smuggle_a_target_past_the_allowlist(tmp_path, network, scan, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("data that must survive")
    smuggled = {"_target_": "torchio.Clamp", "out_min": "${oc.create:{_target_: builtins.open, _args_: [" + str(victim) + ", w]}}"}
    with_meta(network, lambda c: c["hyper_parameters"]["preprocessing"]["brain"]["intensity"].append(smuggled))
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz")
    assert "holds the interpolation '${oc.create:" in err
    assert victim.read_text() == "data that must survive"


def test_a_stored_data_config_cannot_create_files_in_evaluate(tmp_path, network):
    victim = tmp_path / "precious.txt"
    victim.write_text("data that must survive")
    with_meta(network, lambda c: c["mtseg"].__setitem__(
        "data", {"_target_": "mtseg.data.datamodule.MultiTaskDataModule", "root": {"_target_": "builtins.open", "_args_": [str(victim), "w"]}}))
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mtseg.evaluate", f"ckpt_path={network}", f"output_dir={tmp_path / 'evaluation'}"],
        env=os.environ | {"WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "names _target_ 'builtins.open'" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "data that must survive"
    assert snapshot(tmp_path) == before  # no evaluation folder left either


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.__setitem__("mtseg", {}), "entry lacks tasks, class_names, pad_value"),
        (lambda c: c.__setitem__("mtseg", [1, 2]), "entry is a list, not a mapping"),
        (lambda c: c["hyper_parameters"]["preprocessing"].pop("breast"), "lacks the preprocessing of a task"),
        (lambda c: c["mtseg"]["class_names"].__setitem__(1, "grey"), "tasks or classes are not this mtseg's"),
        (lambda c: c["state_dict"].pop("net.head.8.bias"), "weights do not fit the network"),
        (lambda c: c["hyper_parameters"]["model"].__setitem__("width", 16), "weights do not fit the network"),
        (lambda c: c.__setitem__("hyper_parameters", None), "stores no hyper_parameters"),
        (lambda c: c["mtseg"].__setitem__("negative_fraction_range", {"brain": [0.9, 0.1]}), "negative_fraction_range [0.9, 0.1] for task 'brain'"),
        (lambda c: c["mtseg"].__setitem__("negative_fraction_range", [0.0, 0.5]), "negative_fraction_range [0.0, 0.5], not a mapping"),
    ],
    ids=["empty-entry", "entry-not-a-mapping", "missing-preprocessing", "unknown-task", "missing-weight", "wrong-shape", "no-hparams",
         "reversed-negative-range", "negative-range-not-a-mapping"],
)
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, network, scan, capsys, edit, message):
    with_meta(network, edit)
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz")
    assert message in err and str(network) in err


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, network, scan, capsys):
    network.write_bytes(network.read_bytes()[: network.stat().st_size // 2])
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz")
    assert "is not a readable PyTorch checkpoint" in err


# --- outputs never replace inputs ------------------------------------------------------------


def test_predict_never_writes_over_its_input(tmp_path, network, scan, capsys):
    common = ("--checkpoint", network, "--input", scan)
    assert "would replace the input image" in refused(tmp_path, capsys, *common, "--output", scan, "--overwrite")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    assert "would replace the input image" in refused(tmp_path, capsys, *common, "--output", link, "--overwrite")
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    assert "would replace the input image" in refused(tmp_path, capsys, *common, "--output", hard, "--overwrite")
    # the input lies in the probability folder under a class's file name
    inside = tmp_path / "maps"
    inside.mkdir()
    victim = oblique_anisotropic_image(inside / "pectoral_muscle.nii.gz")
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", victim, "--output", tmp_path / "seg.nii.gz", "--probabilities", inside)
    assert "would replace the input image" in err


def test_existing_outputs_are_replaced_only_with_overwrite(tmp_path, network, scan, capsys):
    out = tmp_path / "seg.nii.gz"
    (tmp_path / "seg.json").write_text("{}")  # a sidecar of an earlier call
    assert "seg.json exists; pass --overwrite" in refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", out)
    assert main(["--checkpoint", str(network), "--input", str(scan), "--output", str(out), "--overwrite"]) == 0
    assert out.is_file() and (tmp_path / "seg.json").read_text() != "{}"


# --- hostile or odd geometry: memory bounded by the data ----------------------------------------


def test_a_tiny_file_declaring_a_huge_volume_is_refused_with_little_memory(tmp_path, network):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2000, 2000, 2000))
    bomb = tmp_path / "bomb.nii.gz"
    import gzip

    bomb.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(4096)))
    assert bomb.stat().st_size < 4096
    code = (
        "import resource, sys; from mtseg.predict import main; "
        f"status = main(['--checkpoint', {str(network)!r}, '--input', {str(bomb)!r}, '--output', {str(tmp_path / 'seg.nii.gz')!r}]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "more than max_voxels=" in result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: forged(p, pixdim=(1.0, 0.001, 1.0)), "voxel spacing [1.0, 0.001, 1.0] mm lies outside min_spacing_mm=0.01"),
        (lambda p: forged(p, pixdim=(1.0, float("nan"), 1.0)), "is not finite and positive"),
        (lambda p: forged(p, pixdim=(1.0, 1e6, 1.0)), "lies outside min_spacing_mm=0.01 .. max_spacing_mm=100"),
        (lambda p: forged(p, srow_z=(0.0, 0.0, 0.0, 0.0)), "its affine is not finite or not invertible"),
        (lambda p: p.write_bytes(
            (lambda raw: raw[: len(raw) - 100])(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)).to_bytes())), "truncated"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4)), p),
         "voxels of type"),
        (lambda p: nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.complex64), np.eye(4)), p), "voxels of type complex64"),
        (lambda p: save(p, np.full((6, 6, 6), 7.0, np.float32)), "all 216 voxels have intensity 7: no contrast"),
        (lambda p: save(p, -np.arange(216, dtype=np.float32).reshape(6, 6, 6)), "no voxel has an intensity above the threshold of any task"),
        (lambda p: save(p, np.ones((6, 1, 6), np.float32)), "needs at least 2 voxels per axis"),
    ],
    ids=["tiny-spacing", "nan-spacing", "absurd-spacing", "singular-affine", "truncated", "rgb", "complex", "no-contrast",
         "nothing-above-threshold", "flat-axis"],
)
def test_odd_images_are_refused_not_segmented(tmp_path, network, capsys, make, message):
    name = tmp_path / ("odd.nii" if "truncated" in message else "odd.nii.gz")
    make(name)
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", name, "--output", tmp_path / "seg.nii.gz")
    assert message in err and "odd.nii" in err


def test_a_working_grid_above_the_limit_is_refused(tmp_path, network, capsys):
    # 10^3 voxels of 5 mm: a 50 mm cube
    coarse = save(tmp_path / "coarse.nii.gz", np.random.default_rng(0).random((10, 10, 10)).astype(np.float32), np.diag([5.0, 5.0, 5.0, 1.0]))
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", coarse, "--output", tmp_path / "seg.nii.gz", "--max-voxels", "50000")
    # recognition reads it at the finest spacing the network was trained at for these tasks (1.3 mm)
    assert "resampled to 1.3 mm for task brain, the working grid would hold 59,319 voxels, more than max_voxels=50,000" in err


# --- signals and a full disk while writing ----------------------------------------------------


def test_sigterm_while_writing_probability_maps_leaves_nothing(tmp_path, network, scan, capsys, monkeypatch):
    import mtseg.inference.segmenter

    real, calls = mtseg.inference.segmenter.nifti_writer, []

    def writer_then_terminate(*args, **kwargs):
        write = real(*args, **kwargs)

        def write_and_count(path):
            write(path)
            calls.append(path)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or SLURM would send it

        return write_and_count

    monkeypatch.setattr(mtseg.inference.segmenter, "nifti_writer", writer_then_terminate)
    maps = tmp_path / "maps"
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz",
                  "--probabilities", maps, code=143)
    assert len(calls) == 2 and "stopped by SIGTERM; nothing written" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed afterwards


def test_an_interrupted_overwrite_keeps_the_earlier_outputs_whole(tmp_path, network, scan, capsys, monkeypatch):
    import errno

    out = tmp_path / "seg.nii.gz"
    assert main(["--checkpoint", str(network), "--input", str(scan), "--output", str(out), "--probabilities", str(tmp_path / "maps")]) == 0
    capsys.readouterr()

    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", out, "--probabilities", tmp_path / "maps",
                  "--overwrite")
    assert "No space left on device" in err  # and `refused` checked that every earlier output is unchanged


def test_a_full_disk_while_writing_leaves_nothing(tmp_path, network, scan, capsys, monkeypatch):
    import errno

    def full(image, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full)
    err = refused(tmp_path, capsys, "--checkpoint", network, "--input", scan, "--output", tmp_path / "seg.nii.gz")
    assert "No space left on device" in err


# --- figures ------------------------------------------------------------------------------------


def test_figures_on_malformed_runs_is_a_clear_error(tmp_path, capsys):
    from mtseg.figures import main as figures

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("experiment: brain\nseed: 0\n")
    (run / "summary.json").write_text("{not json")
    (run / "metrics.csv").write_text("step,task\n1,brain\n")
    before = snapshot(tmp_path)
    assert figures([str(run), "--out", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert "metrics.csv: lacks the column(s) minibatches_per_task, class, dice" in err and "Traceback" not in err
    (run / "metrics.csv").write_text("step,minibatches_per_task,task,class,dice\n1,1,brain,white_matter,0.5\n")
    assert figures([str(run), "--out", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert "summary.json: not valid JSON" in err and "Traceback" not in err
    assert snapshot(tmp_path) == {**before, run / "metrics.csv": snapshot(tmp_path)[run / "metrics.csv"]}
    assert figures([str(tmp_path / "nothing-here")]) == 1
    assert "nothing-here" in capsys.readouterr().err


def test_evaluate_refuses_an_output_folder_whose_predictions_would_replace_a_test_image(tmp_path, network):
    from types import SimpleNamespace

    from mtseg.checkpoint import load_checkpoint
    from mtseg.evaluate import check_evaluation_outputs

    out = tmp_path / "evaluation"
    images = out / "predictions" / "breast"
    images.mkdir(parents=True)
    second = images / "case_1.nii.gz"  # the second of two test images: every image is checked, not only the last
    second.write_bytes(b"a precious scan")

    def subject(case):
        return {"case_id": case, "image": SimpleNamespace(path=images / f"{case}.nii.gz"), "label": SimpleNamespace(path=None)}

    datamodule = SimpleNamespace(subjects={"brain": {"test": []}, "breast": {"test": [subject("case_1"), subject("case_2")]}})
    with pytest.raises(ValueError, match="would replace the breast test image case_1"):
        check_evaluation_outputs(out, load_checkpoint(network), datamodule, write_predictions=True)
    assert second.read_bytes() == b"a precious scan"
