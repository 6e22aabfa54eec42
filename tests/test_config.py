"""Every experiment composes, and the documented knobs exist under their names."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtseg import CONFIG_DIR
from mtseg.checkpoint import ALLOWED_TARGETS
from mtseg.tasks import EXPERIMENTS, LabelSpace, experiment_tasks
from mtseg.training.cubes import CubeTraining
from mtseg.training.mode import training_mode_from_config
from mtseg.training.patches import PatchTraining


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
    assert cfg.training.batch_size == 210
    assert (cfg.model.depth, cfg.model.width, cfg.model.fc_width) == (25, 32, 192)
    assert cfg.trainer.accelerator == "auto"
    assert cfg.seed == 0
    assert cfg.data.brain.preprocessing.threshold == 0.0
    assert cfg.data.brain.preprocessing.spacing == 1.0
    assert cfg.data.cta.preprocessing.spacing == 0.45
    assert cfg.logger.wandb.name == "brain_breast_cta"
    # every knob is overridable from the command line under the documented name
    knobs = [
        "schedule.minibatches_per_task=7", "schedule.eval_every=3", "training.batch_size=42",
        "model.depth=3", "model.width=8", "model.fc_width=16", "seed=5", "trainer.accelerator=cpu",
    ]
    cfg = compose_train(["+experiment=brain"] + knobs)
    for knob in knobs:
        key, value = knob.split("=")
        assert str(OmegaConf.select(cfg, key)) == value


@pytest.mark.parametrize(("preset", "mode"), [("demo", "cubes"), ("cpu_demo", "cubes"), ("cpu_demo_paper", "patch")])
def test_cpu_demo_presets_keep_the_papers_network(preset, mode):
    cfg = compose_train(["+experiment=brain_breast_cta", f"+preset={preset}"])
    assert (cfg.model.depth, cfg.model.width, cfg.model.fc_width) == (25, 32, 192)
    assert cfg.schedule.minibatches_per_task < 25000
    assert instantiate(cfg.training).name == mode


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


def test_the_brain_cpu_preset_trains_experiment_1_on_the_template_cohort_with_contrast_copies():
    cfg = compose_train(["+experiment=brain", "+preset=brain_cpu"])
    assert cfg.data.brain.source == "nnunet" and cfg.data.brain.root.endswith("Dataset990_MtsegBrainTemplates")
    transforms = [t["_target_"] for t in cfg.data.brain.augmentation.transforms]
    assert cfg.data.brain.augmentation.copies > 0
    assert {"torchio.RandomAnisotropy", "torchio.RandomBlur", "torchio.RandomGamma", "torchio.RandomBiasField"} <= set(transforms)
    assert transforms.index("torchio.RescaleIntensity") > transforms.index("torchio.RandomGamma")  # normalised again
    assert (cfg.model.depth, cfg.model.width, cfg.model.fc_width) == (25, 32, 192)
    assert instantiate(cfg.training).name == "cubes" and cfg.evaluation.intermediate_precision == "auto"
    assert compose_train(["+experiment=brain"]).evaluation.intermediate_precision == "fp32"  # the paper's: every evaluation in fp32
    # every transform of the copies is one a checkpoint may name (evaluate refuses others)
    assert set(transforms) <= ALLOWED_TARGETS


def test_training_mode_defaults_to_the_papers_and_cube_knobs_exist():
    assert isinstance(instantiate(compose_train(["+experiment=brain"]).training), PatchTraining)
    cfg = compose_train(["+experiment=brain", "training=cubes", "training.cube=8", "training.cubes_per_task=2"])
    mode = instantiate(cfg.training)
    assert isinstance(mode, CubeTraining) and (mode.cube, mode.cubes_per_task) == (8, 2)
    assert mode.queue["max_length"] > 0 and mode.queue["samples_per_volume"] > 0
    # a mode's config is what checkpoints store, and builds the same mode again
    assert training_mode_from_config(mode.config()).config() == mode.config()


def test_the_old_name_of_a_training_mode_still_works_and_names_the_new_one(caplog):
    old = compose_train(["+experiment=brain", "training=dense", "training.cube=8"])
    with caplog.at_level("WARNING"):
        mode = instantiate(old.training)
    assert isinstance(mode, CubeTraining) and mode.cube == 8
    assert "training=dense is now training=cubes" in caplog.text
    new = instantiate(compose_train(["+experiment=brain", "training=cubes", "training.cube=8"]).training)
    assert mode.config() == new.config()  # so a run started as training=dense resumes as training=cubes


def test_a_stored_training_config_names_no_code_outside_the_training_modes():
    for target in ("os.system", "mtseg.train.train", "mtseg.training.module.MultiTaskSegmentationModule", "builtins.eval"):
        with pytest.raises(ValueError, match="training mode|not a class"):
            training_mode_from_config({"_target_": target})
    # the configs checkpoints stored before modes were objects
    patch = training_mode_from_config({"mode": "patch"}, {"batch_size": 12, "queue": {"max_length": 120, "samples_per_volume": 40, "block": 10}})
    assert isinstance(patch, PatchTraining) and patch.batch_size == 12 and patch.queue["max_length"] == 120
    cubes = training_mode_from_config({"mode": "dense", "cube": 6, "cubes_per_task": 2, "queue": {"max_length": 8, "samples_per_volume": 4, "block": 2}})
    assert isinstance(cubes, CubeTraining) and cubes.cube == 6
    with pytest.raises(ValueError, match="unknown training mode 'sideways'"):
        training_mode_from_config({"mode": "sideways"})


def test_sweep_subdirectories_are_named_by_experiment_and_seed():
    cfg = compose_train(["+experiment=cta", "seed=3"])
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir == "${hydra.job.num}-${experiment}-seed${seed}"
    assert cfg.hydra.sweep.dir.startswith(cfg.output_dir)


def test_the_gpu_trainer_is_the_default_one_in_bf16():
    cfg = compose_train(["+experiment=brain", "trainer=gpu"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.num_sanity_val_steps == 0  # everything else as trainer=default
