"""Triplanar geometry, class voxel index, and the balance of the sampled mini-batches."""

import pytest
import torch
import torch.nn.functional as F

from mtseg.data.preprocessing import build_preprocessing
from mtseg.data.sampling import (
    CLASS_INDEX,
    CLASS_QUOTA,
    NOT_ELIGIBLE,
    VOLUME,
    VOLUME_ID,
    ClassVoxelIndex,
    class_quotas,
    draw_balanced_centres,
    proportional_counts,
)
from mtseg.data.subjects import prepare_subject
from mtseg.data.torchio_adapters import BlockQueue
from mtseg.data.training_volumes import TrainingVolumes
from mtseg.data.triplanar import TriplanarVolume
from mtseg.tasks import LabelSpace
from mtseg.training.patches import PatchTraining
from toydata import RADIUS, TOY_QUEUE, cube_context, toy_datamodule, toy_subject


def test_triplanar_planes_match_slices_of_the_padded_volume():
    volume = torch.randn(9, 11, 13)
    tv = TriplanarVolume(volume, RADIUS, pad_value=-5.0)
    padded = F.pad(volume, (RADIUS,) * 6, value=-5.0)
    for i, j, k in [(0, 0, 0), (8, 10, 12), (4, 0, 12), (3, 7, 2)]:
        planes = tv.extract(torch.tensor([(i * 11 + j) * 13 + k]))[0]
        I, J, K = i + RADIUS, j + RADIUS, k + RADIUS
        assert torch.equal(planes[0], padded[I - RADIUS : I + RADIUS + 1, J - RADIUS : J + RADIUS + 1, K])
        assert torch.equal(planes[1], padded[I, J - RADIUS : J + RADIUS + 1, K - RADIUS : K + RADIUS + 1])
        assert torch.equal(planes[2], padded[I - RADIUS : I + RADIUS + 1, J, K - RADIUS : K + RADIUS + 1])
        assert planes[:, RADIUS, RADIUS].eq(volume[i, j, k]).all()


@pytest.mark.parametrize("listed_fraction", [0.0, 1.0])  # rejection sampling / explicit lists
def test_class_voxel_index_draws_only_eligible_voxels_of_the_class(listed_fraction):
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (10, 12, 14))
    eligible = torch.rand(10, 12, 14, generator=generator) > 0.3
    index = ClassVoxelIndex(label, eligible, n_classes=4, listed_fraction=listed_fraction)
    assert index.present.tolist() == [0, 1, 2]
    assert index.counts.tolist() == [int(((label == c) & eligible).sum()) for c in range(4)]
    for cls in range(3):
        drawn = index.draw(cls, 500, generator)
        assert len(drawn) == 500
        assert (label.flatten()[drawn] == cls).all() and eligible.flatten()[drawn].all()
    with pytest.raises(ValueError, match="no eligible voxel"):
        index.draw(3, 1, generator)


def test_equal_split_spreads_the_remainder_at_random():
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(3)
    for _ in range(300):
        counts = proportional_counts(100, torch.ones(3), generator)
        assert counts.sum() == 100 and set(counts.tolist()) == {33, 34}
        seen += counts
    assert (seen / seen.sum() - 1 / 3).abs().max() < 0.005


def test_proportional_split_follows_the_weights_and_skips_zero_weights():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        counts = proportional_counts(10, torch.tensor([0.0, 1.0, 2.0, 0.0]), generator)
        assert counts.sum() == 10 and counts[0] == 0 and counts[3] == 0
        assert counts[1] in (3, 4) and counts[2] in (6, 7)


def test_class_quotas_give_every_class_the_same_share_over_the_images():
    counts = torch.tensor([[100, 5, 0], [100, 7, 0], [100, 9, 3]])  # class 2 only in the last image
    quotas = class_quotas(counts, samples_per_volume=30)
    assert torch.allclose(quotas.sum(0), torch.full((3,), 30.0, dtype=torch.float64))  # 3 images * 30 / 3 classes
    assert quotas[0, 2] == 0 and quotas[2, 2] == 30


