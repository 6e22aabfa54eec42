"""What a training run prints: its own progress and results, not the libraries' notices.

- :func:`quiet_libraries` drops the notices of Lightning, PyTorch and W&B that say nothing
  about the run (advertising tips, deprecations inside Lightning, a warning about the
  length of the training stream, which is exact by construction).
- :class:`LineProgress` prints a progress line (step, mini-batches per task, loss, elapsed
  time, time left) at most every ``seconds`` when the output is not a terminal (``make demo |
  tee log``, a SLURM log), where Lightning's progress bar shows nothing.
- :class:`WandbLogger` is Lightning's, without the ``anonymous`` setting that W&B now warns about.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

#: Warnings of libraries that say nothing about the run (regular expressions of their messages).
LIBRARY_NOTICES = (
    r".*does not have many workers.*",  # the queues serve samples from the main process on purpose (>10x faster than a step)
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning
    r".*Your `IterableDataset` has `__len__` defined.*",  # the stream's length is exact: one process, no workers
    # on resume: mtseg's checkpoints carry the sampling state and the module restores it, so a resumed run
    # ends with the uninterrupted run's weights (tests/test_resume.py); Lightning cannot see that
    r".*dataloader is not resumable.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


class _DropFullCheckpointNotice(logging.Filter):
    """Lightning announces that a checkpoint it saves holds more than the weights (its ``weights_only`` saving
    option, unrelated to loading): mtseg always saves full checkpoints, for exact resume, and loads every file
    with ``torch.load(weights_only=True)`` (:func:`mtseg.checkpoint.load_checkpoint`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was not set, defaulting to" not in record.getMessage()


def quiet_libraries() -> None:
    """Silence :data:`LIBRARY_NOTICES` and Lightning's advertising tips for this process."""
    for message in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(_DropFullCheckpointNotice())


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` without the deprecated ``anonymous`` setting (W&B warns whenever it is passed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (standard output) is a terminal, where Lightning's progress bar shows."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress(L.Callback):
    """One line of progress at most every ``seconds`` (and at the last step) when stdout is not a terminal.

    Args:
        seconds: Least time between two lines.
        stream: Where to print (standard output).
    """

    def __init__(self, seconds: float, stream=None):
        self.seconds = seconds
        self.stream = stream or sys.stdout
        self._start = self._last = 0.0
        self._first_step = 0
        self._active = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._first_step = trainer.global_step
        self._active = not is_terminal(self.stream)  # a terminal has Lightning's progress bar

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now, step, total = time.perf_counter(), trainer.global_step, trainer.max_steps
        if not self._active or not trainer.is_global_zero or (now - self._last < self.seconds and step < total):
            return
        self._last = now
        done = step - self._first_step
        left = (now - self._start) / done * (total - step) if done else float("nan")
        loss = trainer.callback_metrics.get("train/loss")
        print(
            f"step {step}/{total} ({pl_module.minibatches_per_task(step):g} mini-batches per task)"
            + ("" if loss is None else f", loss {float(loss):.4f}")
            + f", {now - self._start:.0f} s elapsed, about {left:.0f} s of training left",
            file=self.stream,
            flush=True,
        )
