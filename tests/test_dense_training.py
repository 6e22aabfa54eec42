"""Compute-sharing training (training=cubes, formerly training=dense): cubes equal patches, loss weights restore the paper's balance."""

import pytest
import torch

from mtseg.data.preprocessing import build_preprocessing
from mtseg.data.sampling import CLASS_INDEX, NOT_ELIGIBLE, VOLUME, draw_balanced_centres
from mtseg.data.subjects import prepare_subject
from mtseg.data.training_volumes import IGNORE, TrainingVolumes, channel_table
from mtseg.data.triplanar import TriplanarVolume
from mtseg.training.cube_loss import cube_loss, cube_loss_weights
from mtseg.training.cubes import CubeTraining
from mtseg.model import TriplanarCNN
from mtseg.training.module import MultiTaskSegmentationModule
from mtseg.tasks import LabelSpace
from toydata import RADIUS, cube_context, toy_datamodule, toy_subject

DENSE = {"mode": "dense", "cube": 4, "cubes_per_task": 2, "queue": {"max_length": 16, "samples_per_volume": 8, "block": 2}}


def _trained_a_little(net: TriplanarCNN) -> TriplanarCNN:
    """Non-trivial batch-norm statistics, so eval mode is not the identity."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(32, 3, net.patch_size, net.patch_size))
    return net.eval()


@pytest.mark.parametrize("cube", [1, 4, 5])
def test_cube_logits_equal_patch_logits_of_every_voxel_borders_included(cube):
    torch.manual_seed(0)
    net = _trained_a_little(TriplanarCNN(5, depth=3, width=6, fc_width=10))
    volume = TriplanarVolume(torch.randn(9, 10, 11), net.depth, pad_value=0.3)
    nx, ny, nz = volume.shape
    # centres in the middle, at every corner (cubes shifted inwards) and on faces
    corners = [(x, y, z) for x in (0, nx - 1) for y in (0, ny - 1) for z in (0, nz - 1)]
    centres = torch.tensor([(4, 5, 5), (0, 5, 5), (8, 0, 10), *corners])
    flat = (centres[:, 0] * ny + centres[:, 1]) * nz + centres[:, 2]
    starts = volume.cube_start(flat, cube)
    contexts = torch.stack([cube_context(volume, s.tolist(), cube) for s in starts])
    with torch.no_grad():
        logits = net.forward_cubes(contexts, cube)  # (B, C, k, k, k)
    offsets = torch.stack(torch.meshgrid(*[torch.arange(cube)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for b, start in enumerate(starts):
        voxels = start + offsets  # every target voxel of the cube, inside the volume
        assert (voxels >= 0).all() and (voxels < torch.tensor(volume.shape)).all()
        voxel_flat = (voxels[:, 0] * ny + voxels[:, 1]) * nz + voxels[:, 2]
        with torch.no_grad():
            expected = net(volume.extract(voxel_flat))  # (k^3, C), one triplanar patch per voxel
        got = logits[b].reshape(net.n_classes, -1).T
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the centre voxel lies in its cube
    assert ((centres >= starts) & (centres < starts + cube)).all()


def test_cube_start_keeps_cubes_inside_and_refuses_cubes_larger_than_the_volume():
    volume = TriplanarVolume(torch.zeros(6, 7, 8), 2)
    starts = volume.cube_start(torch.arange(6 * 7 * 8), 6)
    assert starts.min() >= 0 and (starts <= torch.tensor([0, 1, 2])).all()
    with pytest.raises(ValueError, match="cannot hold a cube"):
        volume.cube_start(torch.arange(3), 7)
    with pytest.raises(ValueError, match=r"training.cube \+ 2 \* model.depth"):
        TriplanarCNN(3, depth=2).forward_cubes(torch.zeros(1, 9, 9, 9), 4)


def test_loss_weights_balance_classes_within_tasks_and_tasks_and_ignore_voxels_at_or_below_threshold():
    generator = torch.Generator().manual_seed(0)
    # task 0 (channels 0, 1, 2, 3) with a rare class 3; task 1 (channels 0, 4); class 2 absent
    target = torch.zeros(4, 5, 5, 5, dtype=torch.long)
    target[:2] = torch.tensor([0, 1, 3])[torch.multinomial(torch.tensor([0.7, 0.28, 0.02]), 250, True, generator=generator)].reshape(2, 5, 5, 5)
    target[2:] = torch.tensor([0, 4])[torch.multinomial(torch.tensor([0.9, 0.1]), 250, True, generator=generator)].reshape(2, 5, 5, 5)
    target[0, 0] = IGNORE
    target[3, :, 0] = IGNORE
    task = torch.tensor([0, 0, 1, 1])
    weights = cube_loss_weights(target, task, n_tasks=2, n_classes=5)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    assert (weights[target == IGNORE] == 0).all() and (weights[target != IGNORE] > 0).all()
    voxel_task = task.reshape(-1, 1, 1, 1).expand_as(target)
    for t, classes in ((0, (0, 1, 3)), (1, (0, 4))):
        totals = [float(weights[(voxel_task == t) & (target == c)].sum()) for c in classes]
        assert totals == pytest.approx([0.5 / len(classes)] * len(classes))  # equal per class, 1/2 per task
    # voxels of one class and task share one weight
    assert weights[(voxel_task == 0) & (target == 3)].unique().numel() == 1


def test_cube_loss_is_the_weighted_cross_entropy_and_reports_each_task():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 2, 2, 2)
    target = torch.tensor([0, 1, 1, 1, 0, 1, IGNORE, 1] + [0, 2] * 4).reshape(2, 2, 2, 2)
    task = torch.tensor([0, 1])
    loss, per_task = cube_loss(logits, target, task, n_tasks=2)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE)
    first = target[0][target[0] != IGNORE]
    expected_0 = 0.5 * ce[0][target[0] == 0].mean() + 0.5 * ce[0][target[0] == 1].mean()
    expected_1 = 0.5 * ce[1][target[1] == 0].mean() + 0.5 * ce[1][target[1] == 2].mean()
    assert len(first) == 7
    torch.testing.assert_close(per_task, torch.stack([expected_0, expected_1]))
    torch.testing.assert_close(loss, (expected_0 + expected_1) / 2)


def test_cube_sampler_yields_blocks_of_cubes_gathered_into_contexts_and_targets_of_the_volume():
    subject = toy_subject("brain", 7, shape=(16, 18, 20), rare=6)
    prepared = prepare_subject(subject, build_preprocessing(1.0, 0.0, []), RADIUS, 0.0)
    space = LabelSpace(["brain"])
    volumes = TrainingVolumes([prepared], RADIUS, channel_table(space))
    training = CubeTraining(cube=4, queue={"max_length": 10, "samples_per_volume": 5, "block": 5})
    starts = training.draw_items(prepared, 700, RADIUS, torch.Generator().manual_seed(0))["start"]
    # the centres the cubes were placed around (drawn from the same generator state)
    centres, _ = draw_balanced_centres(prepared, 700, torch.Generator().manual_seed(0))
    assert torch.equal(starts, prepared[VOLUME].cube_start(centres, 4))
    codes = prepared[CLASS_INDEX].codes
    assert (codes[centres] != NOT_ELIGIBLE).all()
    counts = torch.bincount(codes[centres].long(), minlength=7)
    assert counts.tolist() == [100] * 7  # the rare class (two voxels) decides where cubes go as often as any
    sampler = training.sampler(RADIUS, torch.Generator().manual_seed(0))
    block = next(sampler(prepared))
    assert block["volume_id"].tolist() == [0] * 5 and block["start"].shape == (5, 3)
    batch = training.gather(volumes, {**block, "task": torch.zeros(5, dtype=torch.long)})
    assert batch["context"].shape == (5,) + (4 + 2 * RADIUS,) * 3 and batch["target"].shape == (5, 4, 4, 4)
    volume: TriplanarVolume = prepared[VOLUME]
    for b, (sx, sy, sz) in enumerate(block["start"].tolist()):
        # the context's centre region is the target cube, and the targets are its labels (IGNORE at or below the threshold)
        inner = batch["context"][b, RADIUS:-RADIUS, RADIUS:-RADIUS, RADIUS:-RADIUS]
        assert torch.equal(inner, volume.interior[sx : sx + 4, sy : sy + 4, sz : sz + 4])
        label = prepared["label"].data[0][sx : sx + 4, sy : sy + 4, sz : sz + 4].long()
        eligible = prepared["sampling_mask"].data[0][sx : sx + 4, sy : sy + 4, sz : sz + 4].bool()
        assert torch.equal(batch["target"][b], torch.where(eligible, label, IGNORE))


def test_dense_minibatches_hold_cubes_per_task_with_targets_in_the_output_channels():
    dm = toy_datamodule(["brain", "breast", "cta"], training=DENSE)
    dm.setup()
    batch = dm.gather(next(iter(dm.train_batches(3))))
    side = 4 + 2 * RADIUS
    assert batch["context"].shape == (6, side, side, side)
    assert batch["target"].shape == (6, 4, 4, 4)
    assert batch["task"].tolist() == [0, 0, 1, 1, 2, 2]
    space = dm.label_space
    for task_id, task in enumerate(space.tasks):
        found = set(batch["target"][batch["task"] == task_id].unique().tolist()) - {IGNORE}
        assert found <= set(space.task_classes(task))
    # toy volumes have voxels below the threshold (x < 3): cubes that reach them ignore them
    assert any((dm.gather(b)["target"] == IGNORE).any() for b in dm.train_batches(20))


def test_a_cube_larger_than_a_training_volume_is_an_error_naming_the_setting():
    dm = toy_datamodule(["brain"], training={**DENSE, "cube": 17})
    with pytest.raises(ValueError, match=r"training.cube=17 does not fit .* brain_0: \(16, 18, 20\)"):
        dm.setup()
    with pytest.raises(ValueError, match="training.cubes_per_task must be a positive integer"):
        toy_datamodule(["brain"], training={**DENSE, "cubes_per_task": 0})
    with pytest.raises(ValueError, match="training.cube must be a positive integer"):
        CubeTraining(cube=0)


def test_depth_other_than_the_padding_and_a_step_beyond_memory_are_errors_before_training():
    dm = toy_datamodule(["brain"], training=DENSE)
    module = MultiTaskSegmentationModule(["brain"], model={"depth": RADIUS + 1, "width": 4, "fc_width": 8}, training=DENSE)
    module._trainer = type("T", (), {"datamodule": dm})()
    with pytest.raises(ValueError, match=r"model.depth=4"):
        module.on_fit_start()
    huge = {**DENSE, "cube": 2000, "cubes_per_task": 64}
    module = MultiTaskSegmentationModule(["brain"], model={"depth": RADIUS, "width": 4, "fc_width": 8}, training=huge)
    module._trainer = type("T", (), {"datamodule": toy_datamodule(["brain"], training=huge)})()
    with pytest.raises(ValueError, match=r"training.cubes_per_task=64, training.cube=2000\) needs about .* GiB"):
        module.on_fit_start()


def test_a_dense_step_lowers_the_loss_on_separable_toy_data():
    torch.manual_seed(0)
    dm = toy_datamodule(["brain", "breast"], training=DENSE, separable=True)
    dm.setup()
    module = MultiTaskSegmentationModule(["brain", "breast"], model={"depth": RADIUS, "width": 8, "fc_width": 16, "dropout": 0.0}, lr=1e-2,
                                         training=dm.training)
    optimizer = module.build_optimizer()
    batches = iter(dm.train_batches())
    losses = []
    for step in range(40):
        loss, _ = module.loss(dm.gather(next(batches)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
