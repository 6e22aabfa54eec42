"""Lightning data module: one experiment's training images behind one TorchIO queue per task, and its held-out images.

The training mode (:class:`~mtseg.training.mode.TrainingMode`) decides what the queues hold, how a
mini-batch is drawn from them and how it is gathered on the training device; this module prepares
the subjects (:mod:`mtseg.data.subjects`), builds the queues (:mod:`mtseg.data.torchio_adapters`)
and the stream of mini-batches (:mod:`mtseg.data.minibatch_stream`), and serves the held-out images
(:mod:`mtseg.data.held_out`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtseg.data.augmentation import TrainingAugmentation
from mtseg.data.check import check_subjects
from mtseg.data.held_out import HeldOutImage, HeldOutImages
from mtseg.data.minibatch_stream import MinibatchStream
from mtseg.data.preprocessing import LABEL, build_preprocessing
from mtseg.data.sampling import CLASS_INDEX, CLASS_QUOTA, NUM_SAMPLES, class_quotas
from mtseg.data.seeds import SAMPLING, rank_keys, seeded_generator
from mtseg.data.sources import task_subjects
from mtseg.data.subjects import prepare_subject
from mtseg.data.torchio_adapters import BlockQueue, sampling_queue
from mtseg.data.training_volumes import TrainingVolumes, channel_table
from mtseg.tasks import TASK_ORDER, LabelSpace, get_task

if TYPE_CHECKING:  # the data module runs whichever mode it is given
    from mtseg.training.mode import TrainingMode

log = logging.getLogger(__name__)


class MultiTaskDataModule(L.LightningDataModule):
    """Training and held-out data of one experiment.

    Args:
        tasks: Tasks of the experiment.
        root: Folder for generated or cached data.
        depth: The model's depth: every volume is padded by it (half the patch side).
        pad_value: Normalised intensity outside the volume.
        val_images_per_task: Held-out images per task evaluated at each learning-curve
            evaluation (the first ones of the test split); ``None`` for all of them.
        seed: Seed of the sampling generators.
        training: The training mode (``conf/training``, built by Hydra); ``None`` when only the
            held-out images are wanted (``setup("validate")``: evaluating a trained network).
        **sources: Per-task data config, one keyword per task (``data.<task>``): source,
            split sizes and ``preprocessing`` (``spacing``, ``threshold``, ``intensity`` transforms).
            Other keywords are not tasks and are ignored: checkpoints written before the training
            modes owned their settings store ``batch_size`` and ``queue`` here.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        root: str,
        depth: int,
        pad_value: float,
        val_images_per_task: int | None = None,
        seed: int = 0,
        training: TrainingMode | None = None,
        **sources: Mapping,
    ):
        super().__init__()
        self.label_space = LabelSpace(tasks)
        self.tasks = self.label_space.tasks
        missing = [t for t in self.tasks if t not in sources]
        if missing:
            raise ValueError(f"no data config for task(s) {missing}; add data.<task> entries")
        if val_images_per_task is not None and val_images_per_task < 1:
            raise ValueError(f"data.val_images_per_task must be positive or null (all), got {val_images_per_task}")
        self.sources = {t: sources[t] for t in self.tasks}
        self.root = Path(root)
        self.depth = depth
        self.pad_value = pad_value
        self.val_images_per_task = val_images_per_task
        self.seed = seed
        self.training = training
        if training is not None:
            training.check_tasks(len(self.tasks))
        self.subjects: dict[str, dict[str, list[tio.Subject]]] = {}
        #: Per task, the smallest and largest fraction of a training image's stored intensities clearly below 0 (``setup``).
        self.negative_fractions: dict[str, tuple[float, float]] = {}
        #: Every training volume, on the training device once a mini-batch has been gathered there (``setup``).
        self.training_volumes: TrainingVolumes | None = None

    def _raw_subjects(self) -> dict[str, dict[str, list[tio.Subject]]]:
        return {task: task_subjects(task, self.sources[task], self.root) for task in self.tasks}

    def prepare_data(self) -> None:
        """Generate (or find cached) data for every task."""
        self._raw_subjects()

    def setup(self, stage: str | None = None) -> None:
        """Load and preprocess every subject once; check the data.

        ``stage`` ``"validate"`` or ``"test"`` (evaluating a trained network) prepares the
        held-out images only.
        """
        if self.subjects:
            return
        held_out_only = stage in ("validate", "test")
        if not held_out_only and self.training is None:
            raise ValueError("the data module needs a training mode to prepare training data (training=...)")
        raw = self._raw_subjects()
        if held_out_only:
            raw = {task: {"test": splits.get("test", [])} for task, splits in raw.items()}
        for task, splits in raw.items():  # every file of every task is checked before any preprocessing
            summary = check_subjects(splits, task, f"data.{task} ({self.sources[task]['source']})")
            log.info("%s", summary.format())
            fractions = [case.negative_fraction for case in summary.cases if case.split == "train"]
            if fractions:  # of the stored intensities, before preprocessing (for predict's recognition)
                self.negative_fractions[task] = (min(fractions), max(fractions))
        for task, splits in raw.items():
            if not held_out_only and not splits.get("train"):
                raise ValueError(f"task {task!r} has no training images (data.{task}.source={self.sources[task]['source']})")
            if not splits.get("test"):
                raise ValueError(f"task {task!r} has no held-out images for validation")
            cfg = self.sources[task]["preprocessing"]
            preprocessing = build_preprocessing(cfg["spacing"], cfg["threshold"], list(cfg.get("intensity", [])))
            # training images: the original and data.<task>.augmentation.copies augmented copies
            augmentation = TrainingAugmentation.from_config(self.sources[task].get("augmentation"), self.seed, task)
            self.subjects[task] = {
                split: [
                    prepared
                    for s in tqdm(subjects, desc=f"Preprocessing {task} {split}", leave=False)
                    for prepared in augmentation.prepare(s, preprocessing, self._prepare, training=split == "train")
                ]
                for split, subjects in splits.items()
            }
            if not held_out_only:
                self.training.check_training_volumes(task, self.subjects[task]["train"])
                self._set_class_quotas(task)
            self._check_pr_foreground(task, None if held_out_only else self.val_images_per_task)
        if not held_out_only:
            self.training_volumes = TrainingVolumes(
                [s for task in self.tasks for s in self.subjects[task]["train"]], self.depth, channel_table(self.label_space)
            )

    def gather(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training mini-batch of indices (:meth:`train_batches`), on its device, gathered there by the
        training mode: the training volumes move there with the first mini-batch and stay."""
        if self.training_volumes is None:
            raise RuntimeError("setup() prepares the training volumes before mini-batches can be gathered")
        device = next(iter(batch.values())).device
        return self.training.gather(self.training_volumes.to(device), batch)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook after a batch reached the training device: training mini-batches are gathered
        there (:meth:`gather`); held-out images pass as they are."""
        return batch if isinstance(batch, HeldOutImage) else self.gather(batch)

    def _check_pr_foreground(self, task: str, limit: int | None) -> None:
        """A task evaluated at a PR threshold needs foreground in its evaluated held-out images."""
        if get_task(task).operating_point != "pr_threshold":
            return
        images = self.subjects[task]["test"][:limit]
        if not any(bool(s[LABEL].data.any()) for s in images):
            raise ValueError(
                f"the {len(images)} held-out image(s) of task {task!r} evaluated at each learning-curve step "
                f"({', '.join(s['case_id'] for s in images)}) hold no {get_task(task).classes[0]}: its PR operating "
                "point is undefined; raise data.val_images_per_task or add held-out images with foreground"
            )

    def _prepare(self, subject: tio.Subject, transform) -> tio.Subject:
        return prepare_subject(subject, transform, self.depth, self.pad_value)

    def _set_class_quotas(self, task: str) -> None:
        """Check every class has training voxels; give each training subject its class quotas."""
        subjects = self.subjects[task]["train"]
        counts = torch.stack([s[CLASS_INDEX].counts for s in subjects])
        names = ("background",) + get_task(task).classes
        empty = [names[c] for c in range(len(names)) if counts[:, c].sum() == 0]
        if empty:
            raise ValueError(
                f"training images of task {task!r} contain no sample voxel of class(es) {empty} "
                f"(above data.{task}.preprocessing.threshold); each class needs training samples"
            )
        quotas = class_quotas(counts, self.training.queue["samples_per_volume"])
        block = self.training.queue["block"]
        for subject, quota in zip(subjects, quotas):
            subject[CLASS_QUOTA] = quota
            subject[NUM_SAMPLES] = max(1, round(float(quota.sum()) / block))  # queue items (blocks) per visit
            subject.update_attributes()

    def foreground_fraction(self) -> dict[str, float]:
        """Per task, the mean fraction of a (preprocessed) training image's voxels that are foreground."""
        return {
            task: float(np.mean([int(s[LABEL].data.count_nonzero()) / s[LABEL].data.numel() for s in self.subjects[task]["train"]]))
            for task in self.tasks
        }

    def negative_fraction_range(self) -> dict[str, list[float]]:
        """Per task, the smallest and largest fraction of a training image's stored intensities clearly below 0
        (:func:`~mtseg.data.preprocessing.negative_fraction`; none for MR magnitudes, about two thirds for a
        chest CT in HU): stored with checkpoints."""
        return {task: list(span) for task, span in self.negative_fractions.items()}

    def held_out_images(self, limit: int | None = None) -> list[HeldOutImage]:
        """The first ``limit`` (all if ``None``) preprocessed held-out images of every task."""
        return [
            HeldOutImage.from_subject(subject)
            for task in self.tasks
            for subject in self.subjects[task]["test"][:limit]
        ]

    def _queue(self, task: str, interval: int = 0, rank: int = 0) -> BlockQueue:
        generator = seeded_generator(self.seed, SAMPLING, TASK_ORDER.index(task), interval, *rank_keys(rank))
        queue = self.training.queue
        return sampling_queue(
            self.subjects[task]["train"], self.training.sampler(self.depth, generator), queue["max_length"], queue["samples_per_volume"]
        )

    def train_batches(
        self, length: int | None = None, start: int = 0, interval: int | None = None, rank: int = 0, world_size: int = 1
    ) -> MinibatchStream:
        """Task-balanced mini-batches of sample indices (:meth:`gather` turns them into the training mode's
        inputs on the training device) of steps ``start .. length - 1`` (endless when ``length`` is
        ``None``), sampling restarted every ``interval`` steps (:class:`~mtseg.data.minibatch_stream.MinibatchStream`).

        With several processes (DDP), process ``rank`` of ``world_size`` draws its own stream
        (seeded by its rank; rank 0's is the single-process stream) holding its share of the
        global mini-batch.
        """

        def new_queues(k: int) -> dict[str, BlockQueue]:
            return {task: self._queue(task, k, rank) for task in self.tasks}

        return self.training.minibatch_stream(
            new_queues, len(self.tasks), world_size, length=length, start=start, interval=interval, seed=self.seed, rank=rank
        )

    def train_dataloader(self) -> DataLoader:
        """The run's mini-batches from its current step on (a resumed run continues its stream);
        sampling restarts at every evaluation, so that any step can be resumed exactly."""
        trainer = self.trainer
        max_steps = trainer.max_steps if trainer is not None else -1
        start = trainer.global_step if trainer is not None else 0
        every = getattr(trainer, "val_check_interval", None)
        interval = int(every) if isinstance(every, int) and every > 0 else None
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = self.train_batches(max_steps if max_steps > 0 else None, start, interval, rank, world_size)
        # its own generator: creating the loader must not draw from the process's random state
        return DataLoader(batches, batch_size=None, num_workers=0, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        """Whole held-out images, one per step (``data.val_images_per_task`` per task)."""
        images = HeldOutImages(self.held_out_images(self.val_images_per_task))
        return DataLoader(images, batch_size=None, shuffle=False, generator=torch.Generator())
