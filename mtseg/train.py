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

import csv
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mtseg.evaluation.baseline import intensity_baseline_dice
from mtseg.training.callbacks import METRICS_COLUMNS, DiceCSVWriter, EvaluationTimer, KeepFreedMemory, SaveOnSigterm, WandbSegmentationOverlays
from mtseg.checkpoint import LoadedCheckpoint, load_checkpoint
from mtseg.runtime.console import LineProgress, quiet_libraries
from mtseg.training.experiment_configs import register_experiment_configs
from mtseg.evaluation.whole_image import results_table
from mtseg.training.module import MultiTaskSegmentationModule, cpu_has_native_bf16
from mtseg.nifti import atomic_write_bytes
from mtseg.training.run_folder import remove_refused_run
from mtseg.settings import TRAIN_RULES, check_settings, config_values
from mtseg.runtime.signals import SIGTERM_EXIT
from mtseg.training.summary import dice_table, write_summary
from mtseg.tasks import experiment_tasks

log = logging.getLogger(__name__)



def wandb_group(cfg: DictConfig) -> str | None:
    """Runs of one Hydra sweep share a W&B group (the sweep folder's name)."""
    if cfg.logger.wandb.get("group"):
        return cfg.logger.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return None


#: Settings a resumed run must share with its checkpoint: (this run's config key, stored hyper-parameter).
RESUME_SETTINGS = (("model", "model"), ("training", "training"), ("schedule", "schedule"), ("seed", "seed"),
                   ("optimizer.lr", "lr"), ("optimizer.betas", "betas"),
                   ("optimizer.lr_decay", "lr_decay"), ("optimizer.warmup", "warmup"), ("data", "data"), ("preprocessing", "preprocessing"))


