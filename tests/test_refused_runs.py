"""Refused commands say why in one line, exit with 1 and leave no folder behind: training runs
refused for their settings, a refused multirun, and data builds from broken wheels."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mtseg import CONFIG_DIR
from mtseg.data.__main__ import main as data_main
from mtseg.training.run_folder import remove_refused_run
from mtseg.settings import TRAIN_RULES, check_moved_settings, check_settings, config_values
from test_bad_input import save
from test_brain_templates import fake_wheels


def train_refused(tmp_path, *overrides):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    result = subprocess.run([sys.executable, "-m", "mtseg.train", *overrides, "logger=none"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "full_key" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists(), sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    return result.stderr


def test_a_refused_training_run_leaves_no_run_folder(tmp_path):
    err = train_refused(tmp_path, "+experiment=brain", "optimizer.lr=abc")
    assert err.strip() == "mtseg.train: error: optimizer.lr='abc': expected a number > 0"


def test_a_refused_multirun_leaves_no_sweep_folder(tmp_path):
    err = train_refused(tmp_path, "-m", "+experiment=brain,breast", "trainer=ddp")
    assert "trainer=ddp in a local multirun" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=abc", "optimizer.lr='abc': expected a number > 0"),
        ("optimizer.lr=0", "optimizer.lr=0: expected a number > 0"),
        ("data.batch_size=12", "data.batch_size is now training.batch_size (the training mode owns it: conf/training); set training.batch_size instead"),
        ("training.cubes_per_task=-3", "training.cubes_per_task=-3: expected an integer >= 1"),
        ("data.val_images_per_task=0", "data.val_images_per_task=0: expected an integer >= 1 (or null)"),
        ("schedule.eval_every=0", "schedule.eval_every=0: expected an integer >= 1"),
        ("evaluation.slab_voxels=0", "evaluation.slab_voxels=0: expected an integer >= 1"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5]: expected two numbers, each in [0, 1)"),
        ("model.dropout=true", "model.dropout=True: expected a number in [0, 1)"),
    ],
)
def test_training_settings_are_refused_by_type_and_range(override, message):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["training=cubes", override])
    with pytest.raises(ValueError) as error:
        check_moved_settings(cfg)
        check_settings(config_values(cfg, TRAIN_RULES), TRAIN_RULES)
    assert str(error.value) == message


def test_only_a_folder_holding_nothing_but_hydras_files_is_removed(tmp_path):
    root = tmp_path / "outputs"
    run = root / "runs" / "brain" / "t1"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (root / "runs" / "brain" / "t0").mkdir()  # an earlier run
    assert remove_refused_run(run, root)
    assert sorted(p.name for p in root.rglob("*")) == ["brain", "runs", "t0"]
    kept = root / "runs" / "brain" / "t2"
    (kept / "checkpoints").mkdir(parents=True)
    (kept / "train.log").write_text("")
    assert not remove_refused_run(kept, root) and (kept / "train.log").exists()
    sweep = root / "sweeps" / "s"
    (sweep / "0-brain" / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("")
    assert remove_refused_run(sweep / "0-brain", root) and not (root / "sweeps").exists() and (root / "runs").exists()
    outside = tmp_path / "elsewhere" / "run"
    (outside / ".hydra").mkdir(parents=True)
    assert remove_refused_run(outside, root) and (tmp_path / "elsewhere").is_dir()  # never above the output root


# --- data commands --------------------------------------------------------------------------------


def data_refused(capsys, *arguments):
    assert data_main(list(map(str, arguments))) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_corrupt_wheel_is_named_and_the_build_leaves_nothing(tmp_path, capsys):
    wheels = fake_wheels(tmp_path / "wheels")
    victim = sorted(wheels.glob("*.whl"))[0]
    victim.write_bytes(b"not a zip" * 100)
    err = data_refused(capsys, "build", "brain-templates", "--root", tmp_path / "data", "--wheels", wheels)
    assert f"{victim}: not a readable wheel (zip archive)" in err
    assert not (tmp_path / "data").exists()


def test_a_wheel_with_a_damaged_member_is_refused(tmp_path, capsys):
    wheels = fake_wheels(tmp_path / "wheels")
    victim = sorted(wheels.glob("*.whl"))[-1]
    with zipfile.ZipFile(victim) as archive:
        info = archive.infolist()[0]
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw = bytearray(victim.read_bytes())
    raw[offset + 5] ^= 0xFF  # one byte of the first member's data
    victim.write_bytes(bytes(raw))
    err = data_refused(capsys, "build", "brain-templates", "--root", tmp_path / "data", "--wheels", wheels)
    assert str(victim) in err
    assert not (tmp_path / "data").exists()


def test_a_missing_wheels_folder_leaves_no_empty_cache(tmp_path, capsys):
    (tmp_path / "data").mkdir()  # the data folder existed: it stays, nothing is added to it
    err = data_refused(capsys, "build", "brain-templates", "--root", tmp_path / "data", "--wheels", tmp_path / "nowhere")
    assert f"--wheels {tmp_path / 'nowhere'}: no such folder" in err
    assert list((tmp_path / "data").iterdir()) == []


def test_check_of_a_single_image_says_it_is_not_a_data_set(tmp_path, capsys):
    image = save(tmp_path / "case.nii.gz", np.ones((4, 4, 4), np.float32))
    err = data_refused(capsys, "check", image)
    assert "case.nii.gz: a single NIfTI image, not a data set" in err and "CSV file" not in err.split("or a CSV")[0]
