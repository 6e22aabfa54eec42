"""LightningModule: the triplanar CNN trained with Adam and categorical cross-entropy (paper §3.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from mtseg.data.datamodule import HeldOutImage
from mtseg.evaluation import EvaluationResult, WholeImageEvaluator
from mtseg.inference import DEFAULT_SLAB_VOXELS
from mtseg.model import TriplanarCNN
from mtseg.tasks import TASKS, LabelSpace

#: Key under which every mtseg checkpoint stores what its output channels mean.
CHECKPOINT_KEY = "mtseg"


class MultiTaskSegmentationModule(L.LightningModule):
    """One :class:`TriplanarCNN` for all tasks of an experiment.

    Training batches are dicts with ``planes`` ``(B, 3, P, P)``, ``target`` (output
    channel) and ``task`` (index into the experiment's tasks). Validation steps get one
    whole held-out image each (:class:`~mtseg.data.datamodule.HeldOutImage`): it is
    segmented densely and, once all are in, evaluated as in the paper (§4) by
    :class:`~mtseg.evaluation.WholeImageEvaluator`.

    Args:
        tasks: Tasks of the experiment; fixes the output channels.
        model: Keyword arguments of :class:`TriplanarCNN` (``depth``, ``width``, ``fc_width``, ``dropout``).
        lr: Adam learning rate.
        betas: Adam betas.
        preprocessing: Each task's ``preprocessing`` config (spacing, threshold, intensity
            transforms), stored so a checkpoint says how to prepare a new image.
        pad_value: Normalised intensity outside the volume used in training.
        evaluation: ``pr_thresholds`` (thresholds of the PR analysis) and ``slab_voxels``
            (voxels per slab of dense inference).
        data: The data config, stored so a checkpoint can be evaluated on the same test sets.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        model: Mapping[str, Any],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        preprocessing: Mapping[str, Any] | None = None,
        pad_value: float = 0.0,
        evaluation: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.label_space = LabelSpace(tasks)
        self.net = TriplanarCNN(self.label_space.n_classes, **dict(model))
        self.lr = lr
        self.betas = tuple(betas)
        evaluation = dict(evaluation or {})
        self.slab_voxels = int(evaluation.get("slab_voxels", DEFAULT_SLAB_VOXELS))
        self.evaluator = WholeImageEvaluator(self.label_space, int(evaluation.get("pr_thresholds", 1001)))
        #: The latest whole-image evaluation (None before the first).
        self.latest_evaluation: EvaluationResult | None = None
        #: Mean fraction of a training image's voxels that are the task's foreground (set by training).
        self.foreground_fraction: dict[str, float] = {}

    @property
    def n_params(self) -> int:
        return self.net.n_params

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.net(planes)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        logits = self.net(batch["planes"])
        losses = F.cross_entropy(logits, batch["target"], reduction="none")
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True)
        n_tasks = len(self.label_space.tasks)
        per_task = torch.zeros(n_tasks, device=losses.device).index_add_(0, batch["task"], losses.detach())
        per_task /= torch.bincount(batch["task"], minlength=n_tasks).clamp_min(1)
        for task_id, task in enumerate(self.label_space.tasks):
            self.log(f"train/loss/{task}", per_task[task_id])
        return loss

    def validation_step(self, image: HeldOutImage, batch_index: int) -> None:
        self.evaluator.add_volume(self.net, image.task, image.case_id, image.volume, image.reference, image.mask, slab_voxels=self.slab_voxels)

    def on_validation_epoch_end(self) -> None:
        self.latest_evaluation = evaluation = self.evaluator.compute()
        for (task, cls), dice in evaluation.mean_dice().items():
            self.log(f"val/dice/{task}/{cls}", dice)
        for task, result in evaluation.tasks.items():
            if result.threshold is not None:
                self.log(f"val/threshold/{task}", result.threshold)
                self.log(f"val/pooled_dice/{task}", result.pooled_dice)
            if len(self.label_space.tasks) > 1:
                self.log(f"val/confusion_percent/{task}", result.confusion_median)
        # the paper's x-axis (Fig. 2); choose it as the x-axis of W&B panels
        self.log("minibatches_per_task", self.global_step / len(self.label_space.tasks))

    @property
    def latest_dice(self) -> dict[tuple[str, str], float]:
        """Mean whole-image Dice per (task, class) of the latest evaluation."""
        return {} if self.latest_evaluation is None else self.latest_evaluation.mean_dice()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            **self.label_space.to_dict(),
            "task_modalities": {t: TASKS[t].modality for t in self.label_space.tasks},
            "n_params": self.n_params,
            "patch_size": self.net.patch_size,
            "preprocessing": self.hparams.preprocessing,
            "pad_value": self.hparams.pad_value,
            "foreground_fraction": dict(self.foreground_fraction),
            "data": self.hparams.data,
            # PR operating points of the evaluation just before this save (same weights)
            "thresholds": {} if self.latest_evaluation is None else self.latest_evaluation.thresholds(),
            "thresholds_from": None if self.latest_evaluation is None else "held-out images at training time",
        }
