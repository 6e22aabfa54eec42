"""A refused training run leaves nothing behind.

Hydra creates a run's folder (``outputs/runs/<experiment>/<time>/`` with ``.hydra/`` and
``train.log``; in a multirun also ``outputs/sweeps/<time>/multirun.yaml``) before mtseg sees the
settings. When a run is refused before it produced anything of its own (settings, data or a
checkpoint to resume refused: the folder holds only what Hydra wrote), :func:`remove_refused_run`
removes that folder and the parents the run created, up to the output root. A folder with
anything else in it (a checkpoint, metrics, a W&B run, another job of the sweep) is kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: What Hydra writes into a run folder before the run starts.
HYDRA_ENTRIES = frozenset({".hydra", "train.log"})
#: What Hydra writes into a sweep folder before its first job starts.
SWEEP_ENTRIES = frozenset({"multirun.yaml"})


def remove_refused_run(run_dir: Path, output_root: Path) -> bool:
    """Remove ``run_dir`` if it holds only :data:`HYDRA_ENTRIES`, then each parent up to ``output_root``
    (included) that is left empty (or holds only :data:`SWEEP_ENTRIES`). Returns whether ``run_dir`` was removed."""
    run_dir, output_root = Path(run_dir).resolve(), Path(output_root).resolve()
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= HYDRA_ENTRIES:
        return False
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if parent != output_root and output_root not in parent.parents:
            break  # never above the output root
        if not parent.is_dir() or not {p.name for p in parent.iterdir()} <= SWEEP_ENTRIES:
            break
        shutil.rmtree(parent)
        if parent == output_root:
            break
    return True
