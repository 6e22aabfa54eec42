"""Loading an mtseg checkpoint: the network plus what its output channels mean and how to prepare images."""

from __future__ import annotations

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
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors all mean the same to a user
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
