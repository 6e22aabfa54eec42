"""Data set checks, run by ``python -m mtseg.data check PATH`` and by training before preprocessing.

Every image and label of every split is read once and checked the way nnU-Net's
``--verify_dataset_integrity`` does: a single-channel 3-D image, finite intensities, a
label on the same grid (shape and affine), label values inside the label mapping (the
source's reader maps them and raises for a value the mapping does not list) and, for
a task, inside the task's classes. Problems raise a ``ValueError`` naming the file.
The layout itself (missing labels, ``dataset.json`` against the files, split IDs) is
checked when the source lists its files.

The summary lists, per image, its split, shape, spacing, orientation (nibabel axis
codes), intensity range, share of voxels clearly below 0 (``< 0 %``: below -5 % of its
99.5th percentile; MR none, a chest CT in HU about two thirds; what ``predict``'s intensity
agreement compares with the training images') and voxels per class after mapping. Images read from files are
unloaded after their check, so checking a data set holds one image in memory at a time
(preprocessing reads them again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
import nibabel as nib
import numpy as np
import torch
import torchio as tio

from mtseg.data.label_mapping import LabelMapping, load_scheme
from mtseg.data.nifti_folder import csv_cases, folder_cases
from mtseg.nifti import is_nifti_path
from mtseg.data.nnunet import is_nnunet_folder, nnunet_cases, restrict_to_declared
from mtseg.data.preprocessing import IMAGE, LABEL, negative_fraction
from mtseg.data.sources import subjects_of_cases
from mtseg.data.split import split_cases
from mtseg.tasks import BACKGROUND, check_label_range, get_task

#: Largest difference (mm) between the affines of an image and its label.
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CaseSummary:
    """What the check found in one image and its label."""

    case_id: str
    split: str
    image: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    intensity_range: tuple[float, float]
    negative_fraction: float  # of its voxels clearly below 0 (mtseg.data.preprocessing.negative_fraction)
    class_voxels: tuple[int, ...]


@dataclass
class DatasetSummary:
    """The checked cases of a data set and the names of its classes."""

    where: str
    class_names: tuple[str, ...]
    cases: list[CaseSummary] = field(default_factory=list)

    def split_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for case in self.cases:
            sizes[case.split] = sizes.get(case.split, 0) + 1
        return sizes

    def class_totals(self) -> np.ndarray:
        width = max([len(self.class_names), *(len(c.class_voxels) for c in self.cases)])
        totals = np.zeros(width, dtype=np.int64)
        for case in self.cases:
            totals[: len(case.class_voxels)] += case.class_voxels
        return totals

    def format(self) -> str:
        """A human-readable report."""
        sizes = self.split_sizes()
        lines = [
            f"{self.where}: {len(self.cases)} image(s) ("
            + ", ".join(f"{n} {split}" for split, n in sizes.items())
            + ")",
            f"{'case':<24} {'split':<6} {'shape':<16} {'spacing (mm)':<20} {'orient.':<7} {'intensity range':<24} "
            f"{'< 0 %':>6} voxels per class",
        ]
        for c in self.cases:
            shape = "x".join(str(s) for s in c.shape)
            spacing = "x".join(f"{s:.3g}" for s in c.spacing)
            lines.append(
                f"{c.case_id:<24} {c.split:<6} {shape:<16} {spacing:<20} {c.orientation:<7} "
                f"{c.intensity_range[0]:>10.4g} .. {c.intensity_range[1]:<10.4g} {100 * c.negative_fraction:>6.1f} {list(c.class_voxels)}"
            )
        totals = self.class_totals()
        present = np.zeros(len(totals), dtype=int)
        for c in self.cases:
            present[: len(c.class_voxels)] += np.asarray(c.class_voxels) > 0
        lines.append("voxels per class over all images (images containing it):")
        for label, total in enumerate(totals):
            if total or label < len(self.class_names):
                name = self.class_names[label] if label < len(self.class_names) else str(label)
                lines.append(f"  {label:>3} {name:<28} {int(total):>14,d} ({present[label]} image(s))")
        shapes = {c.shape for c in self.cases}
        spacings = {tuple(round(s, 3) for s in c.spacing) for c in self.cases}
        orientations = sorted({c.orientation for c in self.cases})
        lines.append(
            f"{len(shapes)} distinct shape(s), {len(spacings)} distinct spacing(s), orientation(s) {', '.join(orientations)}"
        )
        return "\n".join(lines)


def _name(image: tio.Image, subject: tio.Subject, key: str) -> str:
    return str(image.path) if image.path is not None else f"case {subject.get('case_id')!r} ({key}, in memory)"


def check_subject(subject: tio.Subject, split: str, n_classes: int | None) -> CaseSummary:
    """Check one subject's image and label; return what was found (see the module docstring)."""
    task = subject.get("task")
    image, label = subject[IMAGE], subject[LABEL]
    image_name, label_name = _name(image, subject, IMAGE), _name(label, subject, LABEL)
    data = image.data
    if data.ndim != 4 or data.shape[0] != 1 or min(data.shape[1:]) < 2:
        raise ValueError(f"{image_name}: expected a single-channel 3-D image, got shape {tuple(data.shape)} (channels first)")
    finite = torch.isfinite(data)
    if not finite.all():
        raise ValueError(f"{image_name}: {int((~finite).sum())} voxel(s) with NaN or infinite intensity")
    labels = label.data
    if labels.shape != data.shape:
        raise ValueError(
            f"{label_name}: label and image {image_name} differ in shape or geometry: "
            f"shape {tuple(labels.shape[1:])} vs {tuple(data.shape[1:])}"
        )
    difference = float(np.abs(np.asarray(label.affine) - np.asarray(image.affine)).max())
    if difference > AFFINE_TOLERANCE:
        raise ValueError(
            f"{label_name}: label and image {image_name} differ in shape or geometry: affines differ by up to {difference:.4g} mm:\n"
            f"{np.round(label.affine, 4)}\nvs\n{np.round(image.affine, 4)}"
        )
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise ValueError(f"{label_name}: label map holds non-integer, NaN or infinite values")
    values = labels.long().flatten()
    check_label_range(values, n_classes, label_name, task)
    counts = torch.bincount(values, minlength=n_classes or 0)
    summary = CaseSummary(
        case_id=str(subject.get("case_id")),
        split=split,
        image=image_name,
        shape=tuple(int(s) for s in data.shape[1:]),
        spacing=tuple(float(s) for s in image.spacing),
        orientation="".join(nib.aff2axcodes(image.affine)),
        intensity_range=(float(data.min()), float(data.max())),
        negative_fraction=negative_fraction(data),
        class_voxels=tuple(int(c) for c in counts),
    )
    for img in (image, label):
        if img.path is not None:
            img.unload()
    return summary


def check_subjects(
    splits: Mapping[str, Sequence[tio.Subject]],
    task: str | None = None,
    where: str = "data set",
    class_names: Sequence[str] | None = None,
) -> DatasetSummary:
    """Check every subject of every split (see the module docstring); return the summary.

    Args:
        splits: Subjects per split, as a source returns them.
        task: The task whose classes the labels must be in; ``None`` accepts any label value.
        where: Names the data set in the summary.
        class_names: Names of the label values (defaults to the task's, background first).
    """
    n_classes = get_task(task).n_classes if task is not None else None
    if class_names is None:
        class_names = (BACKGROUND, *get_task(task).classes) if task is not None else ()
    summary = DatasetSummary(where, tuple(class_names))
    for split, subjects in splits.items():
        for subject in subjects:
            summary.cases.append(check_subject(subject, split, n_classes))
    return summary


def check_dataset(
    path: str | Path,
    scheme: str | None = None,
    task: str | None = None,
    channel: int = 0,
    folder: Mapping | None = None,
    split: Mapping | None = None,
) -> DatasetSummary:
    """Check the data set at ``path``: an nnU-Net raw folder, a NIfTI folder or a data set CSV.

    Args:
        path: The data set folder (nnU-Net when it holds ``dataset.json`` or ``imagesTr``) or CSV file.
        scheme: A label mapping scheme of ``conf/label_map`` (e.g. ``miccai2012``); implies its task.
        task: Check labels against this task's classes (identity mapping when no scheme is given).
            With neither, any non-negative integer label is accepted (nnU-Net: any declared one).
        channel: The nnU-Net channel to read.
        folder: More NIfTI folder settings (``images``, ``labels``, ``label_suffix``).
        split: ``data.<task>.split`` settings; the default rule otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such folder or file")
    if scheme is not None:
        scheme_task, mapping = load_scheme(scheme)
        if task is not None and task != scheme_task:
            raise ValueError(f"scheme {scheme!r} maps to task {scheme_task!r}, not {task!r}")
        task = scheme_task
    elif task is not None:
        mapping = LabelMapping.from_config(None, get_task(task).classes, f"task {task}")
    else:
        mapping = LabelMapping.passthrough()
    root = path.parent if path.is_file() else path
    if path.is_file() and is_nifti_path(path):
        raise ValueError(
            f"{path}: a single NIfTI image, not a data set: pass the data set's folder (images/ and labels/, or nnU-Net's "
            "imagesTr/ and labelsTr/) or a CSV listing image and label files"
        )
    if path.is_file():
        kind, cases = "data set CSV", csv_cases(path)
    elif is_nnunet_folder(path):
        dataset, cases = nnunet_cases(path, channel)
        mapping = restrict_to_declared(mapping, dataset)
        kind = "nnU-Net raw data set"
    else:
        kind, cases = "NIfTI folder", folder_cases({"root": str(path), **dict(folder or {})}, "check")
    splits = split_cases(cases, split, root, str(path))
    names = mapping.names if mapping.lut is not None else ()
    return check_subjects(subjects_of_cases(task, splits, mapping), task, f"{path} ({kind}, labels: {mapping.description})", names)
