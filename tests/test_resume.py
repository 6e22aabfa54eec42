"""SIGTERM during training saves last.ckpt and exits 143; ckpt_path= resumes the run exactly."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_train import learning_curve, run_train, tiny

#: Run mtseg.train with a SIGTERM sent to itself right after optimiser step K (argv[1]), as
#: `kill`, `timeout` or SLURM would send it: deterministic, whatever the machine's speed.
KILLED_AT = """
import os, signal, sys
from mtseg.training import callbacks
step, signum = int(sys.argv.pop(1)), getattr(signal, sys.argv.pop(1))
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits SIGINT ignored)
def kill(self, trainer, *args):
    if trainer.global_step == step:
        os.kill(os.getpid(), signum)
callbacks.SaveOnSigterm.on_train_batch_end = kill
import runpy
sys.argv[0] = "mtseg.train"
runpy.run_module("mtseg.train", run_name="__main__")
"""


def killed_run(tmp_path, step, *overrides, signal_name="SIGTERM"):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    command = [sys.executable, "-c", KILLED_AT, str(step), signal_name, *tiny(*overrides)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "mode, overrides, kill_at",
    [
        # cubes: one step per mini-batch per task; evaluations at 2, 4, 6: step 3 is inside a sampling segment
        ("cubes", ["training=cubes", "training.cube=6", "training.cubes_per_task=2", "schedule.minibatches_per_task=6"], 3),
        # patch (the paper's): 2 steps per mini-batch per task; evaluations at 4 and 8: step 5 is inside a segment
        ("patch", [], 5),
    ],
)
def test_a_run_killed_by_sigterm_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, mode, overrides, kill_at):
    common = ["+experiment=breast_cta", "seed=1", *overrides]
    run_train(tmp_path, *common, "hydra.run.dir=" + str(tmp_path / "whole"))

    killed = killed_run(tmp_path, kill_at, *common, "hydra.run.dir=" + str(tmp_path / "killed"))
    assert killed.returncode == 143, killed.stderr[-3000:]
    assert f"Stopped by SIGTERM at step {kill_at}" in killed.stderr and "ckpt_path=" in killed.stderr
    assert "weights_only" not in killed.stderr + killed.stdout  # no library notice contradicting a full checkpoint
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == kill_at
    assert not (tmp_path / "killed" / "summary.json").exists()  # an interrupted run reports no result

    resumed = run_train(tmp_path, *common, f"ckpt_path={last}", "hydra.run.dir=" + str(tmp_path / "resumed"))
    assert f"Resuming {last} at step {kill_at}" in resumed.stderr + resumed.stdout
    assert "not resumable" not in resumed.stderr + resumed.stdout  # Lightning's notice: resume is exact here (below)
    whole, again = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert whole.keys() == again.keys()
    for name in whole:
        assert torch.equal(whole[name], again[name]), f"{name} differs after resuming"
    # the learning curve continues: the same evaluations, once each, with the same Dice
    assert learning_curve(tmp_path / "resumed") == learning_curve(tmp_path / "whole")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["steps"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["steps"]
    with (tmp_path / "resumed" / "metrics.csv").open() as handle:
        seconds = [float(r["train_seconds"]) for r in csv.DictReader(handle)]
    assert seconds == sorted(seconds)  # training time continues from the checkpoint's
    assert not (tmp_path / "killed" / "summary.json").exists()  # the old run is not written to


def test_resuming_with_other_settings_is_refused(tmp_path):
    common = ["+experiment=breast", "schedule.minibatches_per_task=2"]
    run_train(tmp_path, *common, "hydra.run.dir=" + str(tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    for overrides, message in [
        (["+experiment=breast", "model.width=4"], "was trained with model="),
        (["+experiment=breast", "seed=5"], "was trained with seed=0"),
        (["+experiment=cta"], "belongs to experiment breast, not cta"),
    ]:
        args = tiny("schedule.minibatches_per_task=2", f"ckpt_path={last}", *overrides)
        result = subprocess.run([sys.executable, "-m", "mtseg.train", *args], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_ctrl_c_during_training_keeps_the_last_evaluations_checkpoint(tmp_path):
    stopped = killed_run(tmp_path, 3, "+experiment=breast", "schedule.minibatches_per_task=6", "hydra.run.dir=" + str(tmp_path / "run"),
                         signal_name="SIGINT")
    assert stopped.returncode == 1  # Lightning's status for a KeyboardInterrupt
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    # Ctrl+C may land inside an optimiser step: nothing is saved then, last.ckpt is the evaluation's at step 2
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert not (tmp_path / "run" / "summary.json").exists()


def test_slurms_time_limit_warning_sigusr2_stops_like_sigterm(tmp_path):
    """submitit asks SLURM for SIGUSR2 before the time limit: the run saves last.ckpt and exits 143."""
    stopped = killed_run(tmp_path, 3, "+experiment=breast", "schedule.minibatches_per_task=6", "hydra.run.dir=" + str(tmp_path / "run"),
                         signal_name="SIGUSR2")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
