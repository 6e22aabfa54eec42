import numpy as np
import torch
import pytest

from mtseg.evaluation.baseline import IntensityClassifier
from mtseg.evaluation.metrics import dice_scores


def dice_per_class(prediction, reference, n_classes):
    return dice_scores(torch.as_tensor(reference), torch.as_tensor(prediction), n_classes)[1:].numpy()


def toy_problem(rng, shape=(32, 32, 32), foreground=0.3, means=(0.0, 5.0)):
    label = (rng.random(shape) < foreground).astype(np.uint8)
    image = rng.normal(0.0, 0.3, shape) + np.asarray(means)[label]
    return image, label


@pytest.mark.parametrize("prior", ["empirical", "uniform"])
def test_separable_intensities_give_perfect_dice(prior):
    rng = np.random.default_rng(0)
    train = [toy_problem(rng) for _ in range(2)]
    image, label = toy_problem(rng)
    classifier = IntensityClassifier(2, prior=prior).fit(
        [i for i, _ in train], [l for _, l in train]
    )
    prediction = classifier.predict(image)
    assert prediction.shape == image.shape
    assert dice_per_class(prediction, label, 2)[0] == 1.0


def test_identical_intensity_distributions_give_chance_level():
    rng = np.random.default_rng(1)
    train = [toy_problem(rng, means=(0.0, 0.0)) for _ in range(2)]
    image, label = toy_problem(rng, means=(0.0, 0.0))
    images, labels = [i for i, _ in train], [l for _, l in train]

    # Empirical prior: the majority class wins everywhere.
    empirical = IntensityClassifier(2, bins=32).fit(images, labels).predict(image)
    assert np.all(empirical == 0)
    assert dice_per_class(empirical, label, 2)[0] == 0.0

    # Uniform prior: the prediction is unrelated to the label, Dice is what chance gives.
    uniform = IntensityClassifier(2, bins=32, prior="uniform").fit(images, labels).predict(image)
    p, q = label.mean(), uniform.mean()
    chance = 2 * p * q / (p + q)
    assert abs(dice_per_class(uniform, label, 2)[0] - chance) < 0.03


def test_out_of_range_intensities_fall_into_the_edge_bins():
    rng = np.random.default_rng(2)
    image, label = toy_problem(rng)
    classifier = IntensityClassifier(2).fit([image], [label])
    assert classifier.predict(np.array([-100.0, 100.0])).tolist() == [0, 1]


def test_mask_limits_the_training_voxels():
    image = np.concatenate([np.zeros(100), np.ones(100)])
    label = np.concatenate([np.zeros(100), np.ones(100)]).astype(np.uint8)
    # Outside the mask the labels contradict the intensities.
    image = np.concatenate([image, np.zeros(300)])
    label = np.concatenate([label, np.ones(300, dtype=np.uint8)])
    mask = np.arange(500) < 200
    masked = IntensityClassifier(2, bins=4).fit([image], [label], masks=[mask])
    assert masked.predict(np.array([0.0, 1.0])).tolist() == [0, 1]
    unmasked = IntensityClassifier(2, bins=4).fit([image], [label])
    assert unmasked.predict(np.array([0.0, 1.0])).tolist() == [1, 1]


def test_classes_absent_from_training_are_never_predicted():
    rng = np.random.default_rng(3)
    image, label = toy_problem(rng)
    prediction = (
        IntensityClassifier(4, prior="uniform")
        .fit([image], [label])
        .predict(rng.normal(0, 10, 1000))
    )
    assert set(np.unique(prediction)) <= {0, 1}


def test_dice_per_class_values_and_nan_for_absent_classes():
    reference = np.array([0, 1, 1, 2, 2, 0])
    prediction = np.array([0, 1, 2, 2, 2, 1])
    dice = dice_per_class(prediction, reference, 4)
    assert dice[0] == pytest.approx(2 * 1 / (2 + 2))
    assert dice[1] == pytest.approx(2 * 2 / (3 + 2))
    assert np.isnan(dice[2])  # class 3 in neither
    assert dice_per_class(np.zeros(4, int), np.array([0, 1, 0, 0]), 2)[0] == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="prior='flat'"):
        IntensityClassifier(2, prior="flat")
    with pytest.raises(RuntimeError, match="before fit"):
        IntensityClassifier(2).predict(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        IntensityClassifier(2).fit([np.zeros(3)], [np.zeros(4, np.uint8)])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        IntensityClassifier(2).fit([np.zeros(3)], [np.array([0, 1, 2])])
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros(3, int), np.zeros(4, int), 2)


def test_baseline_of_a_data_module_scores_whole_held_out_images():
    from mtseg.evaluation.baseline import intensity_baseline_dice
    from toydata import toy_datamodule

    separable = toy_datamodule(["brain", "cta"], separable=True)
    separable.setup()
    result = intensity_baseline_dice(separable)
    assert set(result) == {"brain", "cta"}
    assert len(result["brain"]) == 6
    assert all(d == 1.0 for task in result.values() for d in task.values())
    # random intensities: no better than chance
    noisy = toy_datamodule(["cta"])
    noisy.setup()
    assert intensity_baseline_dice(noisy)["cta"]["coronary_arteries"] < 0.8
