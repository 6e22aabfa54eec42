"""Every experiment composes, and the documented knobs exist under their names."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtseg import CONFIG_DIR
from mtseg.tasks import EXPERIMENTS, LabelSpace, experiment_tasks


def compose_train(overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_each_experiment_composes(experiment):
    cfg = compose_train([f"+experiment={experiment}"])
    assert cfg.experiment == experiment
    tasks = experiment_tasks(cfg.experiment)
    assert all(task in cfg.data for task in tasks)
    assert LabelSpace(tasks).n_classes == {"brain": 7, "breast": 2, "cta": 2, "brain_breast": 8, "brain_cta": 8, "breast_cta": 3, "brain_breast_cta": 9}[experiment]


def test_paper_defaults_and_knob_names():
    cfg = compose_train(["+experiment=brain_breast_cta"])
    assert cfg.schedule.minibatches_per_task == 25000
    assert cfg.schedule.eval_every == 1000
    assert cfg.data.batch_size == 210
    assert (cfg.model.depth, cfg.model.width, cfg.model.fc_width) == (25, 32, 192)
    assert cfg.trainer.accelerator == "auto"
    assert cfg.seed == 0
    assert cfg.data.brain.preprocessing.threshold == 0.0
    assert cfg.data.brain.preprocessing.spacing == 1.0
    assert cfg.data.cta.preprocessing.spacing == 0.45
    assert cfg.logger.wandb.name == "brain_breast_cta"
    # every knob is overridable from the command line under the documented name
    knobs = [
        "schedule.minibatches_per_task=7", "schedule.eval_every=3", "data.batch_size=42",
        "model.depth=3", "model.width=8", "model.fc_width=16", "seed=5", "trainer.accelerator=cpu",
    ]
    cfg = compose_train(["+experiment=brain"] + knobs)
    for knob in knobs:
        key, value = knob.split("=")
        assert str(OmegaConf.select(cfg, key)) == value


@pytest.mark.parametrize(("preset", "mode"), [("demo", "dense"), ("cpu_demo", "dense"), ("cpu_demo_paper", "patch")])
def test_cpu_demo_presets_keep_the_papers_network(preset, mode):
    cfg = compose_train(["+experiment=brain_breast_cta", f"+preset={preset}"])
    assert (cfg.model.depth, cfg.model.width, cfg.model.fc_width) == (25, 32, 192)
    assert cfg.schedule.minibatches_per_task < 25000
    assert cfg.training.mode == mode


def test_the_demo_preset_is_cpu_demo_with_a_lower_learning_rate_and_reslice_augmentation_of_the_mr():
    demo = OmegaConf.to_container(compose_train(["+experiment=brain_breast_cta", "+preset=demo"]).data, resolve=True)
    cpu = OmegaConf.to_container(compose_train(["+experiment=brain_breast_cta", "+preset=cpu_demo"]).data, resolve=True)
    for task in ("brain", "breast", "cta"):
        assert cpu[task].pop("augmentation")["copies"] == 0
    # oblique, thick-slice copies of the MR images; the CTA's are left out (recognition's intensity
    # agreement tells a CT from an MR however oblique, and the copies cost the CTA Dice)
    assert [demo[task].pop("augmentation")["copies"] for task in ("brain", "breast", "cta")] == [2, 2, 0]
    assert demo == cpu  # the same phantoms, queues and schedule otherwise
    optimizer = [compose_train(["+experiment=brain_breast_cta", f"+preset={p}"]).optimizer for p in ("demo", "cpu_demo")]
    assert optimizer[0].lr < optimizer[1].lr and optimizer[0].lr_decay == optimizer[1].lr_decay == "cosine"
    # a data source's own augmentation (the brain templates') is kept by cpu_demo
    templates = compose_train(["+experiment=brain", "data/brain=templates", "+preset=cpu_demo"])
    assert templates.data.brain.augmentation.copies == 4


def test_training_mode_defaults_to_the_papers_and_dense_knobs_exist():
    assert compose_train(["+experiment=brain"]).training.mode == "patch"
    cfg = compose_train(["+experiment=brain", "training=dense", "training.cube=8", "training.cubes_per_task=2"])
    assert (cfg.training.mode, cfg.training.cube, cfg.training.cubes_per_task) == ("dense", 8, 2)
    assert cfg.training.queue.max_length > 0 and cfg.training.queue.samples_per_volume > 0


def test_sweep_subdirectories_are_named_by_experiment_and_seed():
    cfg = compose_train(["+experiment=cta", "seed=3"])
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir == "${hydra.job.num}-${experiment}-seed${seed}"
    assert cfg.hydra.sweep.dir.startswith(cfg.output_dir)


def test_the_gpu_trainer_is_the_default_one_in_bf16():
    cfg = compose_train(["+experiment=brain", "trainer=gpu"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.num_sanity_val_steps == 0  # everything else as trainer=default
