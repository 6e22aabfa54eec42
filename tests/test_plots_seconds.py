"""Learning per second: mean Dice against training seconds, one line per run and training mode."""

import pandas as pd
import pytest

from mtseg.evaluation.plots import RunRecord, plot_dice_against_seconds


def _run(mode: str, seconds: list[float] | None) -> RunRecord:
    rows = []
    for step, (t, dice) in enumerate(zip(seconds or [1.0, 2.0], [0.2, 0.6]), start=1):
        for cls, offset in (("white_matter", 0.0), ("brain_stem", 0.2)):
            row = {"step": step, "minibatches_per_task": step, "task": "brain", "class": cls, "dice": dice + offset}
            if seconds is not None:
                row["train_seconds"] = t
            rows.append(row)
    return RunRecord(path=None, experiment="brain", seed=0, metrics=pd.DataFrame(rows), training_mode=mode)


def test_each_run_is_one_line_of_its_mean_dice_at_its_training_seconds():
    figure = plot_dice_against_seconds([_run("dense", [10.0, 30.0]), _run("patch", [50.0, 90.0])])
    (ax,) = figure.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines["1: brain, training=dense, seed 0"] == ([10.0, 30.0], pytest.approx([0.3, 0.7]))
    assert lines["1: brain, training=patch, seed 0"] == ([50.0, 90.0], pytest.approx([0.3, 0.7]))


def test_runs_of_one_mode_are_told_apart_by_what_a_step_held():
    dense, small, paper = _run("dense", [10.0, 30.0]), _run("patch", [50.0, 90.0]), _run("patch", [40.0, 80.0])
    dense.summary = {"training": {"mode": "dense", "cube": 2, "cubes_per_task": 32}, "batch_size": 210}
    small.summary, paper.summary = {"training": {"mode": "patch"}, "batch_size": 96}, {"batch_size": 210}
    (ax,) = plot_dice_against_seconds([dense, small, paper]).axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == [
        "1: brain, training=dense (32 cube(s) of 2^3 voxels), seed 0",
        "1: brain, training=patch (96 samples), seed 0",
        "1: brain, training=patch (210 samples), seed 0",
    ]
    assert len({line.get_marker() for line in lines.values()}) == 3
    assert list(lines["1: brain, training=patch (210 samples), seed 0"].get_xdata()) == [40.0, 80.0]
    # a summary of today says what a step held
    paper.summary = {"minibatch": "210 samples", "training_mode": "patch"}
    (ax,) = plot_dice_against_seconds([paper]).axes
    assert [line.get_label() for line in ax.get_lines()] == ["1: brain, training=patch (210 samples), seed 0"]


def test_a_summary_without_whole_numbers_leaves_the_step_out_of_the_label():
    odd = [_run("dense", [1.0, 2.0]), _run("patch", [1.0, 2.0]), _run("patch", [1.0, 2.0])]
    odd[0].summary = {"training": {"cube": "2", "cubes_per_task": None}}
    odd[1].summary = {"batch_size": True}
    odd[2].summary = {"batch_size": 96.5, "training": [1, 2]}
    (ax,) = plot_dice_against_seconds(odd).axes
    assert [line.get_label() for line in ax.get_lines()] == [
        "1: brain, training=dense, seed 0", "1: brain, training=patch, seed 0", "1: brain, training=patch, seed 0"
    ]


def test_runs_without_training_seconds_are_a_clear_error():
    with pytest.raises(ValueError, match="train_seconds"):
        plot_dice_against_seconds([_run("patch", None)])


def test_multitask_comparison_gives_differences_to_the_single_task_run_beside_its_seed_spread():
    from mtseg.evaluation.plots import multitask_comparison

    rows = [
        # experiment, number, seed, task, class, dice
        ("brain", 1, 0, "brain", "white_matter", 0.80),
        ("brain", 1, 1, "brain", "white_matter", 0.76),
        ("brain_breast", 4, 0, "brain", "white_matter", 0.75),
        ("brain_breast_cta", 7, 0, "brain", "white_matter", 0.83),
        ("brain_breast", 4, 0, "breast", "pectoral_muscle", 0.9),  # no single-task breast run
    ]
    table = pd.DataFrame([dict(zip(("experiment", "experiment_number", "seed", "task", "class", "mean_dice"), r)) for r in rows])
    comparison = multitask_comparison(table)
    assert comparison["task"].tolist() == ["brain"]
    row = comparison.iloc[0]
    assert row["single_task_dice"] == pytest.approx(0.80)
    assert row["seed_spread"] == pytest.approx(0.04)
    assert row["abs_diff_exp_4"] == pytest.approx(0.05) and row["abs_diff_exp_7"] == pytest.approx(0.03)
    assert row["max_abs_diff"] == pytest.approx(0.05)


def test_multitask_comparison_orders_the_experiments_whichever_task_comes_first():
    from mtseg.evaluation.plots import multitask_comparison

    rows = [("brain", 1, "brain", 0.5), ("brain_breast", 4, "brain", 0.4), ("breast", 2, "breast", 0.8),
            ("breast_cta", 6, "breast", 0.7), ("brain_breast", 4, "breast", 0.6)]
    table = pd.DataFrame([{"experiment": e, "experiment_number": n, "seed": 0, "task": t, "class": t, "mean_dice": d} for e, n, t, d in rows])
    assert list(multitask_comparison(table).columns) == [
        "task", "class", "single_task_dice", "seed_spread", "abs_diff_exp_4", "abs_diff_exp_6", "max_abs_diff"
    ]
