"""Loading an mtseg checkpoint: the network plus what its output channels mean and how to prepare images."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtseg.module import CHECKPOINT_KEY, MultiTaskSegmentationModule
from mtseg.tasks import LabelSpace


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
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a PyTorch checkpoint, or not one written by mtseg.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
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
    meta = checkpoint[CHECKPOINT_KEY]
    label_space = LabelSpace.from_dict(meta)
    module = MultiTaskSegmentationModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
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


def select_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no GPU is available; use device=cpu or auto")
    return torch.device(name)


def test_datamodule(loaded: LoadedCheckpoint, overrides=None):
    """The checkpoint's data module (its stored data config with ``overrides``), test images prepared."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    stored = loaded.meta.get("data")
    if stored is None:
        raise ValueError(f"{loaded.path} stores no data config (written by an older mtseg); cannot find its test sets")
    data_cfg = OmegaConf.merge(OmegaConf.create(stored), overrides or {})
    datamodule = instantiate(data_cfg, tasks=list(loaded.label_space.tasks), radius=loaded.net.depth, seed=0)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule
