"""mtseg: one triplanar CNN for multi-task segmentation in multiple modalities (Moeskops et al., 2016).

``from mtseg import Segmenter``: the Python API for segmenting scans (:mod:`mtseg.inference.segmenter`).
"""

from pathlib import Path

#: The Hydra configs (``conf/`` at the top of the repository).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def __getattr__(name: str):
    # imported on first use, so `import mtseg` (and every entry point) stays light
    if name == "Segmenter":
        from mtseg.inference.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'mtseg' has no attribute {name!r}")


__all__ = ["CONFIG_DIR", "Segmenter"]
