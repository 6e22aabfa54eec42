"""Checkpoints written by an earlier mtseg still load, evaluate and resume.

``tests/fixtures/checkpoints_02cd595/`` holds two tiny runs of experiment 5 (breast and CTA) written by
main at commit 02cd595, before the training modes became objects and the package was split into
subpackages: one trained with cubes (then ``training=dense``), one with the paper's triplanar samples
(then ``training=patch``, with ``data.batch_size`` and ``data.queue``). Each folder is a run folder:
``checkpoints/`` (the mid-run checkpoint and ``last.ckpt``), ``metrics.csv``, ``summary.json`` and the
run's ``overrides.yaml``.

Today's mtseg must evaluate ``last.ckpt`` to the Dice the run reported, and resume the mid-run
checkpoint to the weights and learning curve of the old run's end: the phantoms are generated from
their seeds, so both runs see the same data. On the machine that wrote the fixtures (an AMD EPYC)
both are equal bit for bit; another CPU may round a convolution differently (oneDNN picks its
kernels by CPU), so the comparison allows float rounding, far below what a changed sampling
stream or schedule would move.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mtseg.checkpoint import load_checkpoint
from tests.test_train import learning_curve, run_module

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_02cd595"
#: Mid-run checkpoint of each run (at its first evaluation) and the overrides that continue it today.
RUNS = {
    "cubes": ("step0000002.ckpt", ["training=cubes", "training.cube=6", "training.cubes_per_task=2"]),
    "patch": ("step0000004.ckpt", ["training.batch_size=12", "training.queue.max_length=120", "training.queue.samples_per_volume=40"]),
}
#: Overrides shared by both runs (their overrides.yaml, without the training mode's).
COMMON = [
    "model.depth=3", "model.width=8", "model.fc_width=16", "schedule.minibatches_per_task=4", "schedule.eval_every=2",
    "data.brain.shape=[48,48,48]", "data.breast.shape=[48,40,32]", "data.cta.shape=[48,48,40]",
    "data.brain.n_train=1", "data.breast.n_train=1", "data.cta.n_train=1",
    "data.brain.n_test=1", "data.breast.n_test=1", "data.cta.n_test=1",
    "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=none", "+experiment=breast_cta", "seed=1",
]


@pytest.mark.parametrize("mode", sorted(RUNS))
def test_an_old_checkpoint_loads_and_evaluates_to_its_runs_dice(mode, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(FIXTURES / mode, run)  # evaluate writes its PR thresholds beside the checkpoint: never into the repository
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.label_space.tasks == ("breast", "cta") and loaded.global_step == (4 if mode == "cubes" else 8)
    out = tmp_path / "evaluation"
    run_module("mtseg.evaluate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}",
               "write_predictions=false", "surface_distances=false",
               env={"MTSEG_DATA_DIR": str(tmp_path / "data")})
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert results["minibatches_per_task"] == summary["minibatches_per_task"] == 4
    assert sorted(p.name for p in (FIXTURES / mode / "checkpoints").iterdir()) == sorted(p.name for p in (FIXTURES / mode / "checkpoints").glob("*.ckpt"))
    for task, classes in summary["dice"].items():
        for cls, dice in classes.items():
            assert results["tasks"][task]["classes"][cls]["mean_dice"] == pytest.approx(dice, abs=1e-3)


@pytest.mark.parametrize("mode", sorted(RUNS))
def test_an_old_checkpoint_resumes_to_the_old_runs_weights_and_learning_curve(mode, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / mode, old)  # the resumed run reads the old run's metrics.csv, never writes there
    middle, overrides = RUNS[mode]
    resumed = tmp_path / "resumed"
    result = run_module(
        "mtseg.train", *COMMON, *overrides, f"ckpt_path={old / 'checkpoints' / middle}", f"hydra.run.dir={resumed}",
        env={"MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")},
    )
    assert "Resuming" in result.stdout + result.stderr
    expected = torch.load(old / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    got = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-5, msg=f"{name} differs from the old run's")
    old_curve, new_curve = learning_curve(old), learning_curve(resumed)
    assert [row[:3] for row in new_curve] == [row[:3] for row in old_curve]  # the same evaluations, steps and classes
    assert [float(row[3]) for row in new_curve] == pytest.approx([float(row[3]) for row in old_curve], abs=1e-3)
    with (old / "metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(learning_curve(resumed)) > 0
