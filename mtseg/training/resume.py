"""Resuming a run: ``ckpt_path=<run>/checkpoints/last.ckpt`` continues it in a new run directory.

The checkpoint must be a safe mtseg checkpoint of the same experiment, trained with the same
settings (:data:`RESUME_SETTINGS`; checkpoints written before the training modes owned their
settings are compared in today's form). The new run starts its ``metrics.csv`` with the old
run's rows up to the checkpoint's step (:func:`continue_metrics`); the sampling and random state
come back with the checkpoint (:class:`~mtseg.data.minibatch_stream.MinibatchStream`,
:meth:`~mtseg.training.module.MultiTaskSegmentationModule.on_load_checkpoint`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtseg.checkpoint import LoadedCheckpoint, load_checkpoint
from mtseg.nifti import atomic_write_bytes
from mtseg.settings import MOVED_SETTINGS
from mtseg.tasks import experiment_tasks
from mtseg.training.callbacks import METRICS_COLUMNS
from mtseg.training.mode import TrainingMode

#: Keys of the data config that moved to the training mode (:data:`mtseg.settings.MOVED_SETTINGS`).
MOVED_DATA_KEYS = frozenset(old.removeprefix("data.") for old in MOVED_SETTINGS if old.startswith("data."))


#: Settings a resumed run must share with its checkpoint: (this run's config key, stored hyper-parameter).
RESUME_SETTINGS = (("model", "model"), ("training", "training"), ("schedule", "schedule"), ("seed", "seed"),
                   ("optimizer.lr", "lr"), ("optimizer.betas", "betas"),
                   ("optimizer.lr_decay", "lr_decay"), ("optimizer.warmup", "warmup"), ("data", "data"), ("preprocessing", "preprocessing"))


def resumed_checkpoint(cfg: DictConfig, training: TrainingMode) -> LoadedCheckpoint | None:
    """``ckpt_path``, loaded and checked: a safe mtseg checkpoint of this experiment with this run's settings
    (``training``: this run's training mode)."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path)
    loaded = load_checkpoint(path)  # weights only, clear errors for a foreign or damaged file
    stored = loaded.module.hparams
    tasks = list(experiment_tasks(cfg.experiment))
    if list(stored["tasks"]) != tasks:
        raise ValueError(f"ckpt_path={path} belongs to experiment {loaded.label_space.experiment}, not {cfg.experiment}")
    if stored.get("data") is None:
        raise ValueError(f"ckpt_path={path} was written by an older mtseg that does not store its data config; it cannot be resumed")
    derived = {  # as training stores them
        "data": without_roots(data_without_preprocessing(cfg.data, tasks)),
        "preprocessing": {t: OmegaConf.to_container(cfg.data[t].preprocessing, resolve=True) for t in tasks},
        "training": training.config(),
    }
    # the loaded module holds its training mode's config in today's form (older forms are converted when the
    # module is built); its data config may still hold the settings that moved to the training mode
    stored = {**stored, "data": without_roots(without_moved(stored["data"]))}
    for key, name in RESUME_SETTINGS:
        current = derived[key] if key in derived else OmegaConf.select(cfg, key)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if stored.get(name) is None:
            raise ValueError(f"ckpt_path={path} was written by an older mtseg that does not store its {key}; it cannot be resumed")
        if _plain(stored[name]) != _plain(current):
            raise ValueError(
                f"ckpt_path={path} was trained with {key}={_plain(stored[name])}, this run has {key}={_plain(current)}; "
                "a resumed run keeps its settings (start a new run to change them)"
            )
    return loaded


def without_moved(data: dict) -> dict:
    """The data config without the settings that moved to the training mode (``batch_size``, ``queue``:
    stored by checkpoints before, ``null`` since)."""
    return {k: v for k, v in data.items() if k not in MOVED_DATA_KEYS}


def without_roots(data: dict) -> dict:
    """The data config without where the data lies (``root``, at the top and per task): a resumed
    run may read the same data from another place (a node's scratch disk, say)."""
    return {k: without_roots(v) if isinstance(v, dict) else v for k, v in data.items() if k != "root"}


def _plain(value):
    """Configs compared as plain JSON-like values (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def data_without_preprocessing(data: DictConfig, tasks) -> dict:
    """The data config as checkpoints store it: the experiment's tasks without their ``preprocessing``
    (the module's ``preprocessing`` holds it; :func:`mtseg.checkpoint.load_checkpoint` puts it back),
    and without the settings that moved to the training mode."""
    plain = without_moved(OmegaConf.to_container(data, resolve=True))
    for task in tasks:
        plain[task].pop("preprocessing", None)
    return plain


def continue_metrics(checkpoint: Path, step: int, target: Path) -> None:
    """Start ``target`` with the rows of the checkpoint's run (``<run>/metrics.csv``) up to ``step``."""
    source = checkpoint.parent.parent / "metrics.csv"
    if not source.is_file():
        return
    with source.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_bytes(target, write)
