"""Tasks, their classes and the merged label space of an experiment.

This module is the single source of truth for class names and their order.
A task's label files use task-local labels: 0 is the task's background and
``1..K`` are its classes in the order listed here. An experiment trains one
network on a set of tasks; the tasks' backgrounds merge into global class 0
and the foreground classes follow in the canonical task order
(brain, breast, cta), so the seven experiments have 7, 2, 2, 8, 8, 3 and 9
outputs (paper, Fig. 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

import torch

BACKGROUND = "background"
OPERATING_POINTS = ("argmax", "pr_threshold")


@dataclass(frozen=True)
class Task:
    """One segmentation task of the paper.

    Args:
        name: Short identifier used in configs, metric names and file names.
        modality: Imaging modality, ``"mri"`` or ``"ct"``, stored in checkpoints (``task_modalities``);
            the preprocessing itself is chosen in ``conf/data/<task>/`` (``/preprocessing@preprocessing: mri``).
        classes: Foreground class names; class ``i`` has task-local label ``i + 1``.
        description: One line for humans.
        operating_point: How evaluation turns probabilities into labels (paper §4):
            ``"argmax"`` (the class of highest activation; brain MRI) or ``"pr_threshold"``
            (the task's one foreground probability thresholded at the operating point of
            highest Dice over the pooled test set; breast MRI and cardiac CTA).
    """

    name: str
    modality: str
    classes: tuple[str, ...]
    description: str
    operating_point: str = "argmax"

    def __post_init__(self):
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(f"task {self.name!r}: operating_point must be one of {OPERATING_POINTS}")
        if self.operating_point == "pr_threshold" and len(self.classes) != 1:
            raise ValueError(f"task {self.name!r}: a PR threshold needs exactly one foreground class")

    @property
    def n_classes(self) -> int:
        """Number of task-local classes, background included."""
        return len(self.classes) + 1


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "brain",
            "mri",
            (
                "white_matter",
                "cortical_grey_matter",
                "basal_ganglia_and_thalami",
                "ventricular_csf",
                "cerebellum",
                "brain_stem",
            ),
            "Six brain tissues in T1-weighted brain MRI",
        ),
        Task("breast", "mri", ("pectoral_muscle",), "Pectoral muscle in T1-weighted breast MRI", "pr_threshold"),
        Task("cta", "ct", ("coronary_arteries",), "Coronary arteries in cardiac CT angiography", "pr_threshold"),
    )
}

TASK_ORDER: tuple[str, ...] = tuple(TASKS)

#: The paper's seven experiments, numbered as in Fig. 1: every non-empty subset of the tasks.
EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "_".join(subset): subset
    for size in range(1, len(TASK_ORDER) + 1)
    for subset in combinations(TASK_ORDER, size)
}


def get_task(name: str) -> Task:
    """Return the task called ``name`` or raise a ``ValueError`` listing the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASK_ORDER)}") from None


def experiment_tasks(name: str) -> tuple[str, ...]:
    """Return the tasks of experiment ``name`` or raise a ``ValueError`` listing the experiments."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(
            f"Unknown experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}"
        ) from None


def check_label_range(labels: torch.Tensor, n_classes: int | None, where: str, task: str | None = None) -> None:
    """Raise a ``ValueError`` naming ``where`` and every value of ``labels`` outside ``0..n_classes-1``
    (without ``n_classes``: every negative value). One pass for the minimum and maximum; the values are
    listed only when some are out of range."""
    if not labels.numel():
        return
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and (n_classes is None or high < n_classes):
        return
    found = torch.unique(labels)
    bad = found[(found < 0) | (found >= n_classes)] if n_classes is not None else found[found < 0]
    allowed = f"0..{n_classes - 1}" if n_classes is not None else "0 and above"
    of = f" of task {task!r} ({', '.join(TASKS[task].classes)})" if task in TASKS else ""
    raise ValueError(f"{where}: label values {bad.tolist()} outside {allowed}{of}")


@dataclass(frozen=True)
class LabelSpace:
    """The merged output classes of a network trained on ``tasks``.

    Args:
        tasks: Task names; stored in canonical order whatever order is given.
    """

    tasks: tuple[str, ...]

    def __init__(self, tasks: Iterable[str]):
        names = list(tasks)
        if not names:
            raise ValueError("An experiment needs at least one task")
        for name in names:
            get_task(name)
        if len(set(names)) != len(names):
            raise ValueError(f"Task listed twice in {names}")
        object.__setattr__(self, "tasks", tuple(t for t in TASK_ORDER if t in names))

    @property
    def experiment(self) -> str:
        """Experiment name, the task names joined by underscores."""
        return "_".join(self.tasks)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Output channel names: background, then each task's classes."""
        return (BACKGROUND,) + tuple(c for t in self.tasks for c in TASKS[t].classes)

    @property
    def class_tasks(self) -> tuple[str | None, ...]:
        """Task of each output channel (``None`` for the shared background)."""
        return (None,) + tuple(t for t in self.tasks for _ in TASKS[t].classes)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def global_labels(self, task: str) -> torch.Tensor:
        """Lookup table from ``task``'s local labels to this space's output channels."""
        if task not in self.tasks:
            raise ValueError(f"Task {task!r} is not part of experiment {self.experiment!r}")
        first = 1 + sum(len(TASKS[t].classes) for t in self.tasks[: self.tasks.index(task)])
        return torch.tensor([0] + list(range(first, first + len(TASKS[task].classes))))

    def task_classes(self, task: str) -> list[int]:
        """Output channels that belong to ``task``, background (0) first."""
        return self.global_labels(task).tolist()

    def to_local(self, task: str) -> torch.Tensor:
        """Lookup table from output channels to ``task``'s local labels; other tasks' classes map to 0."""
        lut = torch.zeros(self.n_classes, dtype=torch.uint8)
        lut[self.global_labels(task)] = torch.arange(TASKS[task].n_classes, dtype=torch.uint8)
        return lut

    def alien_channels(self, task: str) -> torch.Tensor:
        """Boolean mask over output channels: ``True`` for classes of tasks other than ``task``."""
        if task not in self.tasks:
            raise ValueError(f"Task {task!r} is not part of experiment {self.experiment!r}")
        return torch.tensor([t is not None and t != task for t in self.class_tasks])

    def to_dict(self) -> dict:
        """Everything a checkpoint needs to say what each output channel means."""
        return {
            "experiment": self.experiment,
            "tasks": list(self.tasks),
            "class_names": list(self.class_names),
            "class_tasks": list(self.class_tasks),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelSpace:
        space = cls(data["tasks"])
        if list(space.class_names) != list(data["class_names"]):
            raise ValueError(
                f"Stored class names {data['class_names']} do not match this mtseg version's "
                f"{list(space.class_names)}"
            )
        return space
