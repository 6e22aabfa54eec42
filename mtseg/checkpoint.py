"""Loading an mtseg checkpoint: the network plus what its output channels mean and how to prepare images."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtseg.training.module import CHECKPOINT_KEY, MultiTaskSegmentationModule
from mtseg.nifti import existing_file
from mtseg.tasks import LabelSpace

#: The only ``_target_`` values a configuration read from a checkpoint may name: mtseg's data
#: module and the TorchIO transforms mtseg's configs write (intensity preprocessing and training
#: augmentation). Anything else (``builtins.open``, ``os.system``, ...) is refused before Hydra
#: instantiates it, so a checkpoint's configuration cannot create, truncate or run anything.
ALLOWED_TARGETS = frozenset(
    {
        "mtseg.data.datamodule.MultiTaskDataModule",
        "torchio.Clamp",
        "torchio.RescaleIntensity",
        "torchio.ZNormalization",
        "torchio.RandomAffine",
        "torchio.RandomElasticDeformation",
        "torchio.RandomBiasField",
        "torchio.RandomGamma",
        "torchio.RandomNoise",
        "torchio.RandomFlip",
        "torchio.RandomAnisotropy",
        "torchio.RandomBlur",
    }
)


def check_targets(config: Any, where: str) -> None:
    """Refuse a configuration (read from ``where``) that names a ``_target_`` outside :data:`ALLOWED_TARGETS`,
    at any depth, or that holds an interpolation (``${...}``, escaped or not) anywhere: Hydra resolves
    those when it instantiates, and a resolver such as ``oc.create`` can build a node with any
    ``_target_`` after this check. Training stores its configs resolved, so no checkpoint of
    mtseg's holds one.

    Raises:
        ValueError: naming the key path and the target or interpolation.
    """
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        key, node = stack.pop()
        for text in (node, *(node.keys() if isinstance(node, dict) else ())):
            if isinstance(text, str) and "${" in text:
                raise ValueError(
                    f"{where} refused: its configuration at {key or 'the top'} holds the interpolation {text[:80]!r}, "
                    "which Hydra would resolve (mtseg stores its configs resolved)"
                )
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and (not isinstance(target, str) or target not in ALLOWED_TARGETS):
                raise ValueError(
                    f"{where} refused: its configuration at {key or 'the top'} names _target_ {target!r}, "
                    f"which mtseg never writes; only {', '.join(sorted(ALLOWED_TARGETS))} may be instantiated"
                )
            stack += [(f"{key}.{k}" if key else str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            stack += [(f"{key}[{i}]", v) for i, v in enumerate(node)]


def instantiate_checked(config: Any, where: str, **kwargs):
    """Hydra's ``instantiate`` of a configuration read from ``where``, once :func:`check_targets` passed it."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, ListConfig, OmegaConf

    plain = OmegaConf.to_container(config) if isinstance(config, (DictConfig, ListConfig)) else config
    check_targets(plain, where)
    return instantiate(config, **kwargs)


def with_stored_configs(meta: Any, hparams: dict) -> Any:
    """The ``mtseg`` entry with each task's preprocessing and the data config, which a checkpoint
    stores once, among the module's hyper-parameters (``preprocessing``, and ``data`` without the
    tasks' preprocessing). Checkpoints of earlier versions carry both in the entry itself."""
    if not isinstance(meta, dict):
        return meta
    meta = dict(meta)
    preprocessing = hparams.get("preprocessing")
    if "preprocessing" not in meta and isinstance(preprocessing, dict):
        meta["preprocessing"] = preprocessing
    data = hparams.get("data")
    if "data" not in meta and isinstance(data, dict):
        meta["data"] = {
            key: {**value, "preprocessing": preprocessing[key]} if isinstance(value, dict) and key in (preprocessing or {}) else value
            for key, value in data.items()
        }
    return meta


def _check_meta(meta: Any, path: Path) -> None:
    """The ``mtseg`` entry holds what predict and evaluate read, of the right kinds."""

    def fail(problem: str):
        raise ValueError(f"{path}: its '{CHECKPOINT_KEY}' entry {problem} (not written by this mtseg's train, or damaged)")

    if not isinstance(meta, dict):
        fail(f"is a {type(meta).__name__}, not a mapping")
    missing = [k for k in ("tasks", "class_names", "preprocessing", "pad_value") if k not in meta]
    if missing:
        fail(f"lacks {', '.join(missing)}")
    tasks, preprocessing = meta["tasks"], meta["preprocessing"]
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) for t in tasks):
        fail(f"names tasks {tasks!r}")
    if not isinstance(preprocessing, dict) or any(not isinstance(preprocessing.get(t), dict) for t in tasks):
        fail("lacks the preprocessing of a task")
    for task in tasks:
        config = preprocessing[task]
        if "spacing" not in config or "threshold" not in config or not isinstance(config.get("intensity", []), list):
            fail(f"has a malformed preprocessing for task {task!r}")
        check_targets(config, f"{path} (preprocessing of {task})")
    if not isinstance(meta["pad_value"], (int, float)):
        fail(f"has pad_value {meta['pad_value']!r}")
    if meta.get("data") is not None:
        check_targets(meta["data"], f"{path} (stored data config)")
    ranges = meta.get("negative_fraction_range")  # absent from older checkpoints
    if ranges is not None:
        if not isinstance(ranges, dict):
            fail(f"has negative_fraction_range {ranges!r}, not a mapping of tasks")
        for task, span in ranges.items():
            if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, (int, float)) for v in span)
                    and 0 <= span[0] <= span[1] <= 1):
                fail(f"has negative_fraction_range {span!r} for task {task!r}, not [smallest, largest] fractions")


