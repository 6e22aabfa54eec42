"""The background diagnosis (mtseg.evaluation.background) against hand-made volumes, and its command end to end."""

import json

import pytest
import torch
import torchio as tio

from mtseg.data.preprocessing import build_preprocessing
from mtseg.data.subjects import prepare_subject
from mtseg.evaluation import background
from mtseg.tasks import LabelSpace
from tests.test_train import TINY, run_module


def blob_subject(shape=(20, 20, 30), blob=(slice(8, 12), slice(8, 12), slice(10, 14)), cls=1):
    label = torch.zeros(1, *shape, dtype=torch.uint8)
    label[(0, *blob)] = cls
    image = torch.rand(1, *shape) * 0.5 + 0.5 + label.float()
    subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label), task="brain", case_id="blob")
    return prepare_subject(subject, build_preprocessing(1.0, 0.0, []), 3, 0.0)


def test_distance_to_tissue_the_neck_and_the_landing_of_background_centres():
    subject = blob_subject()
    distance = background.tissue_distance(subject)
    assert distance[10, 10, 12] == 0 and distance[10, 10, 14] == 1 and distance[10, 10, 20] == 7
    assert background.lowest_labelled_slice(subject) == 10
    landing = background.background_landing([subject], 4000, torch.Generator().manual_seed(0))
    assert landing["centres"] == 4000 and sum(landing["distance_bands"].values()) == pytest.approx(1.0)
    # slices 0..9 of 30 lie below the blob: about a third of the uniformly drawn background
    assert landing["below_lowest_labelled_slice"] == pytest.approx(10 * 400 / (30 * 400 - 64), abs=0.03)


def test_false_positives_are_counted_per_class_with_where_they_lie():
    subject = blob_subject()
    space = LabelSpace(["brain"])
    reference = subject["label"].data[0]
    labels = reference.clone()
    labels[10, 10, 2] = 6  # brain stem painted 8 slices below the blob
    labels[10, 10, 20] = 5  # cerebellum 7 voxels above it
    result = background.false_positives(labels, reference, subject["image"].data[0], subject, space, "brain")
    assert result["brain_stem"]["voxels"] == 1 and result["brain_stem"]["below_lowest_labelled_slice"] == 1.0
    assert result["brain_stem"]["median_distance"] == 8 and result["cerebellum"]["median_distance"] == 7
    assert result["white_matter"] == {"voxels": 0} and result["other_tasks_classes"]["voxels"] == 0
    matrix = torch.tensor(result["confusion_matrix"]["counts"])
    assert matrix.shape == (7, 8) and matrix.sum() == reference.numel()
    assert matrix[0, 6] == 1 and matrix[0, 5] == 1 and matrix[1, 1] == 64 and matrix[:, 7].sum() == 0


def test_cube_loss_weight_on_the_background_of_a_task_alone_is_the_experiments_times_the_tasks():
    space = LabelSpace(["brain", "breast"])
    target = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    target[0, 0] = 1  # a brain cube: half white matter, half background
    target[1, 0] = 7  # a breast cube: half pectoral muscle (channel 7), half background
    batch = {"target": target, "task": torch.tensor([0, 1]), "volume_id": torch.tensor([0, 0]), "start": torch.zeros(2, 3, dtype=torch.long)}
    distance = torch.full((4, 4, 4), 30.0)
    result = background.cube_background_weight([batch], {0: distance}, 2, space)
    # two classes per task, two tasks: a quarter of the weight on each task's background, half when alone
    assert result["brain"]["experiment"]["total"] == pytest.approx(0.25) and result["brain"]["alone"]["total"] == pytest.approx(0.5)
    assert result["brain"]["experiment"][">25"] == pytest.approx(0.25)


def test_the_command_writes_its_numbers_with_provenance(tmp_path):
    out = tmp_path / "background"
    overrides = [o for o in TINY if not o.startswith(("trainer.", "schedule."))]
    run_module("mtseg.diagnose_background", "--out", str(out), "--per-image", "200", "--minibatches", "3",
               *overrides, "training.cube=4", "training.cubes_per_task=2", env={"MTSEG_DATA_DIR": str(tmp_path / "data")})
    results = json.loads((out / "results.json").read_text())
    assert set(results["landing"]) == {"brain", "breast", "cta"} and results["training_mode"] == "cubes"
    assert set(results["cube_background_weight"]["brain"]) == {"experiment", "alone"}
    assert (out / "report.md").is_file() and json.loads((out / "provenance.json").read_text())["command"].startswith("python -m mtseg.diagnose_background")
