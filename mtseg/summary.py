"""The run's ``summary.json`` and the Dice table printed at the end of training."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtseg.module import MultiTaskSegmentationModule


def write_summary(
    path: Path,
    module: MultiTaskSegmentationModule,
    cfg: DictConfig,
    steps: int,
    train_seconds: float,
    baseline: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict:
    """Write ``summary.json``: experiment, classes, parameter count, schedule and final Dice."""
    space = module.label_space
    dice: dict[str, dict[str, float | None]] = {task: {} for task in space.tasks}
    for (task, cls), value in module.latest_dice.items():
        dice[task][cls] = None if math.isnan(value) else value
    summary = {
        **space.to_dict(),
        "n_classes": space.n_classes,
        "n_params": module.n_params,
        "model": OmegaConf.to_container(cfg.model),
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,
        "steps": steps,
        "minibatches_per_task": steps / len(space.tasks),
        "train_seconds": round(train_seconds, 1),
        "dice": dice,
        "dice_on": "class-balanced held-out voxels (data.val_samples_per_class per class and task)",
        "intensity_baseline_dice": {
            kind: {t: {c: None if math.isnan(d) else d for c, d in v[t].items()} for t in space.tasks}
            for kind, v in baseline.items()
        },
    }
    path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    return summary


def dice_table(summary: Mapping) -> str:
    """Plain-text table: Dice per class of the CNN beside the intensity-only baseline."""
    lines = [
        f"Final Dice, experiment {summary['experiment']} "
        f"({summary['minibatches_per_task']:.0f} mini-batches per task of {summary['batch_size']} samples)",
        f"{'':<37} {'CNN':>8} {'intensity-only':>15} {'intensity-only':>15}",
        f"{'task':<8} {'class':<28} {'voxels*':>8} {'voxels*':>15} {'whole images':>15}",
    ]
    baseline = summary["intensity_baseline_dice"]
    for task, classes in summary["dice"].items():
        for cls, value in classes.items():
            row = (value, baseline["balanced_voxels"][task].get(cls), baseline["whole_images"][task].get(cls))
            value, voxels, images = (float("nan") if v is None else v for v in row)
            lines.append(f"{task:<8} {cls:<28} {value:>8.3f} {voxels:>15.3f} {images:>15.3f}")
    lines.append(
        "* Dice on the class-balanced held-out voxels of validation (every class equally often); "
        "whole images: every eligible held-out voxel, pooled per task."
    )
    return "\n".join(lines)
