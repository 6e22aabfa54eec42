"""The experiments as Hydra configs, derived from the task registry (:data:`mtseg.tasks.EXPERIMENTS`).

``+experiment=<name>`` selects one of the paper's experiments (every non-empty subset of the
tasks, Fig. 1); each sets ``experiment: <name>`` at the top of the config. They are
registered in Hydra's ConfigStore instead of written as seven YAML files, so a new task
brings its experiments without a file: :func:`register_experiment_configs` runs before an
entry point composes its config.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from mtseg.tasks import EXPERIMENTS


def register_experiment_configs() -> None:
    """Register ``experiment/<name>`` for every experiment (idempotent)."""
    store = ConfigStore.instance()
    for name in EXPERIMENTS:
        store.store(group="experiment", name=name, node={"experiment": name}, package="_global_")
