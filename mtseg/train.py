"""Train one experiment: ``python -m mtseg.train +experiment=brain_breast_cta``.

Builds the data module, the model, the loggers and the trainer from the Hydra
config in ``conf/``, fits, and writes the run directory: ``.hydra/``,
``metrics.csv``, ``checkpoints/last.ckpt`` and ``summary.json``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mtseg.baseline import intensity_baseline_dice
from mtseg.callbacks import DiceCSVWriter, EvaluationTimer, WandbSegmentationOverlays
from mtseg.evaluation import results_table
from mtseg.module import MultiTaskSegmentationModule
from mtseg.summary import dice_table, write_summary
from mtseg.tasks import experiment_tasks

log = logging.getLogger(__name__)

# The TorchIO queue serves samples from the main process on purpose (it is >10x faster than a step).
warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def wandb_group(cfg: DictConfig) -> str | None:
    """Runs of one Hydra sweep share a W&B group (the sweep folder's name)."""
    if cfg.logger.wandb.get("group"):
        return cfg.logger.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return None


def train(cfg: DictConfig) -> dict:
    """Fit one experiment as configured; return the summary written to ``summary.json``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    tasks = experiment_tasks(cfg.experiment)
    n_tasks = len(tasks)
    for knob in ("minibatches_per_task", "eval_every"):
        if cfg.schedule[knob] < 1:
            raise ValueError(f"schedule.{knob} must be at least 1, got {cfg.schedule[knob]}")
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    module = MultiTaskSegmentationModule(
        list(tasks),
        model=OmegaConf.to_container(cfg.model),
        preprocessing={t: OmegaConf.to_container(cfg.data[t].preprocessing, resolve=True) for t in tasks},
        pad_value=cfg.data.pad_value,
        evaluation=OmegaConf.to_container(cfg.evaluation),
        data=OmegaConf.to_container(cfg.data, resolve=True),
        training=OmegaConf.to_container(cfg.training),
        **OmegaConf.to_container(cfg.optimizer),
    )
    log.info(
        "Experiment %s: TriplanarCNN with %d parameters, %d outputs %s",
        cfg.experiment, module.n_params, module.label_space.n_classes, list(module.label_space.class_names),
    )
    datamodule = instantiate(
        cfg.data, tasks=list(tasks), radius=cfg.model.depth, seed=cfg.seed, training=OmegaConf.to_container(cfg.training)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")  # bad data fails here, before any training step
    module.foreground_fraction = datamodule.foreground_fraction()  # stored with checkpoints, for predict
    baseline = intensity_baseline_dice(datamodule)

    per_minibatch = module.steps_per_task_minibatch  # T steps (patch mode) or 1 (dense mode) per mini-batch per task
    steps = cfg.schedule.minibatches_per_task * per_minibatch
    val_every = min(cfg.schedule.eval_every, cfg.schedule.minibatches_per_task) * per_minibatch
    logger = None
    if cfg.logger.get("wandb") is not None:  # logger=none: no W&B
        logger = instantiate(cfg.logger.wandb, group=wandb_group(cfg), save_dir=str(run_dir))
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "n_params": module.n_params, "n_tasks": n_tasks, "max_steps": steps}
        )
    checkpoints = run_dir / "checkpoints"
    timer = EvaluationTimer()
    callbacks = [
        timer,
        WandbSegmentationOverlays(),
        ModelCheckpoint(dirpath=checkpoints, filename="step{step:07d}", auto_insert_metric_name=False, save_top_k=-1, save_last=True),
        DiceCSVWriter(run_dir / "metrics.csv"),
    ]
    trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        val_check_interval=val_every,
        max_epochs=1,  # the training loader yields exactly max_steps mini-batches
        check_val_every_n_epoch=None,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        if trainer.global_step % val_every:  # the schedule did not end on an evaluation
            trainer.validate(module, datamodule=datamodule, verbose=False)
            trainer.save_checkpoint(checkpoints / f"step{trainer.global_step:07d}.ckpt")
            trainer.save_checkpoint(checkpoints / "last.ckpt")
        seconds = time.perf_counter() - start
        summary = write_summary(
            run_dir / "summary.json",
            module=module,
            cfg=cfg,
            steps=trainer.global_step,
            train_seconds=seconds,
            eval_seconds=timer.seconds,
            baseline=baseline,
        )
        if logger is not None:
            logger.experiment.summary.update({"n_params": module.n_params})
            rows = results_table({cfg.experiment: summary["evaluation"]})
            logger.log_table(key="results", columns=list(rows[0]), data=[list(r.values()) for r in rows])
    finally:
        if logger is not None:  # close the W&B run, so the next job of a Hydra multirun starts its own
            logger.experiment.finish()
    print(dice_table(summary))
    print(
        f"Whole-image evaluations took {summary['evaluation_seconds']:.0f} s of the "
        f"{summary['train_seconds']:.0f} s of training ({100 * summary['evaluation_seconds'] / max(summary['train_seconds'], 1e-9):.0f} %)."
    )
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
