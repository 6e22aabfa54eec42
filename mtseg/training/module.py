"""LightningModule: the triplanar CNN trained with Adam and categorical cross-entropy (paper §3.2)."""

from __future__ import annotations

import math
import warnings

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from mtseg.data.datamodule import HeldOutImage
from mtseg.training.cube_loss import dense_loss
from mtseg.evaluation.whole_image import EvaluationResult, WholeImageEvaluator
from mtseg.defaults import conf_defaults
from mtseg.model import TriplanarCNN
from mtseg.tasks import TASKS, LabelSpace

#: Key under which every mtseg checkpoint stores what its output channels mean.
CHECKPOINT_KEY = "mtseg"
#: Checkpoint key of the random state at the save, restored when a run resumes.
RNG_KEY = "mtseg_rng"


class MultiTaskSegmentationModule(L.LightningModule):
    """One :class:`TriplanarCNN` for all tasks of an experiment.

    Training batches are dicts with ``planes`` ``(B, 3, P, P)``, ``target`` (output
    channel) and ``task`` (index into the experiment's tasks) in the paper's mode
    (``training=patch``), or with ``context`` ``(B, S, S, S)``, ``target`` ``(B, k, k, k)``
    and ``task`` ``(B,)`` in compute-sharing mode (``training=dense``: cubes of ``k³``
    target voxels, their loss weighted back to the paper's class and task balance by
    :func:`~mtseg.training.cube_loss.dense_loss`). Both train the same network. Validation steps get one
    whole held-out image each (:class:`~mtseg.data.datamodule.HeldOutImage`): it is
    segmented densely and, once all are in, evaluated as in the paper (§4) by
    :class:`~mtseg.evaluation.whole_image.WholeImageEvaluator`.

    Args:
        tasks: Tasks of the experiment; fixes the output channels.
        model: Keyword arguments of :class:`TriplanarCNN` (``depth``, ``width``, ``fc_width``, ``dropout``).
        lr: Adam learning rate (the peak one under a schedule).
        betas: Adam betas.
        lr_decay: ``"constant"`` (the paper: Adam at ``lr`` throughout) or ``"cosine"``
            (from ``lr`` after the warm-up down to 0 as the run ends).
        warmup: Fraction of the steps over which the learning rate rises linearly from 0 to ``lr``.
        preprocessing: Each task's ``preprocessing`` config (spacing, threshold, intensity
            transforms), stored so a checkpoint says how to prepare a new image.
        pad_value: Normalised intensity outside the volume used in training.
        evaluation: ``pr_thresholds`` (thresholds of the PR analysis) and ``slab_voxels``
            (voxels per slab of dense inference).
        data: The data config without the tasks' ``preprocessing`` (stored once, above), so a checkpoint
            can be evaluated on the same test sets.
        training: The training mode's config (``conf/training``), stored with checkpoints.
        schedule: The run's ``conf/schedule`` and ``seed``: stored with checkpoints, so that a resumed run
            can check that it continues the same schedule.
        seed: The run's seed.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        model: Mapping[str, Any],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        lr_decay: str = "constant",
        warmup: float = 0.0,
        preprocessing: Mapping[str, Any] | None = None,
        pad_value: float = 0.0,
        evaluation: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.label_space = LabelSpace(tasks)
        self.net = TriplanarCNN(self.label_space.n_classes, **dict(model))
        if training is not None and training.get("mode") == "dense" and training.get("batch_renorm") is not None:
            self.net.set_batch_renorm(training["batch_renorm"])  # a mini-batch of a few cubes is no representative sample
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"optimizer.lr_decay must be one of {list(LR_DECAYS)}, got {lr_decay!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"optimizer.warmup is a fraction of the steps in [0, 1), got {warmup}")
        self.lr = lr
        self.betas = tuple(betas)
        evaluation = dict(evaluation or {})
        evaluation = {**conf_defaults("evaluation/whole_image.yaml"), **evaluation}
        self.slab_voxels = int(evaluation["slab_voxels"])
        self.evaluator = WholeImageEvaluator(self.label_space, int(evaluation["pr_thresholds"]))
        #: The latest whole-image evaluation (None before the first).
        self.latest_evaluation: EvaluationResult | None = None
        #: Mean fraction of a training image's voxels that are the task's foreground (set by training).
        self.foreground_fraction: dict[str, float] = {}
        #: Smallest and largest fraction of a training image's stored intensities clearly below 0 (set by training;
        #: :func:`~mtseg.data.preprocessing.negative_fraction`).
        self.negative_fraction_range: dict[str, list[float]] = {}
        #: The W&B run of the training (set by training; a resumed run continues it).
        self.wandb_run_id: str | None = None

    @property
    def n_params(self) -> int:
        return self.net.n_params

    @property
    def steps_per_task_minibatch(self) -> int:
        """Optimiser steps that give each task one mini-batch's worth of data (the schedule's unit).

        The paper's mini-batch of 210 samples is split over the ``T`` tasks, so a task gets a
        whole mini-batch's worth every ``T`` steps; a dense mini-batch holds
        ``training.cubes_per_task`` cubes of every task, so every step gives each task its
        share. Either way, each task sees the same data in every experiment.
        """
        training = self.hparams.get("training") or {}
        return 1 if training.get("mode") == "dense" else len(self.label_space.tasks)

    def minibatches_per_task(self, steps: int) -> float:
        """``steps`` optimiser steps in the paper's unit, mini-batches per task."""
        return steps / self.steps_per_task_minibatch

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.net(planes)

    def on_fit_start(self) -> None:
        """Dense mode: the cubes' context must match the network's depth, and a step must fit in memory."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not getattr(datamodule, "dense", False):
            return
        if datamodule.radius != self.net.depth:
            raise ValueError(
                f"training=dense: the data pads cubes by {datamodule.radius} voxels but model.depth={self.net.depth}; "
                "the cube context must be training.cube + 2 * model.depth (build the data module with radius=model.depth)"
            )
        cube, per_task = int(datamodule.training["cube"]), int(datamodule.training["cubes_per_task"])
        n_cubes = per_task * len(self.label_space.tasks)
        needed = self.net.forward_cubes_bytes(n_cubes, cube)
        available = available_memory(self.device)
        if available is not None and needed > available:
            raise ValueError(
                f"training=dense: a step on {n_cubes} cubes of {cube}^3 voxels (training.cubes_per_task={per_task}, "
                f"training.cube={cube}) needs about {needed / 2**30:.1f} GiB, but {available / 2**30:.1f} GiB "
                f"are available on {self.device}; lower training.cube or training.cubes_per_task"
            )

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch's loss and each task's (detached) loss, in either training mode."""
        n_tasks = len(self.label_space.tasks)
        if "context" in batch:  # training=dense: cubes
            cube = batch["target"].shape[-1]
            return dense_loss(self.net.forward_cubes(batch["context"], cube), batch["target"], batch["task"], n_tasks)
        # training=patch: the paper's triplanar samples
        losses = F.cross_entropy(self.net(batch["planes"]), batch["target"], reduction="none")
        per_task = torch.zeros(n_tasks, device=losses.device).index_add_(0, batch["task"], losses.detach())
        per_task /= torch.bincount(batch["task"], minlength=n_tasks).clamp_min(1)
        return losses.mean(), per_task

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss, per_task = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        for task_id, task in enumerate(self.label_space.tasks):
            self.log(f"train/loss/{task}", per_task[task_id])
        return loss

    def validation_step(self, image: HeldOutImage, batch_index: int) -> None:
        # in fp32 whatever the training precision, so that `mtseg.evaluate` and `predict --precision fp32` repeat it
        with torch.autocast(self.device.type, enabled=False):
            self.evaluator.add_volume(
                self.net, image.task, image.case_id, image.volume, image.reference, image.mask, self.slab_voxels, image.spacing
            )

    def on_validation_epoch_end(self) -> None:
        # under DDP every process evaluates every held-out image: the values are the same everywhere
        # (sync_dist averages equal values; it only keeps Lightning from warning)
        self.latest_evaluation = evaluation = self.evaluator.compute()
        for (task, cls), dice in evaluation.mean_dice().items():
            self.log(f"val/dice/{task}/{cls}", dice, sync_dist=True)
        for task, result in evaluation.tasks.items():
            if result.threshold is not None:
                self.log(f"val/threshold/{task}", result.threshold, sync_dist=True)
                self.log(f"val/pooled_dice/{task}", result.pooled_dice, sync_dist=True)
            if len(self.label_space.tasks) > 1:
                self.log(f"val/confusion_percent/{task}", result.confusion_median, sync_dist=True)
        # the paper's x-axis (Fig. 2); choose it as the x-axis of W&B panels
        self.log("minibatches_per_task", self.minibatches_per_task(self.global_step), sync_dist=True)

    @property
    def latest_dice(self) -> dict[tuple[str, str], float]:
        """Mean whole-image Dice per (task, class) of the latest evaluation."""
        return {} if self.latest_evaluation is None else self.latest_evaluation.mean_dice()

    def build_optimizer(self) -> torch.optim.Adam:
        """Adam over the network's parameters at the configured (peak) learning rate."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        total = max(int(self.trainer.max_steps), 1)
        factor = lr_factor(self.hparams.get("lr_decay", "constant"), float(self.hparams.get("warmup", 0.0)), total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        # "name": the metric under which Lightning's LearningRateMonitor logs it (mtseg.train adds it with a logger)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the process's random state (dropout), so a resumed run continues exactly (tensors only)
        checkpoint[RNG_KEY] = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint[CHECKPOINT_KEY] = {
            **self.label_space.to_dict(),
            "task_modalities": {t: TASKS[t].modality for t in self.label_space.tasks},
            "n_params": self.n_params,
            "patch_size": self.net.patch_size,
            "pad_value": self.hparams.pad_value,
            "foreground_fraction": dict(self.foreground_fraction),
            "negative_fraction_range": dict(self.negative_fraction_range),
            "training": self.hparams.training,
            "wandb_run_id": self.wandb_run_id,
            # PR operating points of the evaluation just before this save (same weights)
            "thresholds": {} if self.latest_evaluation is None else self.latest_evaluation.thresholds(),
            "thresholds_from": None if self.latest_evaluation is None else "held-out images at training time",
        }


    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues the random state of its checkpoint (dropout masks included)."""
        state = checkpoint.get(RNG_KEY)
        if state:
            torch.set_rng_state(state["torch"])
            if state["cuda"] and torch.cuda.is_available():
                if len(state["cuda"]) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(state["cuda"])
                else:
                    warnings.warn(
                        f"the checkpoint holds the random state of {len(state['cuda'])} GPU(s), this machine has "
                        f"{torch.cuda.device_count()}: dropout on the GPU will not continue exactly"
                    )

#: Learning-rate schedules over the run (``optimizer.lr_decay``).
LR_DECAYS = ("constant", "cosine")


def lr_factor(decay: str, warmup: float, total: int):
    """The factor on the learning rate at each step (0 to ``total - 1``) of a run of ``total`` steps:
    a linear warm-up over the first ``warmup`` fraction, then constant, or a cosine that
    reaches 0 as the run ends (at step ``total``, which is never taken)."""
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))
        return 1.0

    return factor


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory a training step can still take on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16, through oneDNN): only then is
    ``trainer.precision=bf16-mixed`` faster than fp32 on it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check
        return False
