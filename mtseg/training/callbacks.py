"""Callbacks of a training run: its clock, its learning-curve table, the save on SIGTERM, freed memory kept
for reuse and W&B overlays. ``conf/callbacks/default.yaml`` lists the ones a run uses (with Lightning's
``ModelCheckpoint``); a user adds one there (docs/training.md)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mtseg.runtime.cpu_allocator import reuse_freed_memory
from mtseg.tasks import TASKS

#: Columns of ``metrics.csv``: one row per evaluation and class. ``train_seconds``: wall-clock
#: seconds of training up to the evaluation, evaluations excluded.
METRICS_COLUMNS = ("step", "minibatches_per_task", "task", "class", "dice", "train_seconds")


class RunClock(L.Callback):
    """The run's wall clock: seconds of training (evaluations excluded) and of evaluations, earlier parts
    of a resumed run included (kept in checkpoints). ``mtseg.train`` always adds it: ``metrics.csv``
    and ``summary.json`` read their times from it."""

    def __init__(self):
        self._start: float | None = None
        self._evaluation_start: float | None = None
        #: Evaluation seconds of this process.
        self.evaluation_seconds = 0.0
        #: Training and evaluation seconds before this process (a resumed run's earlier part).
        self.previous_train_seconds = 0.0
        self.previous_evaluation_seconds = 0.0

    @staticmethod
    def of(trainer: L.Trainer) -> RunClock:
        """The trainer's clock."""
        for callback in trainer.callbacks:
            if isinstance(callback, RunClock):
                return callback
        raise RuntimeError("the trainer has no RunClock callback (mtseg.train adds one)")

    @property
    def started(self) -> bool:
        """Whether training has started in this process."""
        return self._start is not None

    def training_seconds(self) -> float:
        """Training wall-clock seconds so far, evaluations excluded, earlier parts of a resumed run included."""
        if self._start is None:
            return self.previous_train_seconds
        return self.previous_train_seconds + time.perf_counter() - self._start - self.evaluation_seconds

    def total_evaluation_seconds(self) -> float:
        return self.previous_evaluation_seconds + self.evaluation_seconds

    def state_dict(self) -> dict:
        return {"train_seconds": self.training_seconds(), "evaluation_seconds": self.total_evaluation_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.previous_train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.previous_evaluation_seconds = float(state_dict.get("evaluation_seconds", 0.0))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # checkpoints written before the clock was one callback kept its two halves under these keys
        states = checkpoint.get("callbacks") or {}
        if type(self).__qualname__ not in states and ("DiceCSVWriter" in states or "EvaluationTimer" in states):
            self.previous_train_seconds = float(states.get("DiceCSVWriter", {}).get("train_seconds", 0.0))
            self.previous_evaluation_seconds = float(states.get("EvaluationTimer", {}).get("seconds", 0.0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._evaluation_start is not None:
            self.evaluation_seconds += time.perf_counter() - self._evaluation_start
            self._evaluation_start = None


class DiceCSVWriter(L.Callback):
    """Append the per-class whole-image Dice of every evaluation to ``metrics.csv``, with the training
    seconds of the run's :class:`RunClock` (which must come before it in the callbacks).

    Args:
        path: The CSV file; created with a header on the first evaluation.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        clock = RunClock.of(trainer)
        train_seconds = clock.training_seconds() if clock.started else float("nan")
        if trainer.sanity_checking or not pl_module.latest_dice or not trainer.is_global_zero:  # one file under DDP
            return
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(METRICS_COLUMNS)
            for (task, cls), dice in pl_module.latest_dice.items():
                writer.writerow((trainer.global_step, pl_module.minibatches_per_task(trainer.global_step), task, cls, dice, round(train_seconds, 3)))


class KeepFreedMemory(L.Callback):
    """Keep freed CPU memory for reuse once training starts (:mod:`mtseg.runtime.cpu_allocator`).

    Training starts after the data module has prepared its volumes, so the temporaries of
    preprocessing are still returned to the system as usual; only the steps' activations,
    allocated and freed every step, are kept.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reuse_freed_memory()


class SaveOnSigterm(L.Callback):
    """Save ``path`` (the run's ``last.ckpt``) when the run is stopped by SIGTERM.

    Lightning turns SIGTERM into a ``SIGTERMException`` after the current step (or evaluation
    batch); this saves the checkpoint before Lightning tears the run down, so ``ckpt_path=``
    can resume it exactly. Ctrl+C raises wherever Python happens to be (inside an optimiser
    step, say), so it saves nothing: ``last.ckpt`` stays the last evaluation's.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)  # the full checkpoint: all a resume needs (optimiser, sampling state)


def overlay_masks(reference: np.ndarray, prediction: np.ndarray, task: str) -> dict:
    """W&B mask overlays (reference and prediction, task-local labels) with the task's class names."""
    class_labels = {i + 1: name for i, name in enumerate(TASKS[task].classes)} | {0: "background"}
    return {
        "reference": {"mask_data": reference.astype(np.uint8), "class_labels": class_labels},
        "prediction": {"mask_data": prediction.astype(np.uint8), "class_labels": class_labels},
    }


class WandbSegmentationOverlays(L.Callback):
    """At each evaluation, log one axial slice per task to W&B: image with reference and prediction masks."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluation = pl_module.latest_evaluation
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or evaluation is None or not loggers:
            return
        import wandb

        for logger in loggers:
            for task, example in evaluation.examples.items():
                image = example.image
                span = float(np.ptp(image)) or 1.0
                logger.experiment.log(
                    {
                        f"val/overlay/{task}": wandb.Image(
                            np.ascontiguousarray(((image - image.min()) / span * 255).astype(np.uint8).T[::-1]),
                            masks={k: {**v, "mask_data": v["mask_data"].T[::-1].copy()} for k, v in overlay_masks(example.reference, example.prediction, task).items()},
                            caption=f"{example.case_id}, axial slice {example.slice_index}",
                        ),
                        "trainer/global_step": trainer.global_step,
                    }
                )
