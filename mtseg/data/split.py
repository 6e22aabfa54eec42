"""Labelled cases and their train/test split.

A source lists its cases (:class:`Case`: case ID, image file, label file and the split
its layout suggests, if any) and :func:`split_cases` assigns each to ``train`` or
``test`` from ``data.<task>.split``, in this order of precedence:

1. ``file``: a JSON file ``{"train": [...], "test": [...]}`` of case IDs (relative paths
   are relative to the data set's root);
2. ``train`` / ``test``: lists of case IDs; a list given alone takes its cases and every
   other case goes to the other split;
3. the layout's own split, where it names held-out cases (nnU-Net: ``imagesTs`` with
   ``labelsTs``; a CSV: its ``split`` column);
4. the rule: a seeded random ``test_fraction`` of the cases (at least one, never all)
   is held out; with ``seed: 0`` and ``test_fraction: 0.2`` by default.

A case ID in a list that the data set does not have, or one in both lists, is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Case:
    """One labelled image of a data set.

    Args:
        case_id: Identifier (the file name without extension, without nnU-Net's channel suffix).
        image: Intensity image file.
        label: Label file.
        split: The split the data set's layout suggests (``"train"``, ``"test"``) or ``None``.
    """

    case_id: str
    image: Path
    label: Path
    split: str | None = None


def _ids(value, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{where} must be a list of case IDs, got {value!r}")
    return [str(v) for v in value]


def read_json(path: Path):
    """The content of the JSON file ``path``; a ValueError naming it when it is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _lists_from_file(path: Path) -> tuple[list[str] | None, list[str] | None]:
    if not path.is_file():
        raise ValueError(f"{path}: split file not found")
    content = read_json(path)
    if not isinstance(content, dict) or not set(content) & set(SPLITS) or set(content) - set(SPLITS):
        raise ValueError(f'{path}: a split file is a JSON object with "train" and/or "test" lists of case IDs')
    return _ids(content.get("train"), f"{path}: train"), _ids(content.get("test"), f"{path}: test")


def split_cases(cases: Sequence[Case], cfg: Mapping | None, root: str | Path, where: str) -> dict[str, list[Case]]:
    """Assign ``cases`` to ``train`` and ``test`` as ``cfg`` says; each split sorted by case ID.

    Args:
        cases: The data set's labelled cases (unique IDs).
        cfg: ``data.<task>.split``: ``file``, ``train``, ``test``, ``test_fraction``, ``seed``.
        root: The data set's folder, for a relative ``file``.
        where: Names the data set in messages.
    """
    cfg = dict(cfg or {})
    by_id = {c.case_id: c for c in cases}
    if len(by_id) != len(cases):
        seen: set[str] = set()
        twice = sorted({c.case_id for c in cases if c.case_id in seen or seen.add(c.case_id)})
        raise ValueError(f"{where}: case ID(s) {twice} occur more than once")
    if not by_id:
        raise ValueError(f"{where}: no labelled cases found")

    train, test = _ids(cfg.get("train"), f"{where}: split.train"), _ids(cfg.get("test"), f"{where}: split.test")
    origin = "split.train / split.test"
    if cfg.get("file"):
        path = Path(cfg["file"])
        path = path if path.is_absolute() else Path(root) / path
        train, test = _lists_from_file(path)
        origin = str(path)
    if train is not None or test is not None:
        listed = (train or []) + (test or [])
        unknown = sorted(set(listed) - set(by_id))
        if unknown:
            raise ValueError(
                f"{where}: case ID(s) {unknown} in {origin} do not exist; the data set has {sorted(by_id)}"
            )
        both = sorted(set(train or []) & set(test or []))
        if both:
            raise ValueError(f"{where}: case ID(s) {both} are in both the train and the test split ({origin})")
        if test is None:
            test = [i for i in by_id if i not in set(train)]
        if train is None:
            train = [i for i in by_id if i not in set(test)]
    elif any(c.split == "test" for c in cases):
        train = [c.case_id for c in cases if c.split != "test"]
        test = [c.case_id for c in cases if c.split == "test"]
    else:
        fraction = float(cfg.get("test_fraction", 0.2))
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"{where}: split.test_fraction must be between 0 and 1, got {fraction}")
        ids = sorted(by_id)
        if len(ids) < 2:
            raise ValueError(f"{where}: one labelled case cannot be split into training and held-out images")
        n_test = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        order = np.random.default_rng(int(cfg.get("seed", 0))).permutation(len(ids))
        test = [ids[i] for i in order[:n_test]]
        train = [i for i in ids if i not in set(test)]
    return {"train": [by_id[i] for i in sorted(train)], "test": [by_id[i] for i in sorted(test)]}
