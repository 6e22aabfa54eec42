"""The run's ``summary.json`` and the Dice table printed at the end of training."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtseg.training.module import MultiTaskSegmentationModule
from mtseg.runtime.provenance import command_line, provenance


def _or_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def write_summary(
    path: Path,
    module: MultiTaskSegmentationModule,
    cfg: DictConfig,
    steps: int,
    train_seconds: float,
    eval_seconds: float,
    baseline: Mapping[str, Mapping[str, float]],
) -> dict:
    """Write ``summary.json``: experiment, classes, parameter count, schedule and the final evaluation."""
    space = module.label_space
    dice: dict[str, dict[str, float | None]] = {task: {} for task in space.tasks}
    for (task, cls), value in module.latest_dice.items():
        dice[task][cls] = _or_none(value)
    evaluation = module.latest_evaluation
    summary = {
        **space.to_dict(),
        "n_classes": space.n_classes,
        "n_params": module.n_params,
        "model": OmegaConf.to_container(cfg.model),
        "seed": cfg.seed,
        "training": module.training_mode.config(),
        "training_mode": module.training_mode.name,
        "minibatch": module.training_mode.describe(),  # what one optimiser step held
        "steps": steps,
        "minibatches_per_task": module.minibatches_per_task(steps),
        "train_seconds": round(train_seconds, 1),
        "evaluation_seconds": round(eval_seconds, 1),
        "dice": dice,
        "dice_on": "whole held-out images: mean over images (paper §4)",
        "evaluation": None if evaluation is None else evaluation.to_dict(),
        "intensity_baseline_dice": {t: {c: _or_none(d) for c, d in baseline[t].items()} for t in space.tasks},
        # where the run ran: commit, command, machine, versions (mtseg.runtime.provenance), for results built from it
        "provenance": provenance(command_line("mtseg.train"), time.time() - train_seconds),
    }
    path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    return summary


def dice_table(summary: Mapping) -> str:
    """Plain-text table: whole-image Dice per class of the CNN beside the intensity-only baseline."""
    lines = [
        f"Final Dice, experiment {summary['experiment']} "
        f"({summary['minibatches_per_task']:.0f} mini-batches per task of {summary['minibatch']}, training={summary['training_mode']})",
        f"{'task':<8} {'class':<28} {'CNN':>8} {'threshold':>10} {'confusion %':>12} {'intensity-only':>15}",
    ]
    baseline = summary["intensity_baseline_dice"]
    tasks = (summary.get("evaluation") or {}).get("tasks", {})
    for task, classes in summary["dice"].items():
        result = tasks.get(task, {})
        threshold = result.get("threshold")
        confusion = result.get("cross_task_confusion_percent", {}).get("median")
        for cls, value in classes.items():
            cells = [float("nan") if v is None else v for v in (value, baseline[task].get(cls))]
            lines.append(
                f"{task:<8} {cls:<28} {cells[0]:>8.3f} {'argmax' if threshold is None else f'{threshold:.3f}':>10} "
                f"{'-' if confusion is None else f'{confusion:.4f}':>12} {cells[1]:>15.3f}"
            )
    lines.append(
        "CNN: mean Dice over the held-out images, whole images (brain: argmax; breast, CTA: the PR operating "
        "point's threshold); confusion: median % of voxels labelled with another task's class; intensity-only: "
        "per-voxel intensity classifier, pooled held-out voxels."
    )
    return "\n".join(lines)
