"""Train one experiment: ``python -m mtseg.train +experiment=brain_breast_cta``.

Builds the data module, the model, the loggers and the trainer from the Hydra
config in ``conf/``, fits, and writes the run directory: ``.hydra/``,
``metrics.csv``, ``checkpoints/last.ckpt`` and ``summary.json``.

``ckpt_path=<run>/checkpoints/last.ckpt`` resumes a run in a new run directory: the same
schedule from the checkpoint's step on, the evaluations still due, ``metrics.csv``
continued from the old run's rows up to that step, and the sampling and random state of
the checkpoint, so the resumed run ends with the weights the uninterrupted one would have.
SIGTERM (``kill``, ``timeout``, SLURM) stops a run after its current step: ``last.ckpt``
is saved and the process exits with status 143.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from mtseg.evaluation.baseline import intensity_baseline_dice
from mtseg.runtime.console import quiet_libraries
from mtseg.runtime.signals import SIGTERM_EXIT
from mtseg.settings import TRAIN_RULES, check_moved_settings, check_settings, config_values
from mtseg.tasks import experiment_tasks
from mtseg.training.assembly import build_callbacks, build_datamodule, build_module, build_trainer, check_launch, schedule_steps
from mtseg.training.callbacks import RunClock
from mtseg.training.experiment_configs import register_experiment_configs
from mtseg.training.loggers import build_loggers, close_loggers, log_results, logger_callbacks
from mtseg.training.resume import continue_metrics, resumed_checkpoint
from mtseg.training.run_folder import remove_refused_run
from mtseg.training.summary import dice_table, write_summary

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit one experiment as configured; return the summary written to ``summary.json``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_moved_settings(cfg)
    check_settings(config_values(cfg, TRAIN_RULES), TRAIN_RULES)  # types and ranges, before anything is built
    tasks = list(experiment_tasks(cfg.experiment))
    quiet_libraries()
    check_launch(cfg)
    training = instantiate(cfg.training)  # the training mode (conf/training)
    resume = resumed_checkpoint(cfg, training)
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, tasks, training)
    datamodule = build_datamodule(cfg, tasks, training, module)
    baseline = intensity_baseline_dice(datamodule)
    steps, val_every = schedule_steps(cfg, module)
    if resume is not None:
        module.wandb_run_id = resume.meta.get("wandb_run_id")
        if rank_zero_only.rank == 0:  # under DDP, one process writes the run directory
            continue_metrics(resume.path, resume.global_step, run_dir / "metrics.csv")
        log.info("Resuming %s at step %d of %d", resume.path, resume.global_step, steps)
    loggers = build_loggers(cfg, module, steps)
    trainer = build_trainer(cfg, steps, val_every, loggers, build_callbacks(cfg, logger_callbacks(loggers)), run_dir)
    clock = RunClock.of(trainer)
    if threading.current_thread() is threading.main_thread():
        # SLURM through submitit warns of the time limit with SIGUSR2: handled as SIGTERM (save, exit 143)
        signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    checkpoints = run_dir / "checkpoints"
    try:
        start = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else resume.path, weights_only=True)
            if trainer.global_step % val_every:  # the schedule did not end on an evaluation
                trainer.validate(module, datamodule=datamodule, verbose=False)
                trainer.save_checkpoint(checkpoints / f"step{trainer.global_step:07d}.ckpt")
                trainer.save_checkpoint(checkpoints / "last.ckpt")
        except SIGTERMException:  # SaveOnSigterm wrote last.ckpt (Lightning's SIGTERMException exits with status 0)
            print(
                f"Stopped by SIGTERM at step {trainer.global_step} of {steps}; saved {checkpoints / 'last.ckpt'}. "
                f"Resume with: python -m mtseg.train +experiment={cfg.experiment} ckpt_path={checkpoints / 'last.ckpt'} "
                "(and the same overrides)",
                file=sys.stderr,
            )
            sys.exit(SIGTERM_EXIT)
        if not trainer.is_global_zero:  # under DDP, process 0 writes the summary and prints the results
            return {}
        summary = write_summary(
            run_dir / "summary.json", module=module, cfg=cfg, steps=trainer.global_step,
            # a resumed run adds its earlier part: training and evaluations, as this part's wall clock does
            train_seconds=time.perf_counter() - start + clock.previous_train_seconds + clock.previous_evaluation_seconds,
            eval_seconds=clock.total_evaluation_seconds(), baseline=baseline,
        )
        log_results(loggers, module, summary, cfg.experiment)
    finally:
        close_loggers(loggers)
    print(dice_table(summary))
    print(
        f"Whole-image evaluations took {summary['evaluation_seconds']:.0f} s of the "
        f"{summary['train_seconds']:.0f} s of training ({100 * summary['evaluation_seconds'] / max(summary['train_seconds'], 1e-9):.0f} %)."
    )
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (ValueError, OSError, InstantiationException) as error:  # bad data, settings or checkpoint: a message, not a traceback
        if isinstance(error, InstantiationException):  # Hydra's wrapper of an error raised while building from the config
            if not isinstance(error.__cause__, (ValueError, OSError)):
                raise
            error = error.__cause__
        # refused before the run wrote anything of its own: its folder goes, else the error stays in its train.log
        if not remove_refused_run(Path(HydraConfig.get().runtime.output_dir), Path(cfg.output_dir)):
            log.error("%s", error)
        print(f"mtseg.train: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    register_experiment_configs()  # +experiment=<name>, derived from mtseg.tasks (not on import)
    main()
