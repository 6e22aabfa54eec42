"""Dice and the PR operating point against independent computations on random data."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from torchmetrics.functional.classification import binary_precision_recall_curve

from mtseg.evaluation.metrics import PooledPRCurve, dice_scores


def numpy_dice(reference: np.ndarray, prediction: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        r, p = reference == c, prediction == c
        if r.sum() + p.sum():
            out[c] = 2 * (r & p).sum() / (r.sum() + p.sum())
    return out


def test_dice_matches_numpy_with_empty_classes():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 4, size=(9, 8, 7))  # classes 0-3; 4 and 5 never in the reference
    prediction = rng.integers(0, 5, size=(9, 8, 7))  # class 4 predicted, absent from the reference: Dice 0
    prediction[prediction == 3] = 0  # class 3 in the reference only: Dice 0
    dice = dice_scores(torch.from_numpy(reference), torch.from_numpy(prediction), 6).numpy()
    np.testing.assert_allclose(dice, numpy_dice(reference, prediction, 6), equal_nan=True)
    assert dice[3] == 0 and dice[4] == 0 and np.isnan(dice[5])
    # MONAI, on one-hot volumes, agrees for the classes it defines
    one_hot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a), 6).permute(3, 0, 1, 2)[None].float()  # noqa: E731
    monai = compute_dice(one_hot(prediction), one_hot(reference), include_background=True, ignore_empty=True)[0].numpy()
    np.testing.assert_allclose(dice[:4], monai[:4], rtol=1e-6)


def test_dice_needs_equal_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_scores(torch.zeros(3, 3), torch.zeros(3, 4), 2)


def test_operating_point_is_the_threshold_of_highest_pooled_dice():
    rng = np.random.default_rng(1)
    images = []
    for n in (3000, 5000):
        target = rng.random(n) < 0.2
        probability = np.clip(0.35 * target + 0.65 * rng.random(n), 0, 1).astype(np.float32)
        images.append((probability, target))
    curve = PooledPRCurve(101)
    for probability, target in images:
        curve.update(torch.from_numpy(probability), torch.from_numpy(target))
    point = curve.operating_point()
    # brute force over the same thresholds, all voxels pooled
    probability = np.concatenate([p for p, _ in images])
    target = np.concatenate([t for _, t in images])
    thresholds = torch.linspace(0, 1, 101).numpy()
    dice = [2 * ((probability >= t) & target).sum() / ((probability >= t).sum() + target.sum()) for t in thresholds]
    best = int(np.argmax(dice))
    assert point.threshold == pytest.approx(thresholds[best])
    assert point.dice == pytest.approx(dice[best], rel=1e-6)
    assert 0.0 < point.threshold < 1.0
    # the same curve as torchmetrics' binned one
    precision, recall, thresholds = binary_precision_recall_curve(
        torch.from_numpy(probability), torch.from_numpy(target).long(), thresholds=101
    )
    torch.testing.assert_close(point.thresholds, thresholds)
    torch.testing.assert_close(point.recall, recall[:-1].double())
    defined = ~point.precision.isnan()
    torch.testing.assert_close(point.precision[defined], precision[:-1].double()[defined])


def test_operating_point_without_foreground_is_an_error():
    curve = PooledPRCurve(11)
    curve.update(torch.rand(100), torch.zeros(100, dtype=torch.bool))
    with pytest.raises(ValueError, match="no foreground"):
        curve.operating_point()


def test_probabilities_on_a_threshold_count_as_foreground():
    curve = PooledPRCurve(11)  # thresholds 0, 0.1, ..., 1
    target = torch.tensor([1, 1, 0, 0, 0])
    curve.update(torch.tensor([0.5, 0.5, 0.4, 0.1, 0.0]), target)
    point = curve.operating_point()
    assert point.threshold == pytest.approx(0.5) and point.dice == 1.0
    tp, fp, fn = curve.curve()
    assert tp[5] == 2 and fp[5] == 0 and fp[4] == 1  # >= 0.5 keeps both positives; >= 0.4 adds one false positive
    assert tp[6] == 0 and fn[6] == 2


def test_the_operating_point_is_never_threshold_zero():
    curve = PooledPRCurve(101)
    curve.update(torch.zeros(10), torch.tensor([1] * 9 + [0]))  # every probability 0: Dice is best at 0
    assert curve.operating_point().threshold > 0
