"""Tiny runs of `python -m mtseg.train` through Hydra, and of evaluate, figures and the notebooks on them."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nbformat
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from mtseg.checkpoint import load_checkpoint
from mtseg.training.lr_schedule import lr_factor
from mtseg.training.module import CHECKPOINT_KEY, MultiTaskSegmentationModule

TINY = [
    "model.depth=3", "model.width=8", "model.fc_width=16",
    "schedule.minibatches_per_task=4", "schedule.eval_every=2",
    "data.brain.shape=[48,48,48]", "data.breast.shape=[48,40,32]", "data.cta.shape=[48,48,40]",
    "data.brain.n_train=1", "data.breast.n_train=1", "data.cta.n_train=1",
    "data.brain.n_test=1", "data.breast.n_test=1", "data.cta.n_test=1",
    "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
]


#: The tiny runs' settings of the paper's training mode (training=patch, the default).
TINY_PATCH = ["training.batch_size=12", "training.queue.max_length=120", "training.queue.samples_per_volume=40"]


def tiny(*overrides) -> list[str]:
    """:data:`TINY`, the paper's mode's tiny settings unless another mode is chosen, and ``overrides``."""
    other_mode = any(o.startswith("training=") and o != "training=patch" for o in overrides)
    return [*TINY, *([] if other_mode else TINY_PATCH), *overrides]


def run_train(tmp_path, *overrides, multirun=False):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    command = [sys.executable, "-m", "mtseg.train", *(["-m"] if multirun else []), *tiny(*overrides)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_module(module, *arguments, env=None, timeout=600):
    env = os.environ | {"WANDB_MODE": "disabled"} | (env or {})
    result = subprocess.run([sys.executable, "-m", module, *arguments], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Experiment 7 trained for 4 mini-batches per task, evaluated at 2 and 4; two brain test images."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    result = run_train(tmp_path, "+experiment=brain_breast_cta", "data.brain.n_test=2", "hydra.run.dir=" + str(tmp_path / "run"))
    return tmp_path / "run", result


def test_train_writes_the_run_directory(tiny_run):
    run, result = tiny_run
    assert (run / ".hydra" / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "brain_breast_cta"
    # where it ran, for results built from it (mtseg.figures copies it into its provenance.json)
    assert summary["provenance"]["command"].startswith("python -m mtseg.train ") and summary["provenance"]["cpu"]["cpu_count"] >= 1
    assert summary["n_classes"] == 9 and len(summary["class_names"]) == 9
    assert summary["steps"] == 12 and summary["minibatches_per_task"] == 4
    assert summary["n_params"] > 0
    assert 0 < summary["evaluation_seconds"] < summary["train_seconds"]
    assert set(summary["dice"]) == {"brain", "breast", "cta"}
    assert set(summary["dice"]["brain"]) == set(summary["class_names"][1:7])
    assert set(summary["intensity_baseline_dice"]["cta"]) == {"coronary_arteries"}
    assert set(summary["intensity_baseline_dice"]["brain"]) == set(summary["dice"]["brain"])
    # the final whole-image evaluation: all held-out images, thresholds, confusion
    tasks = summary["evaluation"]["tasks"]
    assert tasks["brain"]["n_images"] == 2 and tasks["breast"]["n_images"] == 1
    assert tasks["brain"]["operating_point"] == "argmax" and "threshold" not in tasks["brain"]
    assert 0.0 <= tasks["cta"]["threshold"] <= 1.0
    assert 0.0 <= tasks["breast"]["cross_task_confusion_percent"]["median"] <= 100.0

    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "minibatches_per_task", "task", "class", "dice", "train_seconds"]
    # evaluations every 2 mini-batches per task = every 6 steps; 8 foreground classes each
    assert sorted({int(r["step"]) for r in rows}) == [6, 12]
    assert {float(r["minibatches_per_task"]) for r in rows} == {2.0, 4.0}
    assert len(rows) == 2 * 8
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows if r["dice"] != "nan")
    # training seconds, evaluations excluded: positive, growing, below the run's whole training time
    seconds = {int(r["step"]): float(r["train_seconds"]) for r in rows}
    assert 0.0 < seconds[6] < seconds[12] <= summary["train_seconds"]
    last = {(r["task"], r["class"]): float(r["dice"]) for r in rows if r["step"] == "12"}
    assert last[("cta", "coronary_arteries")] == pytest.approx(summary["dice"]["cta"]["coronary_arteries"])

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 12
    meta = checkpoint[CHECKPOINT_KEY]
    assert meta["class_names"] == summary["class_names"]
    assert meta["class_tasks"][7:] == ["breast", "cta"]
    # a checkpoint says how to prepare a new image for it, and where its test sets are, each once
    hparams = checkpoint["hyper_parameters"]
    assert "preprocessing" not in meta and "data" not in meta
    assert all("preprocessing" not in hparams["data"][t] for t in ("brain", "breast", "cta"))
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.meta["preprocessing"]["cta"]["spacing"] == 0.45
    assert loaded.meta["preprocessing"]["brain"]["threshold"] == 0.0
    assert loaded.meta["data"]["cta"]["preprocessing"] == hparams["preprocessing"]["cta"]
    assert meta["pad_value"] == 0.0
    assert loaded.meta["data"]["brain"]["n_test"] == 2
    # how much of a training image each task's foreground fills (predict's plausibility check)
    assert 0 < meta["foreground_fraction"]["cta"] < 0.05 < meta["foreground_fraction"]["brain"] < 1
    # the range of a training image's share of intensities clearly below 0 (predict's intensity agreement):
    # no MR magnitude is negative; air, lungs, fat and the out-of-field padding of a CTA are
    assert meta["negative_fraction_range"]["brain"] == meta["negative_fraction_range"]["breast"] == [0.0, 0.0]
    low, high = meta["negative_fraction_range"]["cta"]
    assert 0.5 < low <= high < 0.8
    # the PR operating points of the evaluation before the save
    assert meta["thresholds"] == {t: tasks[t]["threshold"] for t in ("breast", "cta")}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step0000006.ckpt", "step0000012.ckpt"]
    module = MultiTaskSegmentationModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.label_space.n_classes == 9
    assert "Final Dice, experiment brain_breast_cta" in result.stdout
    assert "intensity-only" in result.stdout
    assert "Whole-image evaluations took" in result.stdout


def test_evaluate_repeats_the_final_evaluation_and_writes_predictions_on_the_input_grid(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "evaluation"
    run_module("mtseg.evaluate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}")
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for task, classes in summary["dice"].items():
        for cls, dice in classes.items():
            assert results["tasks"][task]["classes"][cls]["mean_dice"] == pytest.approx(dice, abs=1e-9, nan_ok=True) or dice is None
    assert results["global_step"] == 12 and results["minibatches_per_task"] == 4  # 3 tasks: 3 steps per mini-batch per task
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 6 + 1 + 1
    # surface distances beside Dice: null (empty) exactly where a class is missing from one of the maps
    for row in rows:
        assert ("hd95_mm" in row and "assd_mm" in row) and (row["hd95_mm"] == "nan") == (row["assd_mm"] == "nan")
        assert row["hd95_mm"] == "nan" or min(float(row["hd95_mm"]), float(row["assd_mm"])) >= 0
    pectoral = results["tasks"]["breast"]["classes"]["pectoral_muscle"]
    assert {"mean_hd95_mm", "median_assd_mm", "hd95_mm_per_image", "assd_mm_per_image"} <= set(pectoral)
    thresholds = json.loads((run / "checkpoints" / "last.thresholds.json").read_text())["thresholds"]
    assert thresholds == {t: results["tasks"][t]["threshold"] for t in ("breast", "cta")}
    written = sorted((out / "predictions").rglob("*.nii.gz"))
    assert [p.parent.name for p in written] == ["brain", "brain", "breast", "cta"]
    config = json.loads(json.dumps(summary))  # the phantoms' files: <data>/phantoms/<task>-*/images/<case>.nii.gz
    for prediction in written:
        (source,) = Path(run.parent / "data" / "phantoms").glob(f"{prediction.parent.name}-*/images/{prediction.name}")
        assert nib.load(prediction).shape == nib.load(source).shape
        np.testing.assert_array_equal(nib.load(prediction).affine, nib.load(source).affine)
        labels = np.asarray(nib.load(prediction).dataobj)
        assert labels.max() < len(config["dice"][prediction.parent.name]) + 1


def test_figures_and_notebooks_from_a_run(tiny_run, tmp_path):
    run, _ = tiny_run
    run_module("mtseg.figures", str(run), "--out", str(tmp_path / "figures"))
    for name in ("fig2_learning_curves.png", "fig3_segmentations.png", "dice_vs_seconds.png"):
        assert matplotlib.image.imread(tmp_path / "figures" / name).shape[0] > 200
    with (tmp_path / "figures" / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8
    assert "coronary_arteries" in (tmp_path / "figures" / "results.md").read_text()
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    os.environ["MTSEG_RUNS"] = str(run)
    try:
        for name in ("learning_curves.ipynb", "segmentations.ipynb"):
            notebook = nbformat.read(notebooks / name, as_version=4)
            NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}}).execute()
            outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
            assert not [o for o in outputs if o.output_type == "error"]
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no figure"
    finally:
        del os.environ["MTSEG_RUNS"]


def test_a_final_evaluation_runs_when_the_schedule_ends_between_evaluations(tmp_path):
    run_train(tmp_path, "+experiment=breast", "schedule.minibatches_per_task=3", "hydra.run.dir=" + str(tmp_path / "run"))
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        steps = sorted({int(r["step"]) for r in csv.DictReader(handle)})
    assert steps == [2, 3]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000003.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3


def learning_curve(run: Path) -> list[tuple]:
    """``metrics.csv`` without its wall-clock column."""
    with (run / "metrics.csv").open() as handle:
        return [(r["step"], r["task"], r["class"], r["dice"]) for r in csv.DictReader(handle)]


def test_same_seed_same_learning_curve(tmp_path):
    curves = []
    for name in ("a", "b"):
        run_train(tmp_path, "+experiment=breast_cta", "seed=3", "hydra.run.dir=" + str(tmp_path / name))
        curves.append(learning_curve(tmp_path / name))
    assert curves[0] == curves[1]


def test_dense_training_is_reproducible_and_its_checkpoint_is_evaluated_like_any_other(tmp_path):
    dense = ["+experiment=breast_cta", "training=cubes", "training.cube=6", "training.cubes_per_task=2", "seed=2",
             "optimizer.lr_decay=cosine", "optimizer.warmup=0.25", "trainer.precision=bf16-mixed"]
    curves = []
    for name in ("a", "b"):
        result = run_train(tmp_path, *dense, "hydra.run.dir=" + str(tmp_path / name))
        curves.append(learning_curve(tmp_path / name))
    assert curves[0] == curves[1] and len(curves[0]) == 2 * 2
    assert "2 cube(s) of 6^3 voxels, training=cubes" in result.stdout
    run = tmp_path / "b"
    summary = json.loads((run / "summary.json").read_text())
    # dense steps hold a cube of every task: 4 mini-batches per task are 4 steps, evaluated at 2 and 4
    assert summary["training_mode"] == "cubes" and summary["steps"] == 4 and summary["minibatches_per_task"] == 4
    assert sorted({int(step) for step, *_ in curves[0]}) == [2, 4]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint[CHECKPOINT_KEY]["training"]["cube"] == 6
    # the learning rate followed the schedule: one warm-up step, then a cosine that ends at 0 after step 4
    (schedule,) = checkpoint["lr_schedulers"]
    assert schedule["last_epoch"] == 4 and schedule["_last_lr"] == [pytest.approx(0.0, abs=1e-12)]
    out = tmp_path / "evaluation"
    run_module("mtseg.evaluate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}")
    results = json.loads((out / "results.json").read_text())
    assert results["minibatches_per_task"] == 4  # dense: one step per mini-batch per task
    # trained in bf16, evaluated in fp32 at training time, so evaluate (fp32) repeats it exactly
    for task in ("breast", "cta"):
        (cls,) = summary["dice"][task]
        assert results["tasks"][task]["classes"][cls]["mean_dice"] == pytest.approx(summary["dice"][task][cls], abs=1e-9)


def test_the_learning_rate_schedules():
    cosine = lr_factor("cosine", 0.1, 100)
    assert [cosine(step) for step in range(10)] == pytest.approx([(step + 1) / 10 for step in range(10)])
    after = [cosine(step) for step in range(10, 101)]
    assert after[0] == 1.0 and cosine(55) == pytest.approx(0.5) and after[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(after, after[1:]))
    assert {lr_factor("constant", 0.0, 50)(step) for step in range(50)} == {1.0}
    with pytest.raises(ValueError, match="optimizer.lr_decay"):
        MultiTaskSegmentationModule(["breast"], model={"depth": 3, "width": 4, "fc_width": 4}, lr_decay="step")


def test_unknown_experiment_is_a_clear_error(tmp_path):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    result = subprocess.run(
        [sys.executable, "-m", "mtseg.train", "+experiment=liver", *tiny()], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Could not find 'experiment/liver'" in result.stderr
    assert "brain_breast_cta" in result.stderr  # the available experiments are listed


def test_a_sweep_gives_each_experiment_its_own_run_and_wandb_run_in_one_group(tmp_path):
    env_out = tmp_path / "out"
    command = [sys.executable, "-m", "mtseg.train", "-m", "+experiment=brain,breast_cta", *tiny(), "schedule.minibatches_per_task=1"]
    env = os.environ | {"WANDB_MODE": "offline", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(env_out)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (env_out / "sweeps").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0-brain-seed0", "1-breast_cta-seed0"]
    classes = [json.loads((sweep / run / "summary.json").read_text())["n_classes"] for run in runs]
    assert classes == [7, 3]
    run_module("mtseg.figures", str(sweep))  # a sweep directory: its runs are found inside
    assert (sweep / "figures" / "fig3_segmentations.png").is_file()
    assert set(pd.read_csv(sweep / "figures" / "results.csv")["experiment"]) == {"brain", "breast_cta"}
    for run in runs:
        (offline,) = (sweep / run / "wandb").glob("offline-run-*")
        (record,) = offline.glob("run-*.wandb")
        # the W&B group is the sweep folder's name, stored in the run record
        assert sweep.name.encode() in record.read_bytes()


def test_evaluate_rejects_a_checkpoint_not_written_by_mtseg(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    env = os.environ | {"WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "mtseg.evaluate", f"ckpt_path={foreign}", f"output_dir={tmp_path / 'out'}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "not an mtseg checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_piped_run_shows_its_progress_and_no_library_noise(tmp_path):
    env = os.environ | {"WANDB_MODE": "offline", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    command = [sys.executable, "-m", "mtseg.train", *tiny(), "+experiment=breast", "schedule.minibatches_per_task=2",
               "progress_every_seconds=0", "hydra.run.dir=" + str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)  # a pipe, as `| tee log`
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in ("Tip:", "litlogger", "deprecated", "anonymous setting", "IterableDataset", "does not have many workers"):
        assert noise not in console, f"{noise!r} printed:\n{console[-3000:]}"
    assert "step 1/2 (1 mini-batches per task), loss " in result.stdout and "step 2/2" in result.stdout


def test_a_sweep_through_submitit_gives_each_experiment_its_run(tmp_path):
    """hydra/launcher=submitit_local: the launcher SLURM sweeps use (hydra/launcher=slurm), run locally."""
    run_train(tmp_path, "hydra/launcher=submitit_local", "+experiment=breast,cta", "schedule.minibatches_per_task=2", "logger=none",
              "hydra.sweep.dir=" + str(tmp_path / "sweep"), multirun=True)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "summary.json").is_file())
    assert runs == ["0-breast-seed0", "1-cta-seed0"]
    for run in runs:
        assert (tmp_path / "sweep" / run / "metrics.csv").is_file() and (tmp_path / "sweep" / run / "checkpoints" / "last.ckpt").is_file()


def test_the_slurm_launcher_config_composes_with_its_knobs():
    from hydra import compose, initialize_config_dir

    from mtseg import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=brain", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.gpus_per_node == 1


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path):
    """trainer=ddp with 2 gloo processes: one metrics.csv (each evaluation once), one summary, the same step count."""
    result = run_train(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "+experiment=breast_cta",
                       "logger=none", "hydra.run.dir=" + str(tmp_path / "run"))
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8  # 4 mini-batches per task, 2 tasks: the single process's schedule
    steps = [int(step) for step, *_ in learning_curve(run)]
    assert steps == [4, 4, 8, 8]  # two classes per evaluation, written by process 0 only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step0000004.ckpt", "step0000008.ckpt"]
    assert result.stdout.count("Final Dice") == 1
    assert "sync_dist" not in result.stderr  # the evaluation is the same in every process: no warning


def test_ddp_in_a_local_multirun_is_refused(tmp_path):
    env = os.environ | {"WANDB_MODE": "disabled", "MTSEG_DATA_DIR": str(tmp_path / "data"), "MTSEG_OUTPUT_DIR": str(tmp_path / "out")}
    command = [sys.executable, "-m", "mtseg.train", "-m", *tiny(), "+experiment=breast,cta", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "logger=none", "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "trainer=ddp in a local multirun" in result.stderr and "Traceback" not in result.stderr


def test_a_compiled_stack_trains_and_saves_the_same_checkpoint_keys(tmp_path):
    plain = tmp_path / "plain"
    compiled = tmp_path / "compiled"
    common = ["+experiment=breast", "schedule.minibatches_per_task=2", "schedule.eval_every=2", "logger=none"]
    run_train(tmp_path, *common, "hydra.run.dir=" + str(plain))
    run_train(tmp_path, *common, "compile=true", "hydra.run.dir=" + str(compiled))
    states = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (plain, compiled)]
    assert list(states[0]) == list(states[1])  # compiled in place: evaluate, predict and resume read it as any other
    dice = [json.loads((run / "summary.json").read_text())["dice"]["breast"]["pectoral_muscle"] for run in (plain, compiled)]
    assert dice[1] == pytest.approx(dice[0], abs=0.05)  # the same training; compiled kernels round differently


def test_callbacks_and_loggers_are_added_and_removed_in_the_config(tmp_path):
    """conf/callbacks and conf/logger are built with hydra.utils.instantiate: a user's logger runs beside the
    run's own files, and a default callback goes with ~callbacks.<name>."""
    run = tmp_path / "run"
    run_train(tmp_path, "+experiment=breast", "schedule.minibatches_per_task=2", f"hydra.run.dir={run}", "logger=none",
              "+logger.csv._target_=lightning.pytorch.loggers.CSVLogger", f"+logger.csv.save_dir={tmp_path / 'csv'}",
              "~callbacks.segmentation_overlays")
    logged = list((tmp_path / "csv").rglob("metrics.csv"))
    assert len(logged) == 1 and "val/dice/breast/pectoral_muscle" in logged[0].read_text().splitlines()[0]
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()  # the run's own files still
    without_checkpoints = tmp_path / "bare"
    run_train(tmp_path, "+experiment=breast", "schedule.minibatches_per_task=2", f"hydra.run.dir={without_checkpoints}",
              "logger=none", "~callbacks.checkpoints")
    assert (without_checkpoints / "metrics.csv").is_file()
    assert not (without_checkpoints / "checkpoints" / "step0000004.ckpt").exists()


