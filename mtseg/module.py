"""LightningModule: the triplanar CNN trained with Adam and categorical cross-entropy (paper §3.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from mtseg.metrics import dice_from_confusion
from mtseg.model import TriplanarCNN
from mtseg.tasks import TASKS, LabelSpace

#: Key under which every mtseg checkpoint stores what its output channels mean.
CHECKPOINT_KEY = "mtseg"


class MultiTaskSegmentationModule(L.LightningModule):
    """One :class:`TriplanarCNN` for all tasks of an experiment.

    Training batches are dicts with ``planes`` ``(B, 3, P, P)``, ``target`` (output
    channel) and ``task`` (index into the experiment's tasks); validation batches are
    ``(planes, target, task)`` tuples of class-balanced held-out voxels, on which Dice
    is computed per task and class.

    Args:
        tasks: Tasks of the experiment; fixes the output channels.
        model: Keyword arguments of :class:`TriplanarCNN` (``depth``, ``width``, ``fc_width``, ``dropout``).
        lr: Adam learning rate.
        betas: Adam betas.
        preprocessing: Each task's ``preprocessing`` config (spacing, threshold, intensity
            transforms), stored so a checkpoint says how to prepare a new image.
        pad_value: Normalised intensity outside the volume used in training.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        model: Mapping[str, Any],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        preprocessing: Mapping[str, Any] | None = None,
        pad_value: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.label_space = LabelSpace(tasks)
        self.net = TriplanarCNN(self.label_space.n_classes, **dict(model))
        self.lr = lr
        self.betas = tuple(betas)
        n = self.label_space.n_classes
        self.register_buffer("val_confusion", torch.zeros(len(self.label_space.tasks), n, n, dtype=torch.long), persistent=False)
        self.val_loss_sum = 0.0
        self.val_count = 0
        #: Dice per (task, class name) of the latest validation.
        self.latest_dice: dict[tuple[str, str], float] = {}

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

    def validation_step(self, batch: Sequence[torch.Tensor], batch_index: int) -> None:
        planes, target, task = batch
        logits = self.net(planes)
        self.val_loss_sum = self.val_loss_sum + F.cross_entropy(logits, target, reduction="sum").detach()
        self.val_count += len(target)
        n = self.label_space.n_classes
        flat = (task * n + target) * n + logits.argmax(1)
        self.val_confusion += torch.bincount(flat, minlength=self.val_confusion.numel()).view_as(self.val_confusion)

    def on_validation_epoch_end(self) -> None:
        self.latest_dice = {}
        names = self.label_space.class_names
        for task_id, task in enumerate(self.label_space.tasks):
            dice = dice_from_confusion(self.val_confusion[task_id])
            for cls in self.label_space.task_classes(task)[1:]:
                self.latest_dice[(task, names[cls])] = float(dice[cls])
                self.log(f"val/dice/{task}/{names[cls]}", dice[cls].float())
        self.log("val/loss", self.val_loss_sum / max(self.val_count, 1))
        # the paper's x-axis (Fig. 2); choose it as the x-axis of W&B panels
        self.log("minibatches_per_task", self.global_step / len(self.label_space.tasks))
        self.val_confusion.zero_()
        self.val_loss_sum, self.val_count = 0.0, 0

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
        }
