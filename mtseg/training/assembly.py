"""A training run's objects built from its config: checks of the launch, the module, the data, the
callbacks and the trainer (``mtseg.train`` calls these in order)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning import Trainer
from omegaconf import DictConfig, OmegaConf

from mtseg.data.datamodule import MultiTaskDataModule
from mtseg.runtime.bf16 import cpu_has_native_bf16
from mtseg.runtime.console import is_terminal
from mtseg.training.callbacks import RunClock
from mtseg.training.mode import TrainingMode
from mtseg.training.module import MultiTaskSegmentationModule
from mtseg.training.resume import data_without_preprocessing

log = logging.getLogger(__name__)


def check_launch(cfg: DictConfig) -> None:
    """Refuse DDP in a local multirun, and set the matmul precision (GPU) or warn of slow bf16 (a CPU without it)."""
    if str(cfg.trainer.get("strategy", "")).startswith("ddp") and HydraConfig.get().mode == RunMode.MULTIRUN \
            and "submitit" not in str(HydraConfig.get().launcher.get("_target_", "")):
        raise ValueError(
            "trainer=ddp in a local multirun (-m): Lightning starts the other processes by re-running the command, "
            "so each would run the whole sweep; run each experiment on its own, or sweep with hydra/launcher=slurm"
        )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    elif str(cfg.trainer.get("precision", "")).startswith("bf16") and not cpu_has_native_bf16():
        log.warning(
            "trainer.precision=%s on a CPU without native bf16 (AMX or AVX512-BF16): steps will be slower "
            "than in fp32; set trainer.precision=32-true", cfg.trainer.precision,
        )


def build_module(cfg: DictConfig, tasks: list[str], training: TrainingMode) -> MultiTaskSegmentationModule:
    """The Lightning module of the experiment's ``tasks``, trained in mode ``training``."""
    module = MultiTaskSegmentationModule(
        tasks,
        model=OmegaConf.to_container(cfg.model),
        preprocessing={t: OmegaConf.to_container(cfg.data[t].preprocessing, resolve=True) for t in tasks},
        pad_value=cfg.data.pad_value,
        evaluation=OmegaConf.to_container(cfg.evaluation),
        data=data_without_preprocessing(cfg.data, tasks),  # each task's preprocessing is stored once, above
        training=training,
        schedule=OmegaConf.to_container(cfg.schedule),
        seed=cfg.seed,
        **OmegaConf.to_container(cfg.optimizer),
    )
    if cfg.compile:
        module.net.features.compile()  # in place: the state dict keeps its keys
    log.info(
        "Experiment %s: TriplanarCNN with %d parameters, %d outputs %s",
        cfg.experiment, module.n_params, module.label_space.n_classes, list(module.label_space.class_names),
    )
    return module


def build_datamodule(cfg: DictConfig, tasks: list[str], training: TrainingMode, module: MultiTaskSegmentationModule) -> MultiTaskDataModule:
    """The data module, its data prepared and checked (bad data fails here, before any step); the training
    images' statistics that predict needs are stored with ``module``'s checkpoints."""
    datamodule = instantiate(cfg.data, tasks=tasks, depth=cfg.model.depth, seed=cfg.seed, training=training)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.foreground_fraction = datamodule.foreground_fraction()
    module.negative_fraction_range = datamodule.negative_fraction_range()
    return datamodule


def schedule_steps(cfg: DictConfig, module: MultiTaskSegmentationModule) -> tuple[int, int]:
    """The run's optimiser steps and the steps between evaluations (``conf/schedule``, in the training
    mode's steps per mini-batch per task)."""
    per_minibatch = module.steps_per_task_minibatch
    every = min(cfg.schedule.eval_every, cfg.schedule.minibatches_per_task)
    return cfg.schedule.minibatches_per_task * per_minibatch, every * per_minibatch


def build_callbacks(cfg: DictConfig, extra: list) -> list:
    """The run's clock first (the others read it), then ``conf/callbacks`` (an entry set to null is off), then ``extra``."""
    return [RunClock(), *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None), *extra]


def build_trainer(cfg: DictConfig, steps: int, val_every: int, loggers: list, callbacks: list, run_dir: Path) -> Trainer:
    """Lightning's trainer (``conf/trainer``) for ``steps`` steps, evaluating every ``val_every``."""
    return instantiate(
        cfg.trainer,
        max_steps=steps,
        val_check_interval=val_every,
        max_epochs=1,  # the training loader yields exactly max_steps mini-batches
        check_val_every_n_epoch=None,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        # Lightning's progress bar shows nothing in a pipe or a log file: LineProgress prints lines there
        **({} if is_terminal() else {"enable_progress_bar": False}),
    )
