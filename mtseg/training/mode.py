"""A training mode: everything that decides what one optimiser step trains on, in one object.

``conf/training/<name>.yaml`` selects a mode through ``_target_``; :mod:`mtseg.train` builds it
with Hydra and hands the same object to the data module and the Lightning module. A mode decides

1. what one item of a task's TorchIO queue is (:meth:`TrainingMode.draw_items`: a block of
   class-balanced sample positions of one training image) and how many a queue holds (``queue``);
2. how a mini-batch of indices is drawn from the task queues (:meth:`TrainingMode.draw_minibatch`);
3. how the mini-batch is gathered on the training device from the training volumes
   (:meth:`TrainingMode.gather`), and
4. its loss (:meth:`TrainingMode.loss`),

plus the checks and the schedule's unit that follow from those. Nothing outside a mode's class
looks at the mode's name or at the keys of its mini-batches. Adding a mode takes a subclass in
``mtseg/training/`` and a YAML in ``conf/training/`` (``docs/development.md``, Adding a training mode).

Checkpoints store :meth:`TrainingMode.config`; :func:`training_mode_from_config` rebuilds the
mode from it, importing only classes of :mod:`mtseg.training` (a checkpoint names no code to run),
and also reads the configs that checkpoints stored before modes were objects.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torchio as tio

from mtseg.data.minibatch_stream import MinibatchStream
from mtseg.data.torchio_adapters import BlockQueue, BlockSampler
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.model import TriplanarCNN

log = logging.getLogger(__name__)

#: Settings of every training queue (``training.queue``).
QUEUE_SETTINGS = ("max_length", "samples_per_volume", "block")
#: The package whose classes a stored training config may name.
MODES_PACKAGE = "mtseg.training."
#: Names that configs and checkpoints used before a mode was renamed: old name -> current name.
RENAMED_MODES = {"dense": "cubes"}


class TrainingMode:
    """What one optimiser step trains on; subclasses are the modes (``conf/training``).

    Args:
        queue: ``max_length`` (items held per task), ``samples_per_volume`` (items per visit of an
            image that holds every class) and ``block`` (items per queue entry, drawn from one image),
            counted in the mode's items (samples or cubes).
        background_near_tissue: A departure from the paper (``None``: the paper's sampling): this share
            of each task's background centres is drawn within ``model.depth`` voxels of labelled tissue
            (:func:`~mtseg.data.sampling.draw_balanced_centres`), the rest anywhere above the threshold.
        renamed_from: The old config name the mode was selected by (``training=dense``): a warning
            names the current one.
    """

    #: The mode's name: its file in ``conf/training`` and its name in tables.
    name: ClassVar[str] = ""
    #: Side of a TorchIO patch of one item (TorchIO checks it against each volume's shape).
    patch_size: int = 1

    def __init__(self, queue: Mapping[str, int], background_near_tissue: float | None = None, renamed_from: str | None = None):
        if not isinstance(queue, Mapping):
            raise ValueError(f"training.queue must hold {', '.join(QUEUE_SETTINGS)}, got {queue!r}")
        self.queue = {knob: queue.get(knob) for knob in QUEUE_SETTINGS}
        missing = [knob for knob, value in self.queue.items() if value is None]
        if missing:
            raise ValueError(f"training.queue.{missing[0]} is not set")
        block, per_visit, held = (positive_int(f"training.queue.{k}", self.queue[k]) for k in ("block", "samples_per_volume", "max_length"))
        if not 1 <= block <= per_visit <= held:
            raise ValueError(
                "training.queue: need 1 <= block <= samples_per_volume <= max_length, got "
                f"block={block}, samples_per_volume={per_visit}, max_length={held}"
            )
        self.queue = {"max_length": held, "samples_per_volume": per_visit, "block": block}
        if background_near_tissue is not None and (isinstance(background_near_tissue, bool) or not isinstance(background_near_tissue, (int, float))
                                                   or not 0.0 <= background_near_tissue <= 1.0):
            raise ValueError(f"training.background_near_tissue must be a share in [0, 1] or null, got {background_near_tissue!r}")
        self.background_near_tissue = None if background_near_tissue is None else float(background_near_tissue)
        if renamed_from:
            log.warning("training=%s is now training=%s; the old name still works", renamed_from, self.name)

    # --- settings -------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The mode's own settings besides ``queue`` (as in its YAML)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The mode as checkpoints store it: its class and settings (:func:`training_mode_from_config`)."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **self.settings(), "queue": dict(self.queue),
                "background_near_tissue": self.background_near_tissue}

    def describe(self) -> str:
        """What one optimiser step holds, for tables: ``210 samples`` or ``32 cube(s) of 2^3 voxels``."""
        raise NotImplementedError

    def items_per_step(self) -> tuple[int, str]:
        """Queue items in one mini-batch (over all processes) and the setting that fixes it."""
        raise NotImplementedError

    def steps_per_task_minibatch(self, n_tasks: int) -> int:
        """Optimiser steps that give each of ``n_tasks`` tasks one mini-batch's worth of data (the schedule's unit)."""
        raise NotImplementedError

    def check_tasks(self, n_tasks: int, world_size: int = 1) -> None:
        """Refuse settings that cannot give each of ``world_size`` processes an equal share of a mini-batch."""
        per_step, knob = self.items_per_step()
        if per_step % world_size:
            raise ValueError(
                f"{knob}={per_step} cannot be split over {world_size} processes (trainer.devices x trainer.num_nodes): "
                "each needs an equal share"
            )

    # --- sampling (host) ------------------------------------------------------------------------------

    def draw_items(self, subject: tio.Subject, n: int, depth: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` class-balanced items of one prepared training ``subject`` (a dict of ``(n, ...)`` index tensors)."""
        raise NotImplementedError

    def sampler(self, depth: int, generator: torch.Generator) -> BlockSampler:
        """The TorchIO sampler of one task's queue: blocks of ``queue.block`` items drawn with ``generator``."""
        return BlockSampler(lambda subject, n: self.draw_items(subject, n, depth, generator), self.queue["block"], self.patch_size)

    def draw_minibatch(
        self, queues: Mapping[str, BlockQueue], count: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One mini-batch of indices from the task ``queues`` (in the experiment's task order), ``count``
        items in all for this process, with the stream's ``generator``."""
        raise NotImplementedError

    def minibatch_stream(self, new_queues, n_tasks: int, world_size: int = 1, **stream) -> MinibatchStream:
        """The mini-batches of one process (of ``world_size``): ``new_queues(k)`` gives the task queues of
        interval ``k``; ``stream``: ``length``, ``start``, ``interval``, ``seed``, ``rank`` of
        :class:`~mtseg.data.minibatch_stream.MinibatchStream`."""
        self.check_tasks(n_tasks, world_size)
        count = self.items_per_step()[0] // world_size
        return MinibatchStream(new_queues, lambda queues, generator: self.draw_minibatch(queues, count, generator), **stream)

    def check_training_volumes(self, task: str, subjects: list[tio.Subject]) -> None:
        """Refuse prepared training images of ``task`` that the mode cannot draw from (default: none)."""

    # --- the training device --------------------------------------------------------------------------

    def gather(self, volumes: TrainingVolumes, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mini-batch of indices ``batch`` turned into network inputs and targets on ``volumes``' device."""
        raise NotImplementedError

    def loss(self, net: TriplanarCNN, batch: Mapping[str, torch.Tensor], n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The gathered mini-batch's loss and each task's (detached) loss."""
        raise NotImplementedError

    def prepare_network(self, net: TriplanarCNN) -> None:
        """Set up ``net`` for training in this mode (default: nothing)."""

    def check_fit(self, net: TriplanarCNN, n_tasks: int, device: torch.device) -> None:
        """Refuse a fit that cannot run (e.g. a step that does not fit in memory); default: none."""


def positive_int(name: str, value: Any) -> int:
    """``value`` of setting ``name`` if it is a whole number >= 1 (not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def legacy_training_config(training: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A training config as checkpoints stored it before modes were objects (``{"mode": "patch"}`` with
    ``data.batch_size`` and ``data.queue``, or ``{"mode": "dense", "cube": ..., ...}``), in today's form;
    today's form passes unchanged."""
    training = dict(training)
    if "_target_" in training:
        return training
    if "mode" not in training:
        raise ValueError(f"not a training config (neither _target_ nor mode): {training}")
    mode = str(training.pop("mode"))
    name = RENAMED_MODES.get(mode, mode)
    if name not in ("patch", "cubes"):  # the only modes there were before modes were objects
        raise ValueError(f"unknown training mode {mode!r} in a stored training config")
    if name == "patch":
        data = dict(data or {})
        training = {"batch_size": data.get("batch_size", 210), "queue": data.get("queue"), **training}
        return {"_target_": "mtseg.training.patches.PatchTraining", **training}
    return {"_target_": "mtseg.training.cubes.CubeTraining", **training}


def training_mode_class(target: str) -> type[TrainingMode]:
    """The mode class a stored config names: only a :class:`TrainingMode` subclass in :mod:`mtseg.training`
    is imported, so a checkpoint or run folder cannot name code to run."""
    module, _, name = str(target).rpartition(".")
    if not module.startswith(MODES_PACKAGE) or not name.isidentifier():
        raise ValueError(f"training mode {target!r} is not a class of {MODES_PACKAGE.rstrip('.')}")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"training mode {target!r} does not exist in this mtseg ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, TrainingMode)):
        raise ValueError(f"{target!r} is not a training mode")
    return cls


def training_mode_from_config(training: Mapping[str, Any] | None, data: Mapping[str, Any] | None = None) -> TrainingMode:
    """The mode of a stored training config (:meth:`TrainingMode.config`, or a legacy one: see
    :func:`legacy_training_config`); ``None`` (checkpoints that stored none) is the paper's mode."""
    config = legacy_training_config(training or {"mode": "patch"}, data)
    settings = {k: v for k, v in config.items() if k != "_target_"}
    try:
        return training_mode_class(config["_target_"])(**settings)
    except TypeError as error:
        raise ValueError(f"training config {config}: {error}") from None


def training_mode_name(training: Mapping[str, Any] | None) -> str:
    """The name of the mode of a stored training config (a run's ``.hydra/config.yaml`` or a checkpoint's),
    without building it; ``None`` is the paper's mode."""
    config = legacy_training_config(training or {"mode": "patch"})
    return training_mode_class(config["_target_"]).name
