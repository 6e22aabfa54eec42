"""Training augmentation: copies made once at setup from the preprocessed image, seeded, labels moved with images."""

import numpy as np
import pytest
import torch
import torchio as tio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import mtseg.data.datamodule as datamodule_module
from mtseg import CONFIG_DIR
from mtseg.data.augmentation import TrainingAugmentation
from mtseg.data.datamodule import MultiTaskDataModule
from mtseg.training.patches import PatchTraining
from mtseg.data.preprocessing import SAMPLING_MASK
from mtseg.data.sampling import CLASS_INDEX
from niftidata import nifti_folder

FLIP_X = {"_target_": "torchio.RandomFlip", "axes": [0], "flip_probability": 1.0}


def data_module(root, transforms, copies, seed=0):
    source = {
        "source": "nifti_folder", "root": str(root), "label_map": None, "split": {"test": ["case2"]},
        "preprocessing": {"spacing": 1.0, "threshold": 0.0, "intensity": []},
        "augmentation": {"copies": copies, "transforms": [instantiate(t) for t in transforms]},
    }
    return MultiTaskDataModule(
        tasks=["breast"], root="unused", depth=2, pad_value=0.0, seed=seed, breast=source,
        training=PatchTraining(4, queue={"max_length": 40, "samples_per_volume": 20, "block": 5}),
    )


def test_copies_are_made_once_from_the_preprocessed_training_images(tmp_path, monkeypatch):
    nifti_folder(tmp_path, n_cases=3)
    calls = []
    build = datamodule_module.build_preprocessing

    def counting_preprocessing(*args):
        pipeline = build(*args)
        return tio.Compose([tio.Lambda(lambda x: calls.append(1) or x, types_to_apply=[tio.LABEL]), pipeline])

    monkeypatch.setattr(datamodule_module, "build_preprocessing", counting_preprocessing)
    dm = data_module(tmp_path, [FLIP_X], copies=2)
    dm.setup("fit")
    train, test = dm.subjects["breast"]["train"], dm.subjects["breast"]["test"]
    assert [s["case_id"] for s in train] == ["case0", "case0_aug1", "case0_aug2", "case1", "case1_aug1", "case1_aug2"]
    assert [s["case_id"] for s in test] == ["case2"]  # held-out images are never augmented
    assert len(calls) == 3  # preprocessing ran once per image, not per copy
    original, flipped = train[0], train[1]
    for key in ("image", "label", SAMPLING_MASK):  # image, label and mask moved together
        assert torch.equal(flipped[key].data, original[key].data.flip(1))
    assert torch.equal(flipped[CLASS_INDEX].counts, original[CLASS_INDEX].counts)
    # every training image, copies included, is sampled
    assert all(s["num_samples"] >= 1 for s in train)


def test_copies_are_seeded(tmp_path):
    nifti_folder(tmp_path, n_cases=3)
    affine = [{"_target_": "torchio.RandomAffine", "degrees": 15, "scales": [0.9, 1.1]}]
    first, again, other = (data_module(tmp_path, affine, 1, seed) for seed in (0, 0, 1))
    for dm in (first, again, other):
        dm.setup("fit")
    image = [dm.subjects["breast"]["train"][1]["image"].data for dm in (first, again, other)]
    assert torch.equal(image[0], image[1])
    assert not torch.equal(image[0], image[2])
    assert not torch.equal(image[0], first.subjects["breast"]["train"][0]["image"].data)


@pytest.mark.filterwarnings("ignore:The maximum displacement is larger:RuntimeWarning")  # a 24 mm toy volume
def test_brain_augmentation_config_runs_on_a_preprocessed_subject():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=brain", "data/brain=templates"])
    augmentation_cfg = instantiate(cfg.data.brain.augmentation, _convert_="all")
    names = [type(t).__name__ for t in augmentation_cfg["transforms"]]
    assert names == ["RandomAffine", "RandomElasticDeformation", "RandomBiasField", "RandomGamma", "RandomNoise"]
    rng = np.random.default_rng(0)
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[6:18, 6:18, 6:18] = rng.integers(0, 7, size=(12, 12, 12))
    image = (label / 7.0 + 0.1 * (label > 0)).astype(np.float32)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None]),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None]),
        sampling_mask=tio.LabelMap(tensor=torch.from_numpy((image > 0).astype(np.uint8))[None]),
        case_id="toy", task="brain",
    )
    augmentation = TrainingAugmentation.from_config(augmentation_cfg, seed=0, task="brain")
    copy = augmentation.augment(subject, 1)
    assert copy["case_id"] == "toy_aug1" and subject["case_id"] == "toy"
    assert torch.equal(subject["image"].data, torch.from_numpy(image)[None])  # the original is untouched
    assert set(torch.unique(copy["label"].data).tolist()) <= set(range(7))
    assert set(torch.unique(copy["sampling_mask"].data).tolist()) <= {0, 1}
    assert not torch.equal(copy["image"].data, subject["image"].data)


def test_bad_augmentation_settings():
    with pytest.raises(ValueError, match="copies=2 but no augmentation transforms"):
        TrainingAugmentation([], 2, 0, "brain")
    with pytest.raises(ValueError, match="copies must be 0 or more"):
        TrainingAugmentation([tio.RandomFlip()], -1, 0, "brain")
    off = TrainingAugmentation.from_config(None, 0, "brain")
    assert off.copies == 0


def test_demo_reslice_augmentation_blurs_only_the_image():
    """The demo's oblique, thick-slice copies: label map and sampling mask move with the rotation
    but are never resampled through the thick slices (they would lose thin structures)."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=brain_breast_cta", "+preset=demo"])
    assert cfg.data.cta.augmentation.copies == 0  # the CTA has none (conf/preset/demo.yaml)
    for task in ("brain", "breast"):
        augmentation_cfg = instantiate(cfg.data[task].augmentation, _convert_="all")
        assert [type(t).__name__ for t in augmentation_cfg["transforms"]] == ["RandomAffine", "RandomAnisotropy"]
        assert augmentation_cfg["copies"] >= 1
    affine, anisotropy = augmentation_cfg["transforms"]
    rng = np.random.default_rng(0)
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[6:18, 6:18, 6:18] = rng.integers(0, 2, size=(12, 12, 12))
    image = (label * 0.8 + 0.1 + 0.05 * rng.random(label.shape)).astype(np.float32)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None]),
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None]),
        sampling_mask=tio.LabelMap(tensor=torch.from_numpy((label > 0).astype(np.uint8))[None]),
        case_id="toy", task="breast",
    )
    torch.manual_seed(0)
    thick = anisotropy(subject)
    assert torch.equal(thick["label"].data, subject["label"].data)
    assert torch.equal(thick["sampling_mask"].data, subject["sampling_mask"].data)
    assert not torch.equal(thick["image"].data, subject["image"].data)
    copy = TrainingAugmentation.from_config(augmentation_cfg, seed=0, task="breast").augment(subject, 1)
    assert set(torch.unique(copy["label"].data).tolist()) <= {0, 1}
    assert not torch.equal(copy["label"].data, subject["label"].data)  # rotated with the image
