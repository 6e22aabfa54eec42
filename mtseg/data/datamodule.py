"""Lightning data module: per-task TorchIO queues merged into task-balanced mini-batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mtseg.data.augmentation import TrainingAugmentation
from mtseg.data.check import check_subjects
from mtseg.data.cube_sampling import ClassBalancedCubeSampler, TaskBalancedCubes, cube_target_luts
from mtseg.data.preprocessing import IMAGE, LABEL, SAMPLING_MASK, build_preprocessing
from mtseg.data.sampling import (
    CLASS_INDEX,
    CLASS_QUOTA,
    NUM_SAMPLES,
    SAMPLING,
    VOLUME,
    BlockQueue,
    ClassBalancedTriplanarSampler,
    ClassVoxelIndex,
    MinibatchStream,
    class_quotas,
    proportional_counts,
    rank_keys,
    seeded_generator,
)
from mtseg.data.sources import task_subjects
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import TASK_ORDER, LabelSpace, check_label_range, get_task

log = logging.getLogger(__name__)

class PreparedSubjectsDataset(tio.SubjectsDataset):
    """Subjects preprocessed once and kept in memory.

    TorchIO's dataset deep-copies every subject it hands to the queue; these subjects
    are only read by the sampler, so they are handed over as they are and a refill
    costs no copy of the volume.
    """

    def __getitem__(self, index: int) -> tio.Subject:
        subject = self._subjects[int(index)]
        return self._transform(subject) if self._transform is not None else subject


def sampling_queue(subjects: Sequence[tio.Subject], sampler, max_length: int, samples_per_volume: int, block: int) -> BlockQueue:
    """A TorchIO queue of blocks of ``block`` training items drawn by ``sampler`` from prepared ``subjects``.

    ``max_length`` and ``samples_per_volume`` count items (samples or cubes), as in the config;
    the queue holds ``max_length // block`` blocks. Served from the main process: the subjects
    are preprocessed once and held in memory, workers would copy whole volumes, and an item is
    only a block of indices (the gather runs on the training device).
    """
    return BlockQueue(
        tio.Queue(
            PreparedSubjectsDataset(list(subjects)),
            max_length=max(1, max_length // block),
            samples_per_volume=max(1, samples_per_volume // block),
            sampler=sampler,
            num_workers=0,
            shuffle_subjects=True,
            shuffle_patches=True,
        )
    )


def prepare_subject(subject: tio.Subject, preprocessing: tio.Transform, radius: int, pad_value: float) -> tio.Subject:
    """Preprocess ``subject`` and attach its padded volume and class voxel index.

    The returned subject keeps ``image``, ``label`` and ``sampling_mask`` (whole-volume
    evaluation needs them) plus :data:`VOLUME` and :data:`CLASS_INDEX` for sampling.
    Its image is a view of the padded volume and its labels are bytes, so a prepared
    volume costs about 4 bytes per voxel for intensities plus 3 bytes for label, mask
    and class codes.
    """
    path = subject[IMAGE].path
    if subject[IMAGE].data.ndim != 4 or subject[IMAGE].data.shape[0] != 1:
        raise ValueError(f"{path}: expected a single-channel 3-D image, got shape {tuple(subject[IMAGE].shape)}")
    try:
        subject.check_consistent_space()
    except RuntimeError as error:
        raise ValueError(
            f"{path} and its label {subject[LABEL].path} differ in shape or geometry: "
            f"{tuple(subject[IMAGE].shape)} vs {tuple(subject[LABEL].shape)}, affines\n"
            f"{subject[IMAGE].affine}\nvs\n{subject[LABEL].affine}"
        ) from error
    prepared = preprocessing(subject)
    task = get_task(prepared["task"])
    label = prepared[LABEL].data[0]
    if label.is_floating_point() and not torch.equal(label, label.round()):
        raise ValueError(f"{subject[LABEL].path}: label map holds non-integer values")
    check_label_range(label, task.n_classes, str(subject[LABEL].path), task.name)
    eligible = prepared[SAMPLING_MASK].data[0].bool()
    if not eligible.any():
        raise ValueError(
            f"{path}: no voxel has intensity above the sampling threshold of task {task.name!r}; "
            f"lower data.{task.name}.preprocessing.threshold"
        )
    label = label.to(torch.uint8)
    prepared[LABEL].set_data(label[None])
    volume = TriplanarVolume(prepared[IMAGE].data[0], radius, pad_value)
    prepared[IMAGE].set_data(volume.interior[None])
    prepared[VOLUME] = volume
    prepared[CLASS_INDEX] = ClassVoxelIndex(label, eligible, task.n_classes)
    return prepared


class TaskBalancedBatches(MinibatchStream):
    """Mini-batches of triplanar sample indices drawn from one TorchIO queue per task.

    Each mini-batch holds ``batch_size // T`` samples of each of the ``T`` tasks,
    the remainder going to tasks drawn at random (with the segment's generator): a dict with
    ``subject``, ``centre`` (flat voxel index), ``target`` (the experiment's output channel) and
    ``task`` (index into the experiment's tasks), each ``(B,)``;
    :class:`~mtseg.data.training_volumes.TrainingVolumes` adds the ``planes`` on the training device.

    Args:
        new_queues: ``new_queues(k)``: :class:`~mtseg.data.sampling.BlockQueue` of triplanar samples per task, for segment ``k``.
        label_space: The experiment's merged classes.
        batch_size: Samples per mini-batch.
        **stream: ``length``, ``start``, ``segment`` and ``seed`` of :class:`MinibatchStream`.
    """

    def __init__(self, new_queues, label_space: LabelSpace, batch_size: int, **stream):
        super().__init__(new_queues, **stream)
        self.tasks = list(label_space.tasks)
        self.luts = {task: label_space.global_labels(task) for task in self.tasks}
        self.batch_size = batch_size

    def draw(self, queues: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        counts = proportional_counts(self.batch_size, torch.ones(len(self.tasks)), generator).tolist()
        samples = [queues[task].take(count) if count else None for task, count in zip(self.tasks, counts)]
        drawn = [(task_id, s) for task_id, s in enumerate(samples) if s is not None]
        return {
            "subject": torch.cat([s["subject"] for _, s in drawn]),
            "centre": torch.cat([s["centre"] for _, s in drawn]),
            "target": torch.cat([self.luts[self.tasks[t]][s["label"]] for t, s in drawn]),
            "task": torch.cat([torch.full((len(s["label"]),), t) for t, s in drawn]),
        }


class HeldOutImage:
    """One preprocessed held-out image, handed whole to the validation step.

    A plain object (not a mapping or dataclass), so Lightning passes it to the step as it
    is instead of copying its volume to the device.

    Attributes:
        task: The image's task.
        case_id: Its case ID.
        volume: Padded intensities.
        reference: ``(X, Y, Z)`` task-local labels (uint8).
        mask: ``(X, Y, Z)`` voxels above the sampling threshold.
        spacing: Voxel spacing (mm) of the preprocessed grid.
    """

    def __init__(
        self, task: str, case_id: str, volume: TriplanarVolume, reference: torch.Tensor, mask: torch.Tensor,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ):
        self.task = task
        self.case_id = case_id
        self.volume = volume
        self.reference = reference
        self.mask = mask
        self.spacing = spacing

    @classmethod
    def from_subject(cls, subject: tio.Subject) -> HeldOutImage:
        return cls(
            subject["task"], subject["case_id"], subject[VOLUME], subject[LABEL].data[0], subject[SAMPLING_MASK].data[0].bool(),
            tuple(float(s) for s in subject[IMAGE].spacing),
        )


class HeldOutImages(Dataset):
    """The held-out images of every task, one item each (validation: whole-image evaluation)."""

    def __init__(self, images: Sequence[HeldOutImage]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> HeldOutImage:
        return self.images[index]


class MultiTaskDataModule(L.LightningDataModule):
    """Training and held-out data of one experiment.

    Args:
        tasks: Tasks of the experiment.
        root: Folder for generated or cached data.
        batch_size: Samples per mini-batch, split equally over the tasks.
        radius: Half the patch side, i.e. the model's depth.
        pad_value: Normalised intensity outside the volume.
        queue: ``max_length`` and ``samples_per_volume`` of each TorchIO queue.
        val_images_per_task: Held-out images per task evaluated at each learning-curve
            evaluation (the first ones of the test split); ``None`` for all of them.
        seed: Seed of the sampling generators.
        training: The training mode (``conf/training``): ``mode`` ``patch`` (the paper's
            triplanar samples, ``batch_size`` per mini-batch from ``queue``) or ``dense``
            (``cubes_per_task`` cubes of ``cube³`` target voxels per task and mini-batch,
            from queues of their own ``queue`` settings).
        **sources: Per-task data config, one keyword per task (``data.<task>``): source,
            split sizes and ``preprocessing`` (``spacing``, ``threshold``, ``intensity`` transforms).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        root: str,
        batch_size: int,
        radius: int,
        pad_value: float,
        queue: Mapping,
        val_images_per_task: int | None = None,
        seed: int = 0,
        training: Mapping | None = None,
        **sources: Mapping,
    ):
        super().__init__()
        self.label_space = LabelSpace(tasks)
        self.tasks = self.label_space.tasks
        if batch_size < len(self.tasks):
            raise ValueError(
                f"data.batch_size={batch_size} is smaller than the number of tasks "
                f"({len(self.tasks)}: {', '.join(self.tasks)}); every mini-batch needs each task"
            )
        missing = [t for t in self.tasks if t not in sources]
        if missing:
            raise ValueError(f"no data config for task(s) {missing}; add data.<task> entries")
        if val_images_per_task is not None and val_images_per_task < 1:
            raise ValueError(f"data.val_images_per_task must be positive or null (all), got {val_images_per_task}")
        self.sources = {t: sources[t] for t in self.tasks}
        self.root = Path(root)
        self.batch_size = batch_size
        self.radius = radius
        self.pad_value = pad_value
        self.queue_cfg = dict(queue)
        self.val_images_per_task = val_images_per_task
        self.seed = seed
        self.training = dict(training or {"mode": "patch"})
        if self.training["mode"] not in ("patch", "dense"):
            raise ValueError(f"training.mode must be 'patch' or 'dense', got {self.training['mode']!r}")
        if self.dense:
            for knob in ("cube", "cubes_per_task"):
                if int(self.training[knob]) < 1:
                    raise ValueError(f"training.{knob} must be positive, got {self.training[knob]}")
        self.subjects: dict[str, dict[str, list[tio.Subject]]] = {}
        #: Per task, the smallest and largest fraction of a training image's stored intensities clearly below 0 (``setup``).
        self.negative_fractions: dict[str, tuple[float, float]] = {}
        #: Every training volume, on the training device once a mini-batch has been gathered there (``setup``).
        self.training_volumes: TrainingVolumes | None = None

    @property
    def dense(self) -> bool:
        """Compute-sharing training (``training=dense``): mini-batches of cubes."""
        return self.training["mode"] == "dense"

    @property
    def sampling_queue(self) -> dict:
        """``max_length`` and ``samples_per_volume`` of the training queues of this mode."""
        return dict(self.training["queue"]) if self.dense else self.queue_cfg

    def _check_queue(self) -> None:
        """The training queue's settings (checked before training; evaluation needs none)."""
        prefix = "training.queue" if self.dense else "data.queue"
        for knob in ("max_length", "samples_per_volume", "block"):
            if knob not in self.sampling_queue:
                raise ValueError(f"{prefix}.{knob} is not set")
        block = int(self.sampling_queue["block"])
        if not 1 <= block <= int(self.sampling_queue["samples_per_volume"]) <= int(self.sampling_queue["max_length"]):
            raise ValueError(
                f"{prefix}: need 1 <= block <= samples_per_volume <= max_length, got block={block}, "
                f"samples_per_volume={self.sampling_queue['samples_per_volume']}, max_length={self.sampling_queue['max_length']}"
            )

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
        if not held_out_only:
            self._check_queue()
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
                self._check_cube_fits(task)
                self._set_class_quotas(task)
            self._check_pr_foreground(task, None if held_out_only else self.val_images_per_task)
        if not held_out_only:
            self.training_volumes = TrainingVolumes(
                [s for task in self.tasks for s in self.subjects[task]["train"]],
                self.radius,
                int(self.training["cube"]) if self.dense else None,
                cube_target_luts(self.label_space) if self.dense else None,
            )

    def gather(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training mini-batch of indices (:meth:`train_batches`) gathered into patches or cubes on its
        device: the training volumes move there with the first mini-batch and stay."""
        if self.training_volumes is None:
            raise RuntimeError("setup() prepares the training volumes before mini-batches can be gathered")
        return self.training_volumes.to(batch["subject"].device)(batch)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook after a batch reached the training device: training mini-batches are gathered
        there (:meth:`gather`); held-out images pass as they are."""
        if isinstance(batch, Mapping) and "subject" in batch:
            return self.gather(batch)
        return batch

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

    def _check_cube_fits(self, task: str) -> None:
        """In dense mode every training volume must hold a whole cube."""
        if not self.dense:
            return
        cube = int(self.training["cube"])
        small = [s for s in self.subjects[task]["train"] if min(s[VOLUME].shape) < cube]
        if small:
            raise ValueError(
                f"training.cube={cube} does not fit {len(small)} training volume(s) of task {task!r} "
                f"(e.g. {small[0]['case_id']}: {small[0][VOLUME].shape} voxels after preprocessing); "
                f"lower training.cube to at most {min(min(s[VOLUME].shape) for s in small)}"
            )

    def _prepare(self, subject: tio.Subject, transform) -> tio.Subject:
        return prepare_subject(subject, transform, self.radius, self.pad_value)

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
        quotas = class_quotas(counts, int(self.sampling_queue["samples_per_volume"]))
        block = int(self.sampling_queue["block"])
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

    def _queue(self, task: str, segment: int = 0, rank: int = 0) -> BlockQueue:
        cfg = self.sampling_queue
        generator = seeded_generator(self.seed, SAMPLING, TASK_ORDER.index(task), segment, *rank_keys(rank))
        block = int(cfg["block"])
        if self.dense:
            sampler = ClassBalancedCubeSampler(self.radius, int(self.training["cube"]), block, generator)
        else:
            sampler = ClassBalancedTriplanarSampler(self.radius, block, generator)
        return sampling_queue(self.subjects[task]["train"], sampler, int(cfg["max_length"]), int(cfg["samples_per_volume"]), block)

    def train_batches(
        self, length: int | None = None, start: int = 0, segment: int | None = None, rank: int = 0, world_size: int = 1
    ) -> TaskBalancedBatches | TaskBalancedCubes:
        """Task-balanced mini-batches of sample indices (of cubes in dense mode; :meth:`gather` turns them
        into patches or cubes on the training device) of steps ``start .. length - 1``
        (endless when ``length`` is ``None``), sampling restarted every ``segment`` steps
        (:class:`~mtseg.data.sampling.MinibatchStream`).

        With several processes (DDP), process ``rank`` of ``world_size`` draws its own stream
        (seeded by its rank; rank 0's is the single-process stream) holding its share of the
        global mini-batch: ``data.batch_size / world_size`` samples, or ``training.cubes_per_task /
        world_size`` cubes of every task.
        """
        stream = {"length": length, "start": start, "segment": segment, "seed": self.seed, "rank": rank}
        per_step, knob = (int(self.training["cubes_per_task"]), "training.cubes_per_task") if self.dense else (self.batch_size, "data.batch_size")
        if per_step % world_size or (not self.dense and per_step // world_size < len(self.tasks)):
            raise ValueError(
                f"{knob}={per_step} cannot be split over {world_size} processes (trainer.devices x trainer.num_nodes): "
                f"each needs an equal share{'' if self.dense else ', at least one sample of every task'}"
            )

        def new_queues(k: int) -> dict[str, BlockQueue]:
            return {task: self._queue(task, k, rank) for task in self.tasks}

        if self.dense:
            return TaskBalancedCubes(new_queues, list(self.tasks), per_step // world_size, **stream)
        return TaskBalancedBatches(new_queues, self.label_space, per_step // world_size, **stream)

    def train_dataloader(self) -> DataLoader:
        """The run's mini-batches from its current step on (a resumed run continues its stream);
        sampling restarts at every evaluation, so that any step can be resumed exactly."""
        trainer = self.trainer
        max_steps = trainer.max_steps if trainer is not None else -1
        start = trainer.global_step if trainer is not None else 0
        interval = getattr(trainer, "val_check_interval", None)
        segment = int(interval) if isinstance(interval, int) and interval > 0 else None
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = self.train_batches(max_steps if max_steps > 0 else None, start, segment, rank, world_size)
        # its own generator: creating the loader must not draw from the process's random state
        return DataLoader(batches, batch_size=None, num_workers=0, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        """Whole held-out images, one per step (``data.val_images_per_task`` per task)."""
        images = HeldOutImages(self.held_out_images(self.val_images_per_task))
        return DataLoader(images, batch_size=None, shuffle=False, generator=torch.Generator())
