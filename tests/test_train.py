"""A smoke run of `python -m mtseg.train` through Hydra with a tiny model, checking the run directory."""

import csv
import json
import os
import subprocess
import sys

import torch

from mtseg.module import CHECKPOINT_KEY, MultiTaskSegmentationModule

TINY = [
    "model.depth=3", "model.width=8", "model.fc_width=16",
    "schedule.minibatches_per_task=4", "schedule.eval_every=2", "data.batch_size=12",
"data.queue.max_length=120", "data.queue.samples_per_volume=40",
    "data.brain.shape=[48,48,48]", "data.breast.shape=[48,40,32]", "data.cta.shape=[48,48,40]",
    "data.brain.n_train=1", "data.breast.n_train=1", "data.cta.n_train=1",
    "data.brain.n_test=1", "data.breast.n_test=1", "data.cta.n_test=1",
    "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
]


def run_train(tmp_path, *overrides, multirun=False):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    command = [sys.executable, "-m", "mtseg.train", *(["-m"] if multirun else []), *TINY, *overrides]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_train_writes_the_run_directory(tmp_path):
    result = run_train(tmp_path, "+experiment=brain_breast_cta", "hydra.run.dir=" + str(tmp_path / "run"))
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "brain_breast_cta"
    assert summary["n_classes"] == 9 and len(summary["class_names"]) == 9
    assert summary["steps"] == 12 and summary["minibatches_per_task"] == 4
    assert summary["n_params"] > 0
    assert set(summary["dice"]) == {"brain", "breast", "cta"}
    assert set(summary["dice"]["brain"]) == set(summary["class_names"][1:7])
    for kind in ("balanced_voxels", "whole_images"):
        assert set(summary["intensity_baseline_dice"][kind]["cta"]) == {"coronary_arteries"}
        assert set(summary["intensity_baseline_dice"][kind]["brain"]) == set(summary["dice"]["brain"])

    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "minibatches_per_task", "task", "class", "dice"]
    # evaluations every 2 mini-batches per task = every 6 steps; 8 foreground classes each
    assert sorted({int(r["step"]) for r in rows}) == [6, 12]
    assert {float(r["minibatches_per_task"]) for r in rows} == {2.0, 4.0}
    assert len(rows) == 2 * 8
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows if r["dice"] != "nan")

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert checkpoint["global_step"] == 12
    assert checkpoint[CHECKPOINT_KEY]["class_names"] == summary["class_names"]
    assert checkpoint[CHECKPOINT_KEY]["class_tasks"][7:] == ["breast", "cta"]
    # a checkpoint says how to prepare a new image for it
    assert checkpoint[CHECKPOINT_KEY]["preprocessing"]["cta"]["spacing"] == 0.45
    assert checkpoint[CHECKPOINT_KEY]["preprocessing"]["brain"]["threshold"] == 0.0
    assert checkpoint[CHECKPOINT_KEY]["pad_value"] == 0.0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step0000006.ckpt", "step0000012.ckpt"]
    module = MultiTaskSegmentationModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.label_space.n_classes == 9
    assert "Final Dice, experiment brain_breast_cta" in result.stdout
    assert "intensity-only" in result.stdout


def test_a_final_evaluation_runs_when_the_schedule_ends_between_evaluations(tmp_path):
    run_train(tmp_path, "+experiment=breast", "schedule.minibatches_per_task=3", "hydra.run.dir=" + str(tmp_path / "run"))
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        steps = sorted({int(r["step"]) for r in csv.DictReader(handle)})
    assert steps == [2, 3]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000003.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 3


def test_same_seed_same_learning_curve(tmp_path):
    curves = []
    for name in ("a", "b"):
        run_train(tmp_path, "+experiment=breast_cta", "seed=3", "hydra.run.dir=" + str(tmp_path / name))
        curves.append((tmp_path / name / "metrics.csv").read_text())
    assert curves[0] == curves[1]


def test_unknown_experiment_is_a_clear_error(tmp_path):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    result = subprocess.run(
        [sys.executable, "-m", "mtseg.train", "+experiment=liver", *TINY], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Could not find 'experiment/liver'" in result.stderr
    assert "brain_breast_cta" in result.stderr  # the available experiments are listed


def test_a_sweep_gives_each_experiment_its_own_run_and_wandb_run_in_one_group(tmp_path):
    env_out = tmp_path / "out"
    command = [sys.executable, "-m", "mtseg.train", "-m", "+experiment=brain,breast_cta", *TINY, "schedule.minibatches_per_task=1"]
    env = os.environ | {"WANDB_MODE": "offline", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(env_out)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (env_out / "sweeps").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0-brain-seed0", "1-breast_cta-seed0"]
    classes = [json.loads((sweep / run / "summary.json").read_text())["n_classes"] for run in runs]
    assert classes == [7, 3]
    for run in runs:
        (offline,) = (sweep / run / "wandb").glob("offline-run-*")
        (record,) = offline.glob("run-*.wandb")
        # the W&B group is the sweep folder's name, stored in the run record
        assert sweep.name.encode() in record.read_bytes()