def resumed_checkpoint(cfg: DictConfig) -> LoadedCheckpoint | None:
    """``ckpt_path``, loaded and checked: a safe mtseg checkpoint of this experiment with this run's settings."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path)
    loaded = load_checkpoint(path)  # weights only, clear errors for a foreign or damaged file
    stored = loaded.module.hparams
    tasks = list(experiment_tasks(cfg.experiment))
    if list(stored["tasks"]) != tasks:
        raise ValueError(f"ckpt_path={path} belongs to experiment {loaded.label_space.experiment}, not {cfg.experiment}")
    if stored.get("data") is None:
        raise ValueError(f"ckpt_path={path} was written by an older mtseg that does not store its data config; it cannot be resumed")
    derived = {  # as training stores them
        "data": without_roots(data_without_preprocessing(cfg.data, tasks)),
        "preprocessing": {t: OmegaConf.to_container(cfg.data[t].preprocessing, resolve=True) for t in tasks},
    }
    stored = {**stored, "data": without_roots(stored["data"])}
    for key, name in RESUME_SETTINGS:
        current = derived[key] if key in derived else OmegaConf.select(cfg, key)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if stored.get(name) is None:
            raise ValueError(f"ckpt_path={path} was written by an older mtseg that does not store its {key}; it cannot be resumed")
        if _plain(stored[name]) != _plain(current):
            raise ValueError(
                f"ckpt_path={path} was trained with {key}={_plain(stored[name])}, this run has {key}={_plain(current)}; "
                "a resumed run keeps its settings (start a new run to change them)"
            )
    return loaded


def without_roots(data: dict) -> dict:
    """The data config without where the data lies (``root``, at the top and per task): a resumed
    run may read the same data from another place (a node's scratch disk, say)."""
    return {k: without_roots(v) if isinstance(v, dict) else v for k, v in data.items() if k != "root"}


def _plain(value):
    """Configs compared as plain JSON-like values (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def data_without_preprocessing(data: DictConfig, tasks) -> dict:
    """The data config as checkpoints store it: the experiment's tasks without their ``preprocessing``
    (the module's ``preprocessing`` holds it; :func:`mtseg.checkpoint.load_checkpoint` puts it back)."""
    plain = OmegaConf.to_container(data, resolve=True)
    for task in tasks:
        plain[task].pop("preprocessing", None)
    return plain


def continue_metrics(checkpoint: Path, step: int, target: Path) -> None:
    """Start ``target`` with the rows of the checkpoint's run (``<run>/metrics.csv``) up to ``step``."""
    source = checkpoint.parent.parent / "metrics.csv"
    if not source.is_file():
        return
    with source.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_bytes(target, write)


def train(cfg: DictConfig) -> dict:
    """Fit one experiment as configured; return the summary written to ``summary.json``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_settings(config_values(cfg, TRAIN_RULES), TRAIN_RULES)  # types and ranges, before anything is built
    tasks = experiment_tasks(cfg.experiment)
    n_tasks = len(tasks)
    quiet_libraries()
    if str(cfg.trainer.get("strategy", "")).startswith("ddp") and HydraConfig.get().mode == RunMode.MULTIRUN \
            and "submitit" not in str(HydraConfig.get().launcher.get("_target_", "")):
        raise ValueError(
            "trainer=ddp in a local multirun (-m): Lightning starts the other processes by re-running the command, "
            "so each would run the whole sweep; run each experiment on its own, or sweep with hydra/launcher=slurm"
        )
    resume = resumed_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    elif str(cfg.trainer.get("precision", "")).startswith("bf16") and not cpu_has_native_bf16():
        log.warning(
            "trainer.precision=%s on a CPU without native bf16 (AMX or AVX512-BF16): steps will be slower "
            "than in fp32; set trainer.precision=32-true", cfg.trainer.precision,
        )

    module = MultiTaskSegmentationModule(
        list(tasks),
        model=OmegaConf.to_container(cfg.model),
        preprocessing={t: OmegaConf.to_container(cfg.data[t].preprocessing, resolve=True) for t in tasks},
        pad_value=cfg.data.pad_value,
        evaluation=OmegaConf.to_container(cfg.evaluation),
        data=data_without_preprocessing(cfg.data, tasks),  # each task's preprocessing is stored once, above
        training=OmegaConf.to_container(cfg.training),
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
    datamodule = instantiate(
        cfg.data, tasks=list(tasks), radius=cfg.model.depth, seed=cfg.seed, training=OmegaConf.to_container(cfg.training)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")  # bad data fails here, before any training step
    module.foreground_fraction = datamodule.foreground_fraction()  # stored with checkpoints, for predict
    module.negative_fraction_range = datamodule.negative_fraction_range()
    baseline = intensity_baseline_dice(datamodule)

    per_minibatch = module.steps_per_task_minibatch  # T steps (patch mode) or 1 (dense mode) per mini-batch per task
    steps = cfg.schedule.minibatches_per_task * per_minibatch
    val_every = min(cfg.schedule.eval_every, cfg.schedule.minibatches_per_task) * per_minibatch
    logger = None
    if resume is not None:
        module.wandb_run_id = resume.meta.get("wandb_run_id")
        if rank_zero_only.rank == 0:  # under DDP, one process writes the run directory
            continue_metrics(resume.path, resume.global_step, run_dir / "metrics.csv")
        log.info("Resuming %s at step %d of %d", resume.path, resume.global_step, steps)
    if cfg.logger.get("wandb") is not None:  # logger=none: no W&B
        # a resumed run continues its W&B run (same id)
        same_run = {"id": module.wandb_run_id, "resume": "allow"} if module.wandb_run_id else {}
        logger = instantiate(cfg.logger.wandb, group=wandb_group(cfg), save_dir=str(run_dir), **same_run)
        if rank_zero_only.rank == 0:  # the other processes of DDP have no W&B run
            module.wandb_run_id = logger.experiment.id
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "n_params": module.n_params, "n_tasks": n_tasks, "max_steps": steps}
        )
    checkpoints = run_dir / "checkpoints"
    timer = EvaluationTimer()
    curve = DiceCSVWriter(run_dir / "metrics.csv")
    callbacks = [
        timer,
        WandbSegmentationOverlays(),
        ModelCheckpoint(dirpath=checkpoints, filename="step{step:07d}", auto_insert_metric_name=False, save_top_k=-1, save_last=True),
        curve,
        SaveOnSigterm(checkpoints / "last.ckpt"),
        KeepFreedMemory(),  # a third of a CPU step was page faults of freed activations
    ]
    if logger is not None:  # the learning rate of every step (`train/lr`, named by the module's scheduler)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    piped = not sys.stdout.isatty()  # Lightning's progress bar shows nothing in a pipe or a log file
    if piped:
        callbacks.append(LineProgress(cfg.progress_every_seconds))
    trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        val_check_interval=val_every,
        max_epochs=1,  # the training loader yields exactly max_steps mini-batches
        check_val_every_n_epoch=None,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        **({"enable_progress_bar": False} if piped else {}),
    )
    if threading.current_thread() is threading.main_thread():
        # SLURM through submitit warns of the time limit with SIGUSR2: handled as SIGTERM (save, exit 143)
        signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
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
        # a resumed run adds its earlier part: training and evaluations, as this part's wall clock does
        seconds = time.perf_counter() - start + curve.previous_seconds + timer.previous_seconds
        if not trainer.is_global_zero:  # under DDP, process 0 writes the summary and prints the results
            return {}
        summary = write_summary(
            run_dir / "summary.json",
            module=module,
            cfg=cfg,
            steps=trainer.global_step,
            train_seconds=seconds,
            eval_seconds=timer.seconds + timer.previous_seconds,
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
