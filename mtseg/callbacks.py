"""Callbacks that write the run directory's learning-curve table."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L

#: Columns of ``metrics.csv``: one row per evaluation and class.
METRICS_COLUMNS = ("step", "minibatches_per_task", "task", "class", "dice")


class DiceCSVWriter(L.Callback):
    """Append the per-class Dice of every validation to ``metrics.csv``.

    Args:
        path: The CSV file; created with a header on the first evaluation.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not pl_module.latest_dice:
            return
        n_tasks = len(pl_module.label_space.tasks)
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(METRICS_COLUMNS)
            for (task, cls), dice in pl_module.latest_dice.items():
                writer.writerow((trainer.global_step, trainer.global_step / n_tasks, task, cls, dice))
