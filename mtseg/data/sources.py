"""Where each task's images come from; every source yields TorchIO subjects.

A source is selected per task by ``data.<task>.source``:

- ``phantoms``: synthetic phantoms (:mod:`mtseg.data.phantoms`), the default;
- ``nifti_folder``: ``images/`` and ``labels/`` with matching names, or a CSV
  (:mod:`mtseg.data.nifti_folder`);
- ``nnunet``: an nnU-Net v2 raw data set (:mod:`mtseg.data.nnunet`).

Each returns the task's subjects per split (``"train"``, ``"test"``; see
:mod:`mtseg.data.split` for how file sources split); every subject holds an ``image``
(``tio.ScalarImage``), a ``label`` (``tio.LabelMap``, task-local labels: the source's
``label_map`` is applied when the file is read, see :mod:`mtseg.data.label_mapping`),
``task`` and ``case_id``. Sources only list files and check the layout; the content of
every file is checked by :func:`mtseg.data.check.check_subjects` before preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torchio as tio

from mtseg.data.label_mapping import LabelMapping, read_scalar_image
from mtseg.data.nifti_folder import folder_cases
from mtseg.data.nnunet import nnunet_cases, restrict_to_declared
from mtseg.data.phantoms import write_phantom_dataset
from mtseg.data.preprocessing import IMAGE, LABEL
from mtseg.data.split import Case, split_cases


def subject_from_files(
    task: str | None,
    image: Path,
    label: Path,
    mapping: LabelMapping | None = None,
    case_id: str | None = None,
) -> tio.Subject:
    """A lazily loaded subject of ``task`` from an image and a label file.

    Args:
        task: Task name (``None`` when a data set is checked without a task).
        image: Intensity image file.
        label: Label file.
        mapping: Applied to the label values when the file is read; ``None`` reads them as stored.
        case_id: Defaults to the image file name up to its first dot.
    """
    if mapping is None:
        image_kwargs, label_kwargs = {}, {}
    else:
        image_kwargs, label_kwargs = {"reader": read_scalar_image}, {"reader": mapping.read}
    return tio.Subject(
        {
            IMAGE: tio.ScalarImage(image, **image_kwargs),
            LABEL: tio.LabelMap(label, **label_kwargs),
            "task": task,
            "case_id": case_id if case_id is not None else Path(image).name.split(".")[0],
        }
    )


def subjects_of_cases(task: str | None, splits: Mapping[str, list[Case]], mapping: LabelMapping) -> dict[str, list[tio.Subject]]:
    """Lazily loaded subjects of every split, labels read through ``mapping``."""
    return {
        split: [subject_from_files(task, c.image, c.label, mapping, c.case_id) for c in cases]
        for split, cases in splits.items()
    }


def nifti_folder_subjects(task: str, cfg: Mapping, root: str | Path) -> dict[str, list[tio.Subject]]:
    """Subjects of a NIfTI folder or CSV data set (``data.<task>.root``), split by ``data.<task>.split``."""
    where = f"data.{task}"
    cases = folder_cases(cfg, where)
    splits = split_cases(cases, cfg.get("split"), cfg["root"], f"{cfg['root']} ({where})")
    return subjects_of_cases(task, splits, LabelMapping.for_task(task, cfg.get("label_map")))


def nnunet_subjects(task: str, cfg: Mapping, root: str | Path) -> dict[str, list[tio.Subject]]:
    """Subjects of an nnU-Net v2 raw data set (``data.<task>.root``), channel ``data.<task>.channel``.

    Label values must be declared in ``dataset.json`` and listed by ``data.<task>.label_map``.
    """
    where = f"data.{task}"
    if cfg.get("root") in (None, "", "???"):
        raise ValueError(f"{where}.root is not set: point it at the nnU-Net data set folder (DatasetNNN_Name)")
    dataset, cases = nnunet_cases(cfg["root"], int(cfg.get("channel", 0)))
    splits = split_cases(cases, cfg.get("split"), dataset.root, f"{dataset.root} ({where})")
    mapping = restrict_to_declared(LabelMapping.for_task(task, cfg.get("label_map")), dataset)
    return subjects_of_cases(task, splits, mapping)


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


SOURCES = {"phantoms": phantom_subjects, "nifti_folder": nifti_folder_subjects, "nnunet": nnunet_subjects}


def task_subjects(task: str, cfg: Mapping, root: str | Path) -> dict[str, list[tio.Subject]]:
    """The subjects of ``task`` per split, from the source named in ``cfg.source``."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(
            f"data.{task}.source={source!r} is not a known source; choose one of {', '.join(SOURCES)}"
        )
    return SOURCES[source](task, cfg, root)
