"""A folder of NIfTI images and label maps: the layout of most in-house data sets.

Either folders, with label files named like their images::

    root/images/case01.nii.gz     root/labels/case01.nii.gz
    root/images/case02.nii        root/labels/case02.nii

(``label_suffix`` allows ``case01_glm.nii``; ``images`` and ``labels`` may each map
``train``/``test`` to their own folder, e.g. MICCAI 2012's ``training-images`` and
``testing-images``, which then is the layout's split), or a CSV with the columns
``image``, ``label`` and optionally ``split`` (``train``/``test``), paths relative to
the CSV's folder. The case ID is the image file name without ``.nii``/``.nii.gz``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from mtseg.data.split import SPLITS, Case
from mtseg.nifti import NIFTI_SUFFIXES



def case_id_of(path: Path) -> str | None:
    """The file name without its NIfTI extension, or ``None`` for a file that is not NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def nifti_files(folder: Path, what: str) -> dict[str, Path]:
    """NIfTI files of ``folder`` by case ID; hidden files are skipped, any other file is an error."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: {what} folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        case_id = case_id_of(path)
        if case_id is None or not path.is_file():
            raise ValueError(f"{path}: not a NIfTI file (.nii or .nii.gz) in the {what} folder")
        if case_id in files:
            raise ValueError(f"{path}: case {case_id!r} is stored twice ({files[case_id].name} and {path.name})")
        files[case_id] = path
    if not files:
        raise ValueError(f"{folder}: the {what} folder holds no NIfTI files")
    return files


def _folders(value, root: Path, key: str) -> dict[str | None, Path]:
    if isinstance(value, str):
        return {None: root / value}
    if isinstance(value, Mapping) and value and set(value) <= set(SPLITS):
        return {split: root / folder for split, folder in value.items()}
    raise ValueError(f"{key} must be a folder name or a mapping of train/test to folder names, got {value!r}")


def folder_cases(cfg: Mapping, where: str) -> list[Case]:
    """Cases of a NIfTI folder data set configured by ``cfg`` (``root``, ``images``, ``labels``, ``label_suffix``, ``csv``)."""
    if cfg.get("root") in (None, "", "???"):
        raise ValueError(f"{where}.root is not set: point it at the data set's folder")
    root = Path(cfg["root"])
    if not root.is_dir():
        raise ValueError(f"{root}: data set folder not found ({where}.root)")
    if cfg.get("csv"):
        return csv_cases(root / cfg["csv"])

    suffix = str(cfg.get("label_suffix") or "")
    image_folders = _folders(cfg.get("images", "images"), root, f"{where}.images")
    label_folders = _folders(cfg.get("labels", "labels"), root, f"{where}.labels")
    if set(image_folders) != set(label_folders):
        raise ValueError(f"{where}: images and labels must name the same splits, got {list(image_folders)} and {list(label_folders)}")
    cases = []
    for split, image_folder in image_folders.items():
        images = nifti_files(image_folder, "images")
        labels = nifti_files(label_folders[split], "labels")
        expected = {case_id + suffix: case_id for case_id in images}
        orphans = sorted(set(labels) - set(expected))
        if orphans:
            raise ValueError(
                f"{label_folders[split] / labels[orphans[0]].name}: label file without an image "
                f"(expected images/<case>{NIFTI_SUFFIXES[0]} with labels named <case>{suffix}.nii[.gz]; "
                f"{len(orphans)} such label file(s))"
            )
        for label_id, case_id in expected.items():
            if label_id not in labels:
                raise ValueError(
                    f"{images[case_id]}: no label file {label_id}.nii.gz or {label_id}.nii in {label_folders[split]}"
                )
            cases.append(Case(case_id, images[case_id], labels[label_id], split))
    return cases


def csv_cases(path: Path) -> list[Case]:
    """Cases listed in a CSV with columns ``image``, ``label`` and optionally ``split``."""
    if not path.is_file():
        raise ValueError(f"{path}: CSV file not found")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV file ({error})") from None
    if not {"image", "label"} <= columns:
        raise ValueError(f"{path}: a data set CSV needs the columns image, label (and optionally split); found {sorted(columns)}")
    if not rows:
        raise ValueError(f"{path}: the CSV lists no images")
    cases = []
    for line, row in enumerate(rows, start=2):
        image, label = path.parent / (row["image"] or ""), path.parent / (row["label"] or "")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{path}, line {line}: split must be train or test, got {split!r}")
        if not row["image"] or not image.is_file():
            raise ValueError(f"{path}, line {line}: image file {image} not found")
        if not row["label"] or not label.is_file():
            raise ValueError(f"{path}, line {line}: missing label for image {image}")
        case_id = case_id_of(image)
        if case_id is None:
            raise ValueError(f"{path}, line {line}: {image} is not a NIfTI file (.nii or .nii.gz)")
        cases.append(Case(case_id, image, label, split))
    return cases
