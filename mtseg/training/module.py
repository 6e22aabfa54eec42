"""LightningModule: the triplanar CNN trained with Adam and categorical cross-entropy (paper §3.2)."""

from __future__ import annotations

import logging
import warnings

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from mtseg.data.held_out import HeldOutImage
from mtseg.defaults import conf_defaults
from mtseg.evaluation.whole_image import EvaluationResult, WholeImageEvaluator
from mtseg.inference.dense import inference_dtype
from mtseg.model import TriplanarCNN
from mtseg.tasks import TASKS, LabelSpace
from mtseg.training.lr_schedule import LR_DECAYS, lr_factor
from mtseg.training.mode import TrainingMode, training_mode_from_config

log = logging.getLogger(__name__)

#: Key under which every mtseg checkpoint stores what its output channels mean.
CHECKPOINT_KEY = "mtseg"
#: Checkpoint key of the random state at the save, restored when a run resumes.
RNG_KEY = "mtseg_rng"


class MultiTaskSegmentationModule(L.LightningModule):
    """One :class:`TriplanarCNN` for all tasks of an experiment.

    A training step's mini-batch and loss are the training mode's
    (:class:`~mtseg.training.mode.TrainingMode`: the paper's triplanar samples, ``training=patch``, or
    cubes of target voxels, ``training=cubes``); every mode trains the same network. Validation steps
    get one whole held-out image each (:class:`~mtseg.data.held_out.HeldOutImage`): it is
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
        evaluation: ``pr_thresholds`` (thresholds of the PR analysis), ``slab_voxels``
            (voxels per slab of dense inference) and ``intermediate_precision`` (of the dense inference
            of every evaluation but the run's last, which is fp32).
        data: The data config without the tasks' ``preprocessing`` (stored once, above), so a checkpoint
            can be evaluated on the same test sets.
        training: The training mode (``conf/training``, built by Hydra), or its stored config
            (:meth:`~mtseg.training.mode.TrainingMode.config`, as a checkpoint holds it; older forms
            are read too); ``None``: the paper's mode. Checkpoints store its config.
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
        training: TrainingMode | Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if not isinstance(training, TrainingMode):
            training = training_mode_from_config(training, data)
        #: The training mode: the mini-batch, its gather and its loss.
        self.training_mode = training
        self.save_hyperparameters(ignore=["training"])
        self.hparams["training"] = training.config()  # stored with checkpoints, as plain values
        self.label_space = LabelSpace(tasks)
        self.net = TriplanarCNN(self.label_space.n_classes, **dict(model))
        training.prepare_network(self.net)
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"optimizer.lr_decay must be one of {list(LR_DECAYS)}, got {lr_decay!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"optimizer.warmup is a fraction of the steps in [0, 1), got {warmup}")
        self.lr = lr
        self.betas = tuple(betas)
        evaluation = dict(evaluation or {})
        evaluation = {**conf_defaults("evaluation/whole_image.yaml"), **evaluation}
        self.slab_voxels = int(evaluation["slab_voxels"])
        self.intermediate_precision = str(evaluation["intermediate_precision"])
        try:  # a bad value fails here, not at the first evaluation
            inference_dtype(self.intermediate_precision, torch.device("cpu"))
        except ValueError as error:
            raise ValueError(f"evaluation.intermediate_precision: {error}") from None
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
        """Optimiser steps that give each task one mini-batch's worth of data (the schedule's unit), as the
        training mode counts them: each task sees the same data in every experiment."""
        return self.training_mode.steps_per_task_minibatch(len(self.label_space.tasks))

    def minibatches_per_task(self, steps: int) -> float:
        """``steps`` optimiser steps in the paper's unit, mini-batches per task."""
        return steps / self.steps_per_task_minibatch

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.net(planes)

    def on_fit_start(self) -> None:
        """The data's padding must be the network's depth, and the training mode's step must be able to run."""
        datamodule = getattr(self.trainer, "datamodule", None)
        depth = getattr(datamodule, "depth", self.net.depth)
        if depth != self.net.depth:
            raise ValueError(
                f"the data pads every volume by {depth} voxels but model.depth={self.net.depth}; "
                "build the data module with depth=model.depth"
            )
        self.training_mode.check_fit(self.net, len(self.label_space.tasks), self.device)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch's loss and each task's (detached) loss, as the training mode scores them."""
        return self.training_mode.loss(self.net, batch, len(self.label_space.tasks))

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss, per_task = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        for task_id, task in enumerate(self.label_space.tasks):
            self.log(f"train/loss/{task}", per_task[task_id])
        return loss

    @property
    def evaluation_precision(self) -> str:
        """Precision of this evaluation's dense inference: fp32 for the run's last evaluation (and outside
        a fit), ``evaluation.intermediate_precision`` for the ones before it."""
        trainer = self._trainer
        last = trainer is None or trainer.max_steps is None or trainer.max_steps < 0 or self.global_step >= trainer.max_steps
        return "fp32" if last else self.intermediate_precision

    def validation_step(self, image: HeldOutImage, batch_index: int) -> None:
        # autocast off whatever the training precision: the last evaluation is fp32, so that `mtseg.evaluate` and
        # `predict --precision fp32` repeat it; earlier ones may run the network's own bf16 inference
        precision = self.evaluation_precision
        if batch_index == 0:
            dtype = inference_dtype(precision, self.device)
            log.info("Whole-image evaluation at step %d: dense inference in %s", self.global_step, "bf16" if dtype == torch.bfloat16 else "fp32")
        with torch.autocast(self.device.type, enabled=False):
            self.evaluator.add_volume(
                self.net, image.task, image.case_id, image.volume, image.reference, image.mask, self.slab_voxels, image.spacing,
                precision=precision,
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
