"""The paper's figures from run and sweep directories: Fig. 2 (learning curves), Fig. 3 (segmentations)
and mean Dice against training seconds (learning per second).

Shared by ``python -m mtseg.figures`` and the notebooks in ``notebooks/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from mtseg.tasks import EXPERIMENTS, TASK_ORDER, TASKS
from mtseg.training.mode import training_mode_from_config, training_mode_name

#: One colour per experiment, derived from the experiment list (a fourth task needs no edit here):
#: a qualitative matplotlib palette in the experiments' order (the paper's Fig. 1 numbering).
_PALETTE = plt.get_cmap("tab10" if len(EXPERIMENTS) <= 10 else "tab20")
EXPERIMENT_COLOURS = {experiment: _PALETTE(i % _PALETTE.N) for i, experiment in enumerate(EXPERIMENTS)}
#: Label colours of the segmentation panels (index 0, background, is transparent).
LABEL_COLOURS = ListedColormap(
    [(0, 0, 0, 0), "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]
)


@dataclass
class RunRecord:
    """What a training run left in its directory."""

    path: Path
    experiment: str
    seed: int
    metrics: pd.DataFrame
    summary: dict | None = None
    checkpoint: Path | None = None
    training_mode: str = "patch"  # the training mode's name (conf/training)

    @property
    def number(self) -> int:
        """The experiment's number in the paper's Fig. 1 (1..7)."""
        return list(EXPERIMENTS).index(self.experiment) + 1


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.csv").is_file() and (path / ".hydra" / "config.yaml").is_file()


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory (``metrics.csv``, ``summary.json``, ``checkpoints/last.ckpt``)."""
    path = Path(path)
    if not is_run_dir(path):
        raise ValueError(f"{path} is not an mtseg run directory (no metrics.csv and .hydra/config.yaml)")
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.load(path / ".hydra" / "config.yaml")
        experiment, seed = str(config.experiment), int(config.seed)
        training = OmegaConf.select(config, "training", default=None)
        mode = training_mode_name(OmegaConf.to_container(training) if OmegaConf.is_config(training) else None)
    except (OmegaConfBaseException, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path / '.hydra' / 'config.yaml'}: not the config of an mtseg run ({type(error).__name__}: {error})") from None
    try:
        metrics = pd.read_csv(path / "metrics.csv")
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(f"{path / 'metrics.csv'}: not a readable table ({error})") from None
    missing = [c for c in ("step", "minibatches_per_task", "task", "class", "dice") if c not in metrics.columns]
    if missing:
        raise ValueError(f"{path / 'metrics.csv'}: lacks the column(s) {', '.join(missing)}")
    summary_path = path / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{summary_path}: not valid JSON ({error})") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{summary_path}: must hold a JSON object")
    checkpoint = path / "checkpoints" / "last.ckpt"
    return RunRecord(path, experiment, seed, metrics, summary, checkpoint if checkpoint.is_file() else None, mode)


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every run in ``paths``: run directories, or sweep directories holding runs (searched recursively)."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        found = [path] if is_run_dir(path) else sorted(p.parent for p in path.rglob("metrics.csv") if is_run_dir(p.parent))
        if not found:
            raise ValueError(f"{path} holds no mtseg run (a run directory has metrics.csv and .hydra/config.yaml)")
        runs += [load_run(p) for p in found]
    return sorted(runs, key=lambda r: (r.number, r.seed, str(r.path)))


def minibatch_description(run: RunRecord) -> str:
    """What one optimiser step of the run held, from its ``summary.json`` ("" when it has none or it does
    not say): ``32 cube(s) of 2^3 voxels`` or ``210 samples``."""
    summary = run.summary or {}
    if isinstance(summary.get("minibatch"), str):
        return summary["minibatch"]
    try:  # a summary written before it said so: its training mode describes it
        return training_mode_from_config(summary.get("training"), {"batch_size": summary.get("batch_size")}).describe()
    except (ValueError, TypeError, AttributeError):  # summary.json is a user's file
        return ""


MARKERS = "osD^vP*X"
LINESTYLES = ("-", ":", "--", "-.")