def test_minibatches_are_balanced_over_tasks_and_classes_with_centres_above_threshold():
    tasks = ["brain", "breast", "cta"]
    dm = toy_datamodule(tasks, batch_size=100, rare=4)  # 100 does not divide over 3 tasks nor 7 classes
    # the rare brain class (two voxels) in one training image of three: still sampled as often as the others
    for subject in dm._raw_subjects()["brain"]["train"][1:]:
        subject["label"].data[subject["label"].data == 4] = 0
    dm.setup()
    assert [s[CLASS_QUOTA][4] > 0 for s in dm.subjects["brain"]["train"]] == [True, False, False]
    space = LabelSpace(tasks)
    batches = iter(dm.train_batches())
    n_batches = 150
    task_counts = torch.zeros(3)
    class_counts = torch.zeros(space.n_classes)
    per_task_background = torch.zeros(3)
    labels = {t: [s["label"].data[0].flatten() for s in dm.subjects[t]["train"]] for t in tasks}
    subject_task = [t for t in tasks for _ in dm.subjects[t]["train"]]
    for _ in range(n_batches):
        indices = next(batches)
        batch = dm.gather(indices)
        # the indices name a training image of the sample's task and a voxel of the sample's class
        for task_id, task in enumerate(space.tasks):
            mine = batch["task"] == task_id
            assert {subject_task[i] for i in indices["volume_id"][mine].tolist()} == {task}
            first = sum(len(dm.subjects[t]["train"]) for t in tasks[:task_id])
            local = torch.stack([labels[task][i - first][c] for i, c in zip(indices["volume_id"][mine].tolist(), indices["centre"][mine])])
            assert torch.equal(space.global_labels(task)[local.long()], batch["target"][mine])
        assert batch["planes"].shape == (100, 3, 2 * RADIUS + 1, 2 * RADIUS + 1)
        centre = batch["planes"][:, :, RADIUS, RADIUS]
        assert (centre > 0).all(), "a centre at or below the intensity threshold"
        assert (centre[:, 0] == centre[:, 1]).all() and (centre[:, 1] == centre[:, 2]).all()
        counts = torch.bincount(batch["task"], minlength=3)
        assert set(counts.tolist()) <= {33, 34}
        task_counts += counts
        class_counts += torch.bincount(batch["target"], minlength=space.n_classes)
        per_task_background += torch.bincount(batch["task"][batch["target"] == 0], minlength=3)
        # a sample's class belongs to its task
        for task_id, task in enumerate(space.tasks):
            allowed = set(space.task_classes(task))
            assert set(batch["target"][batch["task"] == task_id].tolist()) <= allowed
    total = 100 * n_batches
    assert (task_counts / total - 1 / 3).abs().max() < 0.01
    # within each task every class (background included, the 2-voxel rare class too) is equally likely
    expected = {"brain": total / 3 / 7, "breast": total / 3 / 2, "cta": total / 3 / 2}
    for task_id, task in enumerate(space.tasks):
        observed = [per_task_background[task_id]] + [class_counts[c] for c in space.task_classes(task)[1:]]
        for value in observed:
            # binomial standard error is ~1-2 % here; allow 5 %
            assert abs(float(value) / expected[task] - 1) < 0.05, (task, observed)


def test_queue_sampler_yields_blocks_of_centres_whose_labels_match_the_centre_voxel():
    dm = toy_datamodule(["brain"])
    dm.setup()
    subject = dm.subjects["brain"]["train"][1]
    training = PatchTraining(queue=TOY_QUEUE)
    sampler = training.sampler(RADIUS, torch.Generator().manual_seed(0))
    label = subject["label"].data[0].flatten()
    image = subject["image"].data[0].flatten()
    items = training.draw_items(subject, 70, RADIUS, torch.Generator().manual_seed(0))
    centres, labels = items["centre"], items["label"]
    assert torch.bincount(labels, minlength=7).tolist() == [10] * 7  # one visit: exactly balanced
    assert torch.equal(label[centres].long(), labels)
    planes = dm.training_volumes.planes(torch.full((70,), subject[VOLUME_ID]), centres)
    assert torch.equal(planes[:, :, RADIUS, RADIUS], image[centres][:, None].expand(70, 3))
    # the queue's path: 6 blocks of 10 per visit (60 samples per volume), each from this subject
    assert subject["num_samples"] == 6
    blocks = [b for _, b in zip(range(6), sampler(subject))]
    assert all(b["volume_id"].tolist() == [1] * 10 and len(b["centre"]) == len(b["label"]) == 10 for b in blocks)
    labels = torch.cat([b["label"] for b in blocks])
    assert set(torch.bincount(labels, minlength=7).tolist()) == {8, 9}
    assert torch.equal(label[torch.cat([b["centre"] for b in blocks])].long(), labels)


