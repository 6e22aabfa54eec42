import pytest
import torch

from mtseg.tasks import EXPERIMENTS, TASKS, LabelSpace, experiment_tasks

PAPER_OUTPUTS = {
    "brain": 7,
    "breast": 2,
    "cta": 2,
    "brain_breast": 8,
    "brain_cta": 8,
    "breast_cta": 3,
    "brain_breast_cta": 9,
}


def test_seven_experiments_have_the_papers_output_counts():
    assert set(EXPERIMENTS) == set(PAPER_OUTPUTS)
    for name, n_outputs in PAPER_OUTPUTS.items():
        assert LabelSpace(experiment_tasks(name)).n_classes == n_outputs


def test_backgrounds_merge_and_foregrounds_keep_task_order():
    space = LabelSpace(["cta", "brain", "breast"])  # order given does not matter
    assert space.experiment == "brain_breast_cta"
    assert space.class_names[0] == "background"
    assert space.class_names[1:7] == TASKS["brain"].classes
    assert space.class_names[7:] == ("pectoral_muscle", "coronary_arteries")
    assert space.class_tasks == (None,) + ("brain",) * 6 + ("breast", "cta")


def test_local_to_global_lookup_tables():
    space = LabelSpace(["breast", "cta"])
    assert space.global_labels("breast").tolist() == [0, 1]
    assert space.global_labels("cta").tolist() == [0, 2]
    local = torch.tensor([0, 1, 1, 0])
    assert space.global_labels("cta")[local].tolist() == [0, 2, 2, 0]
    # every task's classes land on distinct channels, backgrounds on 0
    full = LabelSpace(["brain", "breast", "cta"])
    channels = [c for t in full.tasks for c in full.task_classes(t)[1:]]
    assert sorted(channels) == list(range(1, 9))


def test_label_space_round_trip_through_checkpoint_dict():
    space = LabelSpace(["brain", "cta"])
    assert LabelSpace.from_dict(space.to_dict()) == space
    bad = space.to_dict() | {"class_names": ["background", "x"]}
    with pytest.raises(ValueError, match="do not match"):
        LabelSpace.from_dict(bad)


@pytest.mark.parametrize("bad", ["liver", "brain_liver", ""])
def test_unknown_experiment_names_the_choices(bad):
    with pytest.raises(ValueError, match="known experiments: brain, breast, cta"):
        experiment_tasks(bad)


def test_unknown_or_repeated_task_is_an_error():
    with pytest.raises(ValueError, match="Unknown task 'liver'"):
        LabelSpace(["brain", "liver"])
    with pytest.raises(ValueError, match="twice"):
        LabelSpace(["brain", "brain"])
    with pytest.raises(ValueError, match="not part of experiment"):
        LabelSpace(["brain"]).global_labels("cta")