def plot_dice_against_seconds(runs: Sequence[RunRecord]) -> plt.Figure:
    """Learning per second: mean whole-image Dice over a run's classes against its training seconds.

    One line per run, labelled with experiment, training mode, what a step held
    (:func:`minibatch_description`) and seed, each with its own marker; the x-axis is the
    ``train_seconds`` column of ``metrics.csv`` (wall clock of training, evaluations excluded).
    """
    timed = [r for r in runs if "train_seconds" in r.metrics and r.metrics["train_seconds"].notna().any()]
    if not timed:
        raise ValueError("no run records training seconds (metrics.csv has no train_seconds column)")
    figure, ax = plt.subplots(figsize=(6, 4))
    linestyles = dict(zip(dict.fromkeys(r.training_mode for r in timed), LINESTYLES))  # one per training mode
    for i, run in enumerate(timed):
        curve = run.metrics.groupby("step").agg(seconds=("train_seconds", "first"), dice=("dice", "mean")).sort_values("seconds")
        step = minibatch_description(run)
        ax.plot(
            curve["seconds"], curve["dice"], marker=MARKERS[i % len(MARKERS)], color=EXPERIMENT_COLOURS[run.experiment],
            linestyle=linestyles.get(run.training_mode, "-"),
            label=f"{run.number}: {run.experiment}, training={run.training_mode}{f' ({step})' if step else ''}, seed {run.seed}",
        )
    ax.set_xlabel("training seconds (evaluations excluded)")
    ax.set_ylabel("mean whole-image Dice over the classes")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_learning_curves(runs: Sequence[RunRecord]) -> plt.Figure:
    """Fig. 2: one panel per class, Dice against mini-batches per task, one line per run.

    Colours are the experiments of Fig. 1; a run of an experiment with a seed other than the
    lowest seen for it is dashed (the paper's repeated experiment 1).
    """
    classes = [(task, cls) for task in TASK_ORDER for cls in TASKS[task].classes]
    present = [(t, c) for t, c in classes if any(((r.metrics["task"] == t) & (r.metrics["class"] == c)).any() for r in runs)]
    if not present:
        raise ValueError("the runs hold no learning-curve rows (metrics.csv is empty)")
    n_cols = 3
    n_rows = -(-len(present) // n_cols)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 3 * n_rows), squeeze=False, sharex=True)
    first_seed = {}
    for run in runs:
        first_seed.setdefault(run.experiment, run.seed)
    for ax, (task, cls) in zip(axes.flat, present):
        for run in runs:
            rows = run.metrics[(run.metrics["task"] == task) & (run.metrics["class"] == cls)].sort_values("minibatches_per_task")
            if rows.empty:
                continue
            dashed = run.seed != first_seed[run.experiment]
            ax.plot(
                rows["minibatches_per_task"], rows["dice"], color=EXPERIMENT_COLOURS[run.experiment],
                linestyle="--" if dashed else "-", marker=".",
                label=f"{run.number}: {run.experiment}" + (f" (seed {run.seed})" if dashed else ""),
            )
        ax.set_title(f"{task}: {cls.replace('_', ' ')}", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("mini-batches per task")
    for ax in axes[:, 0]:
        ax.set_ylabel("Dice")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="lower right", fontsize=8, title="experiment")
    figure.suptitle("Learning curves: whole-image Dice on held-out images")
    figure.tight_layout()
    return figure


@dataclass
class SegmentationPanel:
    """One task's row of Fig. 3: an axial slice, its reference and each network's segmentation."""

    task: str
    case_id: str
    slice_index: int
    image: np.ndarray
    reference: np.ndarray
    segmentations: dict[str, np.ndarray] = field(default_factory=dict)  # experiment -> task-local labels
    patch_size: int = 51


def segmentation_panels(runs: Sequence[RunRecord], data_overrides: dict | None = None) -> list[SegmentationPanel]:
    """For the first test image of each task: one axial slice segmented by every run's last checkpoint.

    Only the slice's slab is inferred (the stack over the axial slice and the sagittal and
    coronal slices cropped to its margin), so this is quick even on a CPU.
    """
    from mtseg.checkpoint import load_checkpoint, test_datamodule, threshold_for
    from mtseg.data.held_out import HeldOutImage
    from mtseg.evaluation.whole_image import example_slice
    from mtseg.inference.dense import segment_volume
    from mtseg.evaluation.operating_point import task_labels, thresholded

    panels: dict[str, SegmentationPanel] = {}
    images: dict[str, HeldOutImage] = {}
    for run in runs:
        if run.checkpoint is None:
            continue
        loaded = load_checkpoint(run.checkpoint)
        space = loaded.label_space
        for task in space.tasks:
            if task not in images:
                datamodule = test_datamodule(loaded, data_overrides or {})
                for t in space.tasks:
                    if t not in images:
                        images[t] = HeldOutImage.from_subject(datamodule.subjects[t]["test"][0])
            image = images[task]
            z = example_slice(image.reference)
            panel = panels.setdefault(
                task,
                SegmentationPanel(
                    task, image.case_id, z, image.volume.interior[..., z].numpy().copy(),
                    image.reference[..., z].numpy().copy(), patch_size=loaded.net.patch_size,
                ),
            )
            if run.experiment in panel.segmentations:
                continue  # one network per experiment (the first seed)
            one_slice = torch.zeros(image.volume.shape, dtype=torch.bool)
            one_slice[..., z] = True  # dense inference of this slice alone (its slab), every channel
            probabilities = segment_volume(loaded.net, image.volume, one_slice, None, progress=False).probabilities[..., z]
            outside = ~image.mask[..., z]  # as in dense inference: background outside the sampling mask
            labels = probabilities.argmax(0).masked_fill_(outside, 0)
            probability = probabilities[space.task_classes(task)[1]].masked_fill(outside, 0.0)
            threshold = threshold_for(loaded, task)[0] if thresholded(task) else None
            panel.segmentations[run.experiment] = task_labels(space, task, labels, probability, threshold).numpy()
    return [panels[t] for t in TASK_ORDER if t in panels]


def _show(ax, image: np.ndarray, labels: np.ndarray | None, title: str, border: str | None = None) -> None:
    # RAS axial slice (x, y): anterior up, the subject's right on the right (neurological convention)
    ax.imshow(image.T, cmap="gray", origin="lower")
    if labels is not None:
        ax.imshow(np.ma.masked_equal(labels.T, 0), cmap=LABEL_COLOURS, vmin=0, vmax=LABEL_COLOURS.N - 1,
                  origin="lower", interpolation="nearest", alpha=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if border:
        for spine in ax.spines.values():
            spine.set_edgecolor(border)
            spine.set_linewidth(3)


def plot_segmentations(panels: Sequence[SegmentationPanel]) -> plt.Figure:
    """Fig. 3: per task, the image (with one input patch), the reference and each experiment's segmentation."""
    if not panels:
        raise ValueError("no segmentations to show (the runs have no checkpoints/last.ckpt)")
    n_cols = 2 + max(len(p.segmentations) for p in panels)
    figure, axes = plt.subplots(len(panels), n_cols, figsize=(2.6 * n_cols, 2.8 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels):
        _show(row[0], panel.image, None, f"{panel.task}: {panel.case_id}, z={panel.slice_index}")
        cx, cy = np.array(panel.image.shape) // 2
        half = panel.patch_size // 2
        row[0].add_patch(Rectangle((cx - half, cy - half), panel.patch_size, panel.patch_size, fill=False, edgecolor="yellow", linewidth=1))
        _show(row[1], panel.image, panel.reference, "reference")
        ordered = sorted(panel.segmentations, key=list(EXPERIMENTS).index)
        for ax, experiment in zip(row[2:], ordered):
            number = list(EXPERIMENTS).index(experiment) + 1
            _show(ax, panel.image, panel.segmentations[experiment], f"{number}: {experiment}", EXPERIMENT_COLOURS[experiment])
        for ax in row[2 + len(ordered):]:
            ax.axis("off")
    figure.suptitle("Segmentations of one held-out image per task (borders: experiment colours of Fig. 2)")
    figure.tight_layout()
    return figure


def results_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """The results table: final whole-image evaluation of every run, one row per run and class."""
    from mtseg.evaluation.whole_image import results_table

    rows = []
    for run in runs:
        if run.summary is None or not run.summary.get("evaluation"):
            continue
        for row in results_table({run.experiment: run.summary["evaluation"]}):
            rows.append({"experiment_number": run.number, "seed": run.seed, **row,
                         "minibatches_per_task": run.summary["minibatches_per_task"]})
    return pd.DataFrame(rows)


def multitask_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim, per class: |Dice(multi-task) − Dice(single-task)| beside the seed spread.

    Args:
        table: :func:`results_frame` of the runs.

    Returns:
        One row per class of a task with a single-task run: ``task, class``,
        ``single_task_dice`` (the single-task experiment, lowest seed), ``seed_spread``
        (max − min Dice over the single-task experiment's seeds; NaN with one seed), one
        ``abs_diff_exp_<N>`` column per multi-task experiment with the task (lowest seed),
        and their maximum ``max_abs_diff``.
    """
    rows = []
    if table.empty:
        return pd.DataFrame(rows)
    lowest = table.sort_values("seed").drop_duplicates(["experiment", "task", "class"])
    for (task, cls), group in table.groupby(["task", "class"], sort=False):
        single = group[group["experiment"] == task]
        if single.empty:
            continue
        reference = float(single.sort_values("seed")["mean_dice"].iloc[0])
        row = {
            "task": task,
            "class": cls,
            "single_task_dice": reference,
            "seed_spread": float(single["mean_dice"].max() - single["mean_dice"].min()) if single["seed"].nunique() > 1 else float("nan"),
        }
        multi = lowest[(lowest["task"] == task) & (lowest["class"] == cls) & (lowest["experiment"] != task)]
        diffs = {f"abs_diff_exp_{int(r.experiment_number)}": abs(float(r.mean_dice) - reference) for r in multi.sort_values("experiment_number").itertuples()}
        row.update(diffs)
        row["max_abs_diff"] = max(diffs.values()) if diffs else float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    diffs = sorted((c for c in frame.columns if c.startswith("abs_diff_exp_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    return frame[["task", "class", "single_task_dice", "seed_spread", *diffs, "max_abs_diff"]]