def test_training_volumes_gather_the_patches_and_cubes_of_volumes_of_any_shape_without_a_copy():
    generator = torch.Generator().manual_seed(3)
    subjects = [toy_subject("cta", 2, shape=shape, seed=i) for i, shape in enumerate([(9, 11, 13), (7, 5, 6), (12, 8, 10)])]
    prepared = [prepare_subject(s, build_preprocessing(1.0, 0.0, []), RADIUS, -0.5) for s in subjects]
    luts = torch.full((1, NOT_ELIGIBLE + 1), -100)
    luts[0, :2] = torch.tensor([0, 1])
    volumes = TrainingVolumes(prepared, RADIUS, luts)
    for index, subject in enumerate(prepared):  # the prepared volumes are views of the buffer: nothing held twice
        assert subject[VOLUME_ID] == index
        assert subject["image"].data.untyped_storage().data_ptr() == volumes.intensities.untyped_storage().data_ptr()
        assert subject[VOLUME].padded.untyped_storage().data_ptr() == volumes.intensities.untyped_storage().data_ptr()
    ids = torch.randint(3, (200,), generator=generator)
    centres = torch.stack([torch.randint(prepared[i][VOLUME].interior.numel(), (), generator=generator) for i in ids.tolist()])
    corners = torch.tensor([0, 5 * 6 - 1, 7 * 5 * 6 - 1])  # first, a face's last and the last voxel of the 7x5x6 volume
    ids, centres = torch.cat([ids, torch.ones(3, dtype=torch.long)]), torch.cat([centres, corners])
    planes = volumes.planes(ids, centres)
    for b, (i, c) in enumerate(zip(ids.tolist(), centres)):
        assert torch.equal(planes[b], prepared[i][VOLUME].extract(c[None])[0])
    starts = torch.cat([prepared[i][VOLUME].cube_start(c[None], 3) for i, c in zip(ids.tolist(), centres)])
    context, codes = volumes.cubes(ids, starts, 3)
    for b, (i, start) in enumerate(zip(ids.tolist(), starts.tolist())):
        volume = prepared[i][VOLUME]
        assert torch.equal(context[b], cube_context(volume, start, 3))
        x, y, z = start
        assert torch.equal(codes[b], prepared[i][CLASS_INDEX].codes.view(volume.shape)[x : x + 3, y : y + 3, z : z + 3])
    assert volumes.to("cpu") is volumes


def test_block_queues_hand_out_every_sample_once_in_takes_that_cut_blocks():
    blocks = iter([{"subject": torch.full((4,), b), "centre": torch.arange(4 * b, 4 * b + 4)} for b in range(10)])
    queue = BlockQueue(type("Q", (), {"__getitem__": lambda self, i: next(blocks)})())
    takes = [queue.take(n) for n in (3, 6, 1, 4, 10)]
    assert [len(t["centre"]) for t in takes] == [3, 6, 1, 4, 10]
    assert torch.equal(torch.cat([t["centre"] for t in takes]), torch.arange(24))
    assert torch.equal(torch.cat([t["subject"] for t in takes]), torch.arange(24) // 4)


def test_a_queue_block_larger_than_a_visit_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match=r"training.queue: need 1 <= block <= samples_per_volume <= max_length, got block=61"):
        PatchTraining(queue={**TOY_QUEUE, "block": 61})
    with pytest.raises(ValueError, match=r"training.queue.block is not set"):
        PatchTraining(queue={k: v for k, v in TOY_QUEUE.items() if k != "block"})
    dm = toy_datamodule(["brain"])
    dm.training = None
    with pytest.raises(ValueError, match=r"needs a training mode"):
        dm.setup()
    assert dm.subjects == {}  # refused before any preprocessing
    dm.setup("validate")  # evaluating a checkpoint needs no queue (one saved before blocks existed has none)
    assert set(dm.subjects["brain"]) == {"test"}


def test_validation_serves_whole_held_out_images_of_every_task():
    dm = toy_datamodule(["brain", "cta"])
    dm.setup()
    images = list(dm.val_dataloader())
    assert [(i.task, i.case_id) for i in images] == [("brain", "brain_10"), ("cta", "cta_10")]
    for image in images:
        assert image.volume.shape == tuple(image.reference.shape) == tuple(image.mask.shape) == (16, 18, 20)
        assert image.volume.radius == RADIUS
        assert image.reference.dtype == torch.uint8
        assert not image.mask[:3].any() and image.mask[3:].all()  # intensity > 0 only where x > 2
    limited = toy_datamodule(["cta"])
    limited.val_images_per_task = 1
    limited._raw_subjects = lambda: {"cta": {"train": [toy_subject("cta", 2)], "test": [toy_subject("cta", 2, seed=s) for s in (1, 2)]}}
    limited.setup()
    assert [i.case_id for i in limited.val_dataloader()] == ["cta_1"]
    assert len(limited.held_out_images()) == 2


def test_evaluation_setup_prepares_the_held_out_images_only():
    dm = toy_datamodule(["brain"])
    dm.setup("validate")
    assert set(dm.subjects["brain"]) == {"test"}