@dataclass
class LoadedCheckpoint:
    """A trained network and its metadata.

    Attributes:
        path: The checkpoint file.
        module: The Lightning module, in eval mode, on the CPU.
        label_space: The output channels.
        meta: The checkpoint's ``mtseg`` entry (preprocessing, pad value, data config, thresholds).
        global_step: Optimiser steps the network was trained for.
    """

    path: Path
    module: MultiTaskSegmentationModule
    label_space: LabelSpace
    meta: dict[str, Any]
    global_step: int

    @property
    def net(self):
        return self.module.net

    @property
    def thresholds(self) -> dict[str, float]:
        """PR operating point per ``pr_threshold`` task stored with the checkpoint (may be empty)."""
        return dict(self.meta.get("thresholds") or {})


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load an mtseg checkpoint written by ``mtseg.train``.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: The file is not a PyTorch checkpoint, or not one written by mtseg.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"a checkpoint is given as a path (str or pathlib.Path), not {type(path).__name__}")
    path = existing_file(path, "checkpoint")
    try:
        # weights_only: tensors and plain containers only, so loading a file can never run code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if "unsupported global" in line.lower()]
        if not lines:  # no pickled object at all: a damaged or foreign file
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (UnpicklingError)") from None
        first_line = lines[0]
        raise ValueError(
            f"{path} refused: it holds Python objects other than tensors and plain containers, and loading "
            f"them could run code (mtseg checkpoints hold none); {first_line}"
        ) from None
    except Exception as error:  # zip and torch errors all mean the same to a user
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} is not an mtseg checkpoint: it has no '{CHECKPOINT_KEY}' entry "
            "(use a checkpoints/*.ckpt file written by python -m mtseg.train)"
        )
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise ValueError(f"{path}: it stores no hyper_parameters to rebuild the network from")
    meta = with_stored_configs(checkpoint[CHECKPOINT_KEY], hparams)
    _check_meta(meta, path)
    try:
        label_space = LabelSpace.from_dict(meta)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: its tasks or classes are not this mtseg's ({error})") from None
    try:
        module = MultiTaskSegmentationModule(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0][:300]
        raise ValueError(f"{path}: its weights do not fit the network its configuration describes ({type(error).__name__}: {first})") from None
    if list(module.label_space.tasks) != list(label_space.tasks):
        raise ValueError(f"{path}: hyper_parameters name tasks {list(module.label_space.tasks)}, its '{CHECKPOINT_KEY}' entry {list(label_space.tasks)}")
    module.eval()
    return LoadedCheckpoint(path, module, label_space, meta, int(checkpoint.get("global_step", 0)))


def thresholds_path(checkpoint: Path) -> Path:
    """Where evaluation stores the PR thresholds of ``checkpoint``: beside it."""
    return checkpoint.with_name(checkpoint.stem + ".thresholds.json")


def threshold_for(loaded: LoadedCheckpoint, task: str) -> tuple[float | None, str]:
    """The PR operating point of ``task``: from evaluation beside the checkpoint, else from training."""
    beside = thresholds_path(loaded.path)
    if beside.is_file():
        stored = json.loads(beside.read_text()).get("thresholds", {})
        if task in stored:
            return float(stored[task]), f"evaluation ({beside.name})"
    if task in loaded.thresholds:
        return float(loaded.thresholds[task]), "checkpoint (held-out images at training time)"
    return None, "none stored: argmax used"


#: The devices ``device=`` / ``--device`` name: ``cuda:N`` picks one GPU.
DEVICES = ("auto", "cpu", "cuda")


def select_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: another name, or ``cuda`` without a GPU.
    """
    if not isinstance(name, str) or name.split(":")[0] not in DEVICES or (":" in name and not name.startswith("cuda:")):
        raise ValueError(f"device={name!r}: expected one of {', '.join(DEVICES)} (or cuda:N)")
    if name.startswith("cuda:") and not (name[5:].isdigit() and torch.cuda.is_available() and int(name[5:]) < torch.cuda.device_count()):
        raise ValueError(f"device={name}: no such GPU ({torch.cuda.device_count()} visible)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is available; use device=cpu or auto")
    return torch.device(name)


def test_datamodule(loaded: LoadedCheckpoint, overrides=None):
    """The checkpoint's data module (its stored data config with ``overrides``), test images prepared.

    Every ``_target_`` of the merged configuration is checked against :data:`ALLOWED_TARGETS` first.
    """
    from omegaconf import OmegaConf

    stored = loaded.meta.get("data")
    if not isinstance(stored, dict):
        raise ValueError(f"{loaded.path} stores no data config (written by an older mtseg); cannot find its test sets")
    # the user's overrides are resolved here, so the merged config holds no interpolation
    resolved = OmegaConf.to_container(overrides, resolve=True) if OmegaConf.is_config(overrides) else (overrides or {})
    data_cfg = OmegaConf.merge(OmegaConf.create(stored), resolved)
    datamodule = instantiate_checked(
        data_cfg, f"{loaded.path} (stored data config)", tasks=list(loaded.label_space.tasks), depth=loaded.net.depth, seed=0
    )
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule
