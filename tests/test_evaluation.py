"""Whole-image evaluation: argmax Dice, pooled PR operating point, cross-task confusion."""

import math

import pytest
import torch

from mtseg.evaluation.whole_image import WholeImageEvaluator, results_table
from mtseg.evaluation.metrics import dice_scores
from mtseg.tasks import LabelSpace


def test_brain_and_breast_images_are_evaluated_as_in_the_paper():
    space = LabelSpace(["brain", "breast"])  # channels: 0 bg, 1-6 brain, 7 pectoral muscle
    evaluator = WholeImageEvaluator(space, pr_thresholds=101)
    torch.manual_seed(0)
    reference = torch.randint(0, 7, (10, 10, 10), dtype=torch.uint8)
    labels = reference.clone()
    labels[0] = 7  # 100 of 1000 voxels labelled pectoral muscle in a brain MR
    labels[1] = 1  # a slab called white matter
    evaluator.add("brain", "b1", labels, reference)
    # breast: probability = 0.8 on the reference foreground plus noise voxels at 0.6
    breast_reference = torch.zeros(10, 10, 10, dtype=torch.uint8)
    breast_reference[2:5] = 1
    probability = 0.8 * breast_reference.float()
    probability[7, :5] = 0.6  # 50 false positives above 0.6
    breast_labels = torch.zeros(10, 10, 10, dtype=torch.uint8)
    breast_labels[2:5] = 7
    breast_labels[9, 0, :3] = 4  # 3 voxels called ventricular CSF
    evaluator.add("breast", "m1", breast_labels, breast_reference, probability)
    result = evaluator.compute()

    brain = result.tasks["brain"]
    expected_local = labels.clone()
    expected_local[labels == 7] = 0  # another task's class counts as background for brain Dice
    expected = dice_scores(reference, expected_local, 7)[1:]
    assert [brain.images[0].dice[c] for c in brain.classes] == pytest.approx(expected.tolist())
    assert brain.images[0].alien_percent == pytest.approx(10.0)
    assert brain.threshold is None and brain.operating_point == "argmax"

    breast = result.tasks["breast"]
    assert 0.6 < breast.threshold <= 0.8  # excludes the 0.6 voxels, keeps the 0.8 ones
    assert breast.pooled_dice == pytest.approx(1.0)
    assert breast.images[0].dice["pectoral_muscle"] == pytest.approx(1.0)
    assert breast.images[0].alien_percent == pytest.approx(0.3)
    assert breast.confusion_median == pytest.approx(0.3)

    as_dict = result.to_dict()
    assert as_dict["tasks"]["breast"]["threshold"] == breast.threshold
    assert as_dict["tasks"]["brain"]["cross_task_confusion_percent"]["median"] == pytest.approx(10.0)
    rows = results_table({"brain_breast": as_dict})
    assert len(rows) == 7 and {r["task"] for r in rows} == {"brain", "breast"}
    assert len(result.rows()) == 7
    assert result.mean_dice()[("breast", "pectoral_muscle")] == pytest.approx(1.0)


def test_one_threshold_for_all_images_and_median_confusion():
    space = LabelSpace(["cta"])
    evaluator = WholeImageEvaluator(space, pr_thresholds=11, keep_predictions=True)
    for k, (hit, confuser) in enumerate([(0.9, 0.3), (0.9, 0.7)]):
        reference = torch.zeros(20, 5, 5, dtype=torch.uint8)
        reference[:10] = 1
        probability = torch.where(reference.bool(), torch.tensor(hit), torch.tensor(0.0))
        probability[15] = confuser  # 25 background voxels with this probability
        labels = (probability > 0.5).to(torch.uint8)
        evaluator.add("cta", f"c{k}", labels, reference, probability)
    result = evaluator.compute()
    cta = result.tasks["cta"]
    # pooled: 500 foreground at 0.9, 25 at 0.3 and 25 at 0.7 in background; best threshold keeps only 0.9
    assert cta.threshold == pytest.approx(0.8)
    first, second = (i.dice["coronary_arteries"] for i in cta.images)
    assert first == second == pytest.approx(1.0)
    assert cta.images[0].prediction.sum() == 250
    # a single-task network has no cross-task confusion to report
    assert "cross_task_confusion_percent" not in result.to_dict()["tasks"]["cta"]


def test_undefined_dice_is_nan_and_left_out_of_the_mean():
    space = LabelSpace(["brain"])
    evaluator = WholeImageEvaluator(space, pr_thresholds=101)
    reference = torch.zeros(4, 4, 4, dtype=torch.uint8)
    reference[0] = 1
    evaluator.add("brain", "a", reference.clone(), reference)  # only white matter present: others NaN
    other = torch.zeros(4, 4, 4, dtype=torch.uint8)
    other[1] = 2
    evaluator.add("brain", "b", torch.zeros_like(other), other)  # grey matter missed: Dice 0
    result = evaluator.compute().tasks["brain"]
    assert math.isnan(result.images[0].dice["cortical_grey_matter"])
    assert result.class_dice("cortical_grey_matter")["mean"] == 0.0
    assert result.class_dice("white_matter")["mean"] == 1.0
    assert result.class_dice("brain_stem")["mean"] is None
