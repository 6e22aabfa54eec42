"""nnU-Net v2 raw data sets: the format most segmentation data sets are shared in.

Layout (``DatasetNNN_Name/``)::

    dataset.json                 channel_names, labels, numTraining, file_ending
    imagesTr/<case>_0000.nii.gz  one file per case and channel (suffix _0000, _0001, ...)
    labelsTr/<case>.nii.gz
    imagesTs/<case>_0000.nii.gz  optional
    labelsTs/<case>.nii.gz       optional; with it the imagesTs cases are the held-out split

mtseg reads one channel per case (``data.<task>.channel``, default 0) and checks the
files against ``dataset.json`` the way nnU-Net's ``--verify_dataset_integrity`` does:
every case has every channel and a label, ``numTraining`` matches ``imagesTr``, label
values are among the declared ``labels``. :func:`write_dataset` writes the format
(used by :mod:`mtseg.data.brain_templates`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mtseg.data.label_mapping import MAX_LABEL_VALUE, UNLISTED, LabelMapping
from mtseg.data.split import Case, read_json
from mtseg.nifti import NIFTI_SUFFIXES

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class NnUNetDataset:
    """What a data set's ``dataset.json`` declares.

    Args:
        root: The data set folder.
        channel_names: Channel index -> name.
        labels: Label name -> value.
        num_training: ``numTraining``.
        file_ending: ``file_ending`` (``.nii.gz`` or ``.nii``).
    """

    root: Path
    channel_names: dict[int, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str

    @property
    def json_path(self) -> Path:
        return self.root / DATASET_JSON


def is_nnunet_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like an nnU-Net raw data set (has ``dataset.json`` or ``imagesTr``)."""
    path = Path(path)
    return (path / DATASET_JSON).is_file() or (path / "imagesTr").is_dir()


def read_dataset_json(root: str | Path) -> NnUNetDataset:
    """Parse and check ``root/dataset.json``; keys other than the four read here are ignored.

    Raises:
        ValueError: Naming ``dataset.json`` and the key: not JSON, a key missing or of the
            wrong type, or a region-based ``labels`` (lists of values), which mtseg does not read.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: nnU-Net data set folder not found")
    path = root / DATASET_JSON
    if not path.is_file():
        raise ValueError(f"{path}: missing; an nnU-Net v2 raw data set needs dataset.json")
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(content).__name__}")
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in content]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    names = content["channel_names"]
    if not isinstance(names, dict) or not all(key.strip().isdigit() for key in names):
        raise ValueError(f'{path}: channel_names must map channel indices to names (e.g. {{"0": "T1"}}), got {names!r:.80}')
    channels = {int(k): str(v) for k, v in names.items()}
    if sorted(channels) != list(range(len(channels))) or not channels:
        raise ValueError(f"{path}: channel_names must be numbered 0..C-1, got {sorted(channels)}")
    if not isinstance(content["labels"], dict):
        raise ValueError(f'{path}: labels must map label names to values (e.g. {{"background": 0, "tumour": 1}}), got {content["labels"]!r:.80}')
    labels = {}
    for name, value in content["labels"].items():
        if isinstance(value, (list, tuple)):
            raise ValueError(
                f"{path}: label {name!r} is a region ({value}); region-based labels are not supported, "
                "declare one value per label"
            )
        if not _is_count(value) or value > MAX_LABEL_VALUE:
            raise ValueError(f"{path}: label {name!r} has value {value!r}; label values are integers 0..{MAX_LABEL_VALUE}")
        labels[str(name)] = value
    if labels.get("background") != 0:
        raise ValueError(f"{path}: labels must declare background as 0")
    if len(set(labels.values())) != len(labels):
        raise ValueError(f"{path}: labels declare a value twice: {labels}")
    if not _is_count(content["numTraining"]):
        raise ValueError(f"{path}: numTraining must be the number of training cases, got {content['numTraining']!r}")
    ending = content["file_ending"]
    if ending not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: file_ending {ending!r} is not supported; mtseg reads {', '.join(NIFTI_SUFFIXES)}")
    return NnUNetDataset(root, channels, labels, content["numTraining"], ending)


def _is_count(value) -> bool:
    """Whether a JSON value is a non-negative integer (``true`` and ``1.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _files(folder: Path) -> list[Path]:
    """The files of ``folder``, hidden ones skipped; anything else (a sub-folder) is an error."""
    paths = [path for path in sorted(folder.iterdir()) if not path.name.startswith(".")]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: not a file; {folder} holds only NIfTI files")
    return paths


def _images_by_case(folder: Path, dataset: NnUNetDataset) -> dict[str, dict[int, Path]]:
    pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(dataset.file_ending)}$")
    cases: dict[str, dict[int, Path]] = {}
    for path in _files(folder):
        match = pattern.match(path.name)
        if match is None:
            raise ValueError(
                f"{path}: not named <case>_<channel as 4 digits>{dataset.file_ending} as {dataset.json_path} requires"
            )
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    channels = set(dataset.channel_names)
    for case, files in cases.items():
        if set(files) != channels:
            extra = sorted(set(files) - channels)
            lacking = sorted(channels - set(files))
            raise ValueError(
                f"{folder}: case {case!r} has channel files {sorted(files)} but {dataset.json_path} declares "
                f"channels {sorted(channels)}" + (f" (missing {lacking})" if lacking else f" (undeclared {extra})")
            )
    return cases


