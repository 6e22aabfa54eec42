"""mtseg: one triplanar CNN for multi-task segmentation in multiple modalities (Moeskops et al., 2016)."""

from pathlib import Path

#: The Hydra configs (``conf/`` at the top of the repository).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
