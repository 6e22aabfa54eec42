"""Where each task's images come from; every source yields TorchIO subjects.

A source is selected per task by ``data.<task>.source``. Each returns the
task's subjects per split (``"train"``, ``"test"``); every subject holds an
``image`` (``tio.ScalarImage``), a ``label`` (``tio.LabelMap``, task-local labels),
``task`` and ``case_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torchio as tio

from mtseg.data.phantoms import write_phantom_dataset
from mtseg.data.preprocessing import IMAGE, LABEL


def subject_from_files(task: str, image: Path, label: Path) -> tio.Subject:
    """A lazily loaded subject of ``task`` from an image and a label file."""
    return tio.Subject(
        {
            IMAGE: tio.ScalarImage(image),
            LABEL: tio.LabelMap(label),
            "task": task,
            "case_id": Path(image).name.split(".")[0],
        }
    )


def phantom_subjects(task: str, cfg: Mapping, root: str | Path) -> dict[str, list[tio.Subject]]:
    """Synthetic phantoms of ``task``, generated once and cached under ``root``.

    The first ``n_train`` subjects are the training split, the next ``n_test`` the test split.

    Args:
        task: Task name.
        cfg: The task's data config: ``n_train``, ``n_test``, ``seed``, ``shape``, ``spacing``.
        root: Folder for generated data.
    """
    for key in ("n_train", "n_test"):
        if int(cfg[key]) < 1:
            raise ValueError(f"data.{task}.{key} must be at least 1, got {cfg[key]}")
    n_train = int(cfg["n_train"])
    pairs = write_phantom_dataset(
        task,
        Path(root) / "phantoms",
        n_subjects=n_train + int(cfg["n_test"]),
        seed=int(cfg["seed"]),
        shape=tuple(cfg["shape"]) if cfg.get("shape") is not None else None,
        spacing=cfg.get("spacing"),
    )
    subjects = [subject_from_files(task, image, label) for image, label in pairs]
    return {"train": subjects[:n_train], "test": subjects[n_train:]}


SOURCES = {"phantoms": phantom_subjects}


def task_subjects(task: str, cfg: Mapping, root: str | Path) -> dict[str, list[tio.Subject]]:
    """The subjects of ``task`` per split, from the source named in ``cfg.source``."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(
            f"data.{task}.source={source!r} is not a known source; choose one of {', '.join(SOURCES)}"
        )
    return SOURCES[source](task, cfg, root)