def _labels(folder: Path, dataset: NnUNetDataset) -> dict[str, Path]:
    labels = {}
    for path in _files(folder):
        if not path.name.endswith(dataset.file_ending):
            raise ValueError(f"{path}: label file does not end in {dataset.file_ending} ({dataset.json_path})")
        labels[path.name[: -len(dataset.file_ending)]] = path
    return labels


def _paired(images_dir: Path, labels_dir: Path, dataset: NnUNetDataset, channel: int, split: str) -> list[Case]:
    images = _images_by_case(images_dir, dataset)
    labels = _labels(labels_dir, dataset)
    for case in images:
        if case not in labels:
            raise ValueError(f"{images[case][channel]}: no label {case}{dataset.file_ending} in {labels_dir}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise ValueError(f"{labels[orphans[0]]}: label without an image in {images_dir} ({len(orphans)} such label file(s))")
    return [Case(case, images[case][channel], labels[case], split) for case in sorted(images)]


def nnunet_cases(root: str | Path, channel: int = 0) -> tuple[NnUNetDataset, list[Case]]:
    """The declared data set and its labelled cases (``imagesTr``; ``imagesTs`` too when ``labelsTs`` exists)."""
    dataset = read_dataset_json(root)
    if channel not in dataset.channel_names:
        raise ValueError(f"channel {channel} requested, but {dataset.json_path} declares channels {sorted(dataset.channel_names)}")
    root = dataset.root
    for folder in ("imagesTr", "labelsTr"):
        if not (root / folder).is_dir():
            raise ValueError(f"{root / folder}: folder not found")
    cases = _paired(root / "imagesTr", root / "labelsTr", dataset, channel, "train")
    if not cases:
        raise ValueError(f"{root / 'imagesTr'}: the folder is empty")
    if len(cases) != dataset.num_training:
        raise ValueError(f"{dataset.json_path}: numTraining is {dataset.num_training} but imagesTr holds {len(cases)} case(s)")
    if (root / "labelsTs").is_dir():
        if not (root / "imagesTs").is_dir():
            raise ValueError(f"{root / 'labelsTs'}: labels without an imagesTs folder")
        cases += _paired(root / "imagesTs", root / "labelsTs", dataset, channel, "test")
    elif (root / "imagesTs").is_dir():
        _images_by_case(root / "imagesTs", dataset)  # named and complete, though unlabelled (not used)
    return dataset, cases


def restrict_to_declared(mapping: LabelMapping, dataset: NnUNetDataset) -> LabelMapping:
    """``mapping`` accepting only the label values that ``dataset.json`` declares."""
    declared = np.array(sorted(dataset.labels.values()))
    size = int(declared.max()) + 1
    if mapping.lut is None:
        lut = np.full(size, UNLISTED, dtype=np.int16)
        lut[declared] = declared
        by_value = {v: k for k, v in dataset.labels.items()}
        names = tuple(by_value.get(v, str(v)) for v in range(size))
    else:
        lut = np.full(size, UNLISTED, dtype=np.int16)
        known = declared[declared < len(mapping.lut)]
        lut[known] = mapping.lut[known]
        names = mapping.names
    return LabelMapping(names, lut, f"{mapping.description}, restricted to the labels declared in {dataset.json_path}")


def write_dataset(
    folder: str | Path,
    training: Sequence[tuple[str, nib.Nifti1Image, nib.Nifti1Image]],
    held_out: Sequence[tuple[str, nib.Nifti1Image, nib.Nifti1Image]],
    channel_name: str,
    labels: Mapping[str, int],
    extra: Mapping | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a single-channel nnU-Net v2 raw data set; return its folder.

    Everything is written to a hidden sibling folder first and renamed into place, so
    an interrupted build never leaves a half-written data set behind (an existing
    data set at ``folder`` is replaced).

    Args:
        folder: The data set folder (``.../DatasetNNN_Name``).
        training: ``(case ID, image, label)`` of ``imagesTr``/``labelsTr``.
        held_out: ``(case ID, image, label)`` of ``imagesTs``/``labelsTs``.
        channel_name: Name of channel 0 (``"T1"``).
        labels: Label name -> value, background 0 first.
        extra: More entries for ``dataset.json`` (e.g. a description, licence notes).
        files: More files (relative path -> content), written with the data set.
    """
    folder = Path(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (partial / sub).mkdir(parents=True)
    for split, cases in (("Tr", training), ("Ts", held_out)):
        for case_id, image, label in cases:
            nib.save(image, str(partial / f"images{split}" / f"{case_id}_0000.nii.gz"))
            nib.save(label, str(partial / f"labels{split}" / f"{case_id}.nii.gz"))
    content = {
        "channel_names": {"0": channel_name},
        "labels": dict(labels),
        "numTraining": len(training),
        "file_ending": ".nii.gz",
        **dict(extra or {}),
    }
    (partial / DATASET_JSON).write_text(json.dumps(content, indent=2) + "\n")
    for relative, data in dict(files or {}).items():
        (partial / relative).parent.mkdir(parents=True, exist_ok=True)
        (partial / relative).write_bytes(data)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder
