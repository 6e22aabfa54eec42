"""Label mappings: from a data set's label values to a task's classes.

A mapping is configured as the task's class names, each with the source label IDs
that become that class, plus the IDs that become background::

    classes:
      white_matter: [44, 45]
      cortical_grey_matter: ["100-207", 47, 48, 31, 32]   # "a-b": every ID from a to b
    background: ["0-207"]                                  # IDs mapped to 0 unless a class lists them

Class IDs win over background IDs, so "every other label is background" is written as
a background range over the whole protocol. A value listed nowhere is an error naming
the file and the values. ``classes: null`` is the identity mapping: the files already
hold task-local labels ``0..K`` in the task's class order (see :mod:`mtseg.tasks`).

Schemes live in ``conf/label_map/<name>.yaml`` (e.g. ``miccai2012``) and are shared by
the data configs, ``python -m mtseg.data convert-labels`` and the brain template builder.
The mapping is applied when a label file is read (:meth:`LabelMapping.read`, a TorchIO
reader), so every subject a source yields already holds task-local labels. Both readers
check a file's header before reading its voxels (:func:`mtseg.nifti.checked_nifti`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from omegaconf import OmegaConf

from mtseg import CONFIG_DIR
from mtseg.nifti import atomic_write_bytes, check_outputs, is_nifti_path, read_voxels
from mtseg.tasks import BACKGROUND, get_task

#: Folder of the label mapping schemes (``conf/label_map``).
SCHEME_DIR = CONFIG_DIR / "label_map"
#: Entry of the lookup table for a source value that the mapping does not list.
UNLISTED = -1
#: Largest label value a file may hold (or ``dataset.json`` declare) when no mapping lists the values:
#: every count and lookup table is indexed by value, so a corrupt value such as 2**31 must not size one.
MAX_LABEL_VALUE = 65535


def parse_ids(items: Iterable[int | str] | None, where: str = "label map") -> list[int]:
    """Label IDs from a list of integers and ``"a-b"`` ranges (inclusive)."""
    ids: list[int] = []
    for item in items or []:
        if isinstance(item, str) and "-" in item.strip()[1:]:
            low, high = (int(part) for part in item.split("-", 1))
            if low > high:
                raise ValueError(f"{where}: empty range {item!r}")
            ids.extend(range(low, high + 1))
        else:
            try:
                ids.append(int(item))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {item!r} is neither a label ID nor an 'a-b' range") from None
    if any(i < 0 for i in ids):
        raise ValueError(f"{where}: label IDs must be non-negative, got {sorted(i for i in ids if i < 0)}")
    return ids


@dataclass(frozen=True)
class LabelMapping:
    """A lookup from source label values to output labels.

    Args:
        names: Output label names, ``names[i]`` for output label ``i`` (background first).
        lut: ``lut[v]`` is the output label of source value ``v``, :data:`UNLISTED` if ``v``
            is not allowed; ``None`` accepts every non-negative integer unchanged.
        description: One line for messages and summaries.
    """

    names: tuple[str, ...]
    lut: np.ndarray | None
    description: str

    @classmethod
    def identity(cls, classes: Sequence[str], description: str = "identity") -> LabelMapping:
        """Values ``0..K`` are already the output labels ``background, *classes``."""
        names = (BACKGROUND, *classes)
        return cls(names, np.arange(len(names), dtype=np.int16), description)

    @classmethod
    def passthrough(cls) -> LabelMapping:
        """Every non-negative integer value is kept as it is (a data set checked without a task)."""
        return cls((), None, "label values as stored")

    @classmethod
    def from_config(cls, cfg: Mapping | None, classes: Sequence[str], description: str = "") -> LabelMapping:
        """The mapping of ``cfg`` (``classes``, ``background``) onto the task classes ``classes``.

        ``cfg`` of ``None`` or with ``classes: null`` is the identity mapping.
        """
        cfg = dict(cfg or {})
        name = cfg.get("name") or description or "label map"
        if cfg.get("classes") is None:
            return cls.identity(classes, f"{name} (identity: stored labels are 0..{len(classes)})")
        given = dict(cfg["classes"])
        unknown = [c for c in given if c not in classes]
        if unknown:
            raise ValueError(f"{name}: class(es) {unknown} are not classes of the task ({', '.join(classes)})")
        background = parse_ids(cfg.get("background", [0]), f"{name}.background")
        per_class = {c: parse_ids(given.get(c), f"{name}.classes.{c}") for c in classes}
        size = max([0, *background, *(i for ids in per_class.values() for i in ids)]) + 1
        lut = np.full(size, UNLISTED, dtype=np.int16)
        lut[background] = 0
        owner: dict[int, str] = {}
        for label, c in enumerate(classes, start=1):
            for i in per_class[c]:
                if i in owner and owner[i] != c:
                    raise ValueError(f"{name}: label ID {i} is listed for both {owner[i]} and {c}")
                owner[i] = c
            lut[per_class[c]] = label
        return cls((BACKGROUND, *classes), lut, name)

    @classmethod
    def for_task(cls, task: str, cfg: Mapping | None) -> LabelMapping:
        """The mapping ``cfg`` onto the classes of ``task``."""
        return cls.from_config(cfg, get_task(task).classes, f"data.{task}.label_map")

    @property
    def n_labels(self) -> int | None:
        """Number of output labels (``None`` for a passthrough)."""
        return len(self.names) if self.lut is not None else None

    def apply(self, values: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Map an array of source labels (any integer or integer-valued float type) to output labels.

        Raises:
            ValueError: naming ``path``, for non-integer or non-finite values or values
                the mapping does not list (without a mapping: outside ``0..MAX_LABEL_VALUE``).
        """
        values = np.asanyarray(values)
        if values.dtype.kind == "f":
            if not np.isfinite(values).all():
                raise ValueError(f"{path}: label map holds NaN or infinite values")
            if not np.array_equal(values, np.round(values)):
                raise ValueError(f"{path}: label map holds non-integer values (e.g. {values[values != np.round(values)][:3].tolist()})")
        elif values.dtype.kind not in "iub":
            raise ValueError(f"{path}: label map has non-numeric type {values.dtype}")
        if values.size == 0:
            raise ValueError(f"{path}: label map is empty")
        top = MAX_LABEL_VALUE if self.lut is None else len(self.lut) - 1
        if values.min() < 0 or values.max() > top:
            raise self._outside_error(path, np.unique(values[(values < 0) | (values > top)]))
        values = values.astype(np.int64) if values.dtype.kind == "f" else values
        if self.lut is None:
            return values.astype(np.uint8 if values.max() < 256 else np.int64)
        mapped = self.lut[values]
        if mapped.min() == UNLISTED:
            raise self._outside_error(path, np.unique(values[mapped == UNLISTED]))
        return mapped.astype(np.uint8)

    def _outside_error(self, path: str | Path, values: np.ndarray) -> ValueError:
        shown = values[:20].tolist()
        more = f" and {len(values) - 20} more" if len(values) > 20 else ""
        allowed = f"the label mapping ({self.description})" if self.lut is not None else f"0..{MAX_LABEL_VALUE}"
        return ValueError(f"{path}: label values {shown}{more} are outside {allowed}")

    def read(self, path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
        """TorchIO reader of a label file: mapped labels ``(1, X, Y, Z)`` (uint8) and the affine."""
        data, affine = read_voxels(path)
        return torch.from_numpy(self.apply(data, path))[None], affine


def read_scalar_image(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader of an intensity image: float32 ``(1, X, Y, Z)`` and the affine (see :func:`read_voxels`)."""
    data, affine = read_voxels(path)
    return torch.from_numpy(np.asarray(data, dtype=np.float32))[None], affine


def scheme_path(name: str) -> Path:
    """The config file of label mapping scheme ``name`` (``conf/label_map/<name>.yaml``)."""
    path = SCHEME_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SCHEME_DIR.glob("*.yaml"))
        raise ValueError(f"unknown label mapping scheme {name!r}; known schemes: {', '.join(known)}")
    return path


def load_scheme(name: str) -> tuple[str, LabelMapping]:
    """The task and :class:`LabelMapping` of scheme ``name``."""
    cfg = OmegaConf.to_container(OmegaConf.load(scheme_path(name)), resolve=True)
    if "task" not in cfg:
        raise ValueError(f"{scheme_path(name)}: a scheme names its task (task: brain)")
    task = cfg["task"]
    return task, LabelMapping.from_config(cfg, get_task(task).classes, name)


def convert_label_file(mapping: LabelMapping, source: str | Path, target: str | Path, overwrite: bool = False) -> np.ndarray:
    """Write the mapped labels of ``source`` to ``target`` (uint8, same affine); return the counts per label.

    Everything is checked before anything is written: ``target`` is a NIfTI name, is not
    ``source`` itself (by path, symbolic or hard link) and replaces an existing file only with
    ``overwrite`` (:func:`mtseg.nifti.check_outputs`); ``source`` is read through
    :func:`read_voxels` and mapped. The output is written atomically
    (:func:`mtseg.nifti.atomic_write_bytes`), so a failure (a full disk, a signal) leaves
    nothing behind, not even a folder created for it.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: Naming the file, for any of the checks above.
        OSError: Naming ``target``, when it cannot be written.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such label file")
    if not is_nifti_path(target):
        raise ValueError(f"output {target}: the name must end in .nii or .nii.gz")
    if target.is_dir():
        raise ValueError(f"output {target} is a folder")
    check_outputs([target], {"input label file": source}, overwrite)
    data, affine = read_voxels(source)
    mapped = mapping.apply(data, source)
    counts = np.bincount(mapped.ravel(), minlength=mapping.n_labels or 0)
    out = nib.Nifti1Image(mapped, affine)
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, lambda temporary: nib.save(out, temporary))
    except OSError as error:
        raise OSError(error.errno, f"cannot be written ({error.strerror or error})", str(target)) from None
    finally:
        if not target.is_file():
            for folder in created:  # deepest first
                with suppress(OSError):
                    folder.rmdir()
    return counts