def test_bad_data_fails_before_training():
    with pytest.raises(ValueError, match="smaller than the number of tasks"):
        toy_datamodule(["brain", "breast", "cta"], batch_size=2)
    # a class with no training voxel
    subjects = {"breast": {"train": [toy_subject("breast", 1)], "test": [toy_subject("breast", 2)]}}
    with pytest.raises(ValueError, match=r"no sample voxel of class\(es\) \['pectoral_muscle'\]"):
        toy_datamodule(["breast"], subjects=subjects).setup()
    # no training images
    with pytest.raises(ValueError, match="task 'breast' has no training images"):
        toy_datamodule(["breast"], subjects={"breast": {"train": [], "test": []}}).setup()
    # a threshold that leaves nothing
    dm = toy_datamodule(["cta"])
    dm.sources["cta"]["preprocessing"]["threshold"] = 10.0
    with pytest.raises(ValueError, match="no voxel has intensity above the sampling threshold"):
        dm.setup()
    # image and label on different grids
    mismatched = toy_subject("cta", 2)
    mismatched["label"].affine = mismatched["label"].affine @ torch.diag(torch.tensor([2.0, 1, 1, 1])).numpy()
    subjects = {"cta": {"train": [mismatched], "test": [toy_subject("cta", 2)]}}
    with pytest.raises(ValueError, match="differ in shape or geometry"):
        toy_datamodule(["cta"], subjects=subjects).setup()
    # labels outside the task's classes
    subjects = {"cta": {"train": [toy_subject("cta", 5)], "test": [toy_subject("cta", 2)]}}
    with pytest.raises(ValueError, match="outside 0..1"):
        toy_datamodule(["cta"], subjects=subjects).setup()


def test_held_out_images_without_foreground_fail_before_training_for_pr_tasks():
    empty = toy_subject("cta", 1, seed=4)  # labels all 0: no coronary arteries
    subjects = {"cta": {"train": [toy_subject("cta", 2)], "test": [empty, toy_subject("cta", 2, seed=5)]}}
    limited = toy_datamodule(["cta"], subjects=subjects)
    limited.val_images_per_task = 1
    with pytest.raises(ValueError, match=r"held-out image\(s\) of task 'cta' .* \(cta_4\) hold no coronary_arteries"):
        limited.setup()
    toy_datamodule(["cta"], subjects=subjects).setup()  # all held-out images: one has foreground


def test_each_ddp_process_draws_its_own_balanced_share_of_the_mini_batch():
    dm = toy_datamodule(["breast", "cta"], batch_size=12)
    dm.setup()
    single = next(iter(dm.train_batches(2)))
    shares = [next(iter(dm.train_batches(2, rank=rank, world_size=2))) for rank in (0, 1)]
    assert len(single["label"]) == 12 and all(len(s["label"]) == 6 for s in shares)
    for share in shares:  # task balance within each process
        assert torch.bincount(share["task"], minlength=2).tolist() == [3, 3]
    assert not torch.equal(shares[0]["centre"], shares[1]["centre"])  # streams seeded by rank
    with pytest.raises(ValueError, match=r"training.batch_size=12 cannot be split over 5 processes"):
        dm.train_batches(2, rank=0, world_size=5)


def test_background_near_tissue_draws_that_share_of_the_background_beside_labelled_voxels_and_nothing_else_changes():
    label = torch.zeros(30, 30, 30, dtype=torch.long)
    label[12:16, 12:16, 12:16] = 1
    index = ClassVoxelIndex(label, torch.ones(30, 30, 30, dtype=torch.bool), 2)
    subject = {CLASS_INDEX: index}  # what draw_balanced_centres reads of a subject
    labelled = (label > 0).float()[None, None]
    near_mask = (F.max_pool3d(labelled, 5, stride=1, padding=2)[0, 0].bool() & (label == 0)).flatten()
    assert torch.equal(index.near_background(2).long(), near_mask.nonzero().flatten())
    # the paper's sampling (None or 0) draws exactly as before the option existed
    paper = draw_balanced_centres(subject, 700, torch.Generator().manual_seed(4))
    for off in (None, 0.0):
        again = draw_balanced_centres(subject, 700, torch.Generator().manual_seed(4), off, 2)
        assert all(torch.equal(a, b) for a, b in zip(paper, again))
    centres, labels = draw_balanced_centres(subject, 7000, torch.Generator().manual_seed(4), 0.5, 2)
    assert torch.bincount(labels).tolist() == [3500, 3500]  # the class balance is the paper's
    background = centres[labels == 0]
    assert (label.flatten()[background] == 0).all()
    share_paper = float(near_mask[paper[0][paper[1] == 0]].double().mean())  # 8**3 - 4**3 of 30**3 - 4**3: about 2 %
    share = float(near_mask[background].double().mean())
    assert share_paper < 0.05 and 0.5 <= share <= 0.5 + 0.05
    with pytest.raises(ValueError, match=r"training.background_near_tissue must be a share in \[0, 1\] or null"):
        PatchTraining(queue=TOY_QUEUE, background_near_tissue=1.5)
    assert PatchTraining(queue=TOY_QUEUE, background_near_tissue=0.5).config()["background_near_tissue"] == 0.5
