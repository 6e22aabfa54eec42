"""The run's loggers (``conf/logger``): built from their configs, W&B's run continued on resume, closed at the end."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mtseg.evaluation.whole_image import results_table
from mtseg.training.module import MultiTaskSegmentationModule


def wandb_group(cfg: DictConfig) -> str | None:
    """Runs of one Hydra sweep share a W&B group (the sweep folder's name)."""
    if cfg.logger.wandb.get("group"):
        return cfg.logger.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return None


def build_loggers(cfg: DictConfig, module: MultiTaskSegmentationModule, steps: int) -> list[Logger]:
    """Every logger of ``cfg.logger`` (an entry set to null is off: ``logger=none``), its hyper-parameters
    logged. W&B: a sweep's runs share a group, and a resumed run continues its W&B run (same id)."""
    loggers = []
    for name, config in cfg.logger.items():
        if config is None:
            continue
        extra = {}
        if name == "wandb":
            extra = {"group": wandb_group(cfg)} | ({"id": module.wandb_run_id, "resume": "allow"} if module.wandb_run_id else {})
        logger = instantiate(config, **extra)
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:  # the other processes of DDP have no W&B run
            module.wandb_run_id = logger.experiment.id
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "n_params": module.n_params,
             "n_tasks": len(module.label_space.tasks), "max_steps": steps}
        )
        loggers.append(logger)
    return loggers


def logger_callbacks(loggers: list[Logger]) -> list:
    """Callbacks that need a logger: the learning rate of every step (``train/lr``, named by the module's scheduler)."""
    return [LearningRateMonitor(logging_interval="step")] if loggers else []


def log_results(loggers: list[Logger], module: MultiTaskSegmentationModule, summary: dict, experiment: str) -> None:
    """The final results table (and parameter count) of the run, to each W&B logger."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({"n_params": module.n_params})
            rows = results_table({experiment: summary["evaluation"]})
            logger.log_table(key="results", columns=list(rows[0]), data=[list(r.values()) for r in rows])


def close_loggers(loggers: list[Logger]) -> None:
    """Close each W&B run, so the next job of a Hydra multirun starts its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