def test_intermediate_evaluations_may_run_in_bf16_while_the_last_one_stays_fp32(tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        result = run_train(tmp_path, "+experiment=breast", "seed=4", f"evaluation.intermediate_precision={precision}",
                           "hydra.run.dir=" + str(tmp_path / precision))
        runs[precision] = result.stdout + result.stderr
    assert "evaluation at step 2: dense inference in bf16" in runs["bf16"]
    assert "evaluation at step 4: dense inference in fp32" in runs["bf16"]
    assert "evaluation at step 2: dense inference in fp32" in runs["fp32"]
    # evaluations draw nothing from the random streams: the same weights, and the last evaluation (fp32) the same
    weights = [torch.load(tmp_path / p / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for p in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    last = [[row for row in learning_curve(tmp_path / p) if row[0] == "4"] for p in runs]
    assert last[0] == last[1] and last[0]
    summaries = [json.loads((tmp_path / p / "summary.json").read_text())["dice"] for p in runs]
    assert summaries[0] == summaries[1]


def test_a_bad_intermediate_precision_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="evaluation.intermediate_precision: precision must be one of auto, fp32, bf16, got 'fp16'"):
        MultiTaskSegmentationModule(["brain"], model={"depth": 3, "width": 4, "fc_width": 8}, evaluation={"intermediate_precision": "fp16"})
    module = MultiTaskSegmentationModule(["brain"], model={"depth": 3, "width": 4, "fc_width": 8}, evaluation={"intermediate_precision": "bf16"})
    assert module.evaluation_precision == "fp32"  # outside a fit: as mtseg.evaluate
