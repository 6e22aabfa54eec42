"""python -m mtseg.predict: geometry round trip, task recognition, thresholds and bad input."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from checkpoints import write_checkpoint
from mtseg.predict import main

# experiment brain_breast: channels 0 background, 1-6 brain tissues, 7 pectoral muscle
PECTORAL, WHITE_MATTER = 7, 1


def oblique_anisotropic_image(path, shape=(20, 17, 9), spacing=(0.9, 1.2, 2.5), seed=0):
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = [12.5, -30.0, 7.0]
    data = rng.uniform(10, 100, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def breast_network(tmp_path):
    return write_checkpoint(tmp_path / "breast.ckpt", ["brain", "breast"], bias={PECTORAL: 20.0}, thresholds={"breast": 0.5})


def test_label_map_has_the_input_grid_and_the_recognised_task(tmp_path, breast_network, capsys):
    image = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(["--checkpoint", str(breast_network), "--input", str(image), "--output", str(out),
                 "--probabilities", str(tmp_path / "probabilities")]) == 0
    source, result = nib.load(image), nib.load(out)
    assert result.shape == source.shape
    np.testing.assert_array_equal(result.affine, source.affine)
    assert result.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(result.dataobj))) == {1}  # pectoral muscle, task-local label 1
    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["task"] == "breast" and report["recognised"] and not report["low_confidence"]
    assert report["dominance"] == pytest.approx(1.0)
    # recognised at the finest input spacing (0.9 mm) kept within the trained spacings (1.0-1.3 mm),
    # then segmented at breast's own 1.3 mm
    assert report["working_spacing_mm"] == 1.3
    assert [p["spacing_mm"] for p in report["recognition_passes"]] == [1.0]
    assert report["threshold"] == 0.5 and "checkpoint" in report["threshold_from"]
    assert report["labels"] == {"0": "background", "1": "pectoral_muscle"}
    probabilities = sorted(p.name for p in (tmp_path / "probabilities").iterdir())
    assert len(probabilities) == 8 and "pectoral_muscle.nii.gz" in probabilities
    pectoral = nib.load(tmp_path / "probabilities" / "pectoral_muscle.nii.gz")
    assert pectoral.shape == source.shape and np.array_equal(pectoral.affine, source.affine)
    assert "Task: breast (recognised" in capsys.readouterr().out


def test_a_pinned_task_uses_its_preprocessing_and_a_threshold_from_evaluation(tmp_path, breast_network, capsys):
    (tmp_path / "breast.thresholds.json").write_text(json.dumps({"thresholds": {"breast": 0.999999}}))
    image = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(["--checkpoint", str(breast_network), "--input", str(image), "--output", str(out), "--task", "brain"]) == 0
    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["task"] == "brain" and report["task_given"] and report["working_spacing_mm"] == 1.0
    assert report["recognition_passes"] == []
    # every voxel's argmax is the pectoral muscle, which is another task's class: background for brain
    assert report["voxels_per_label"]["0"] == int(np.prod(nib.load(image).shape))
    assert report["low_confidence"]
    assert "pass --overwrite" in bad(tmp_path, capsys, breast_network, image, out, "--task", "breast")
    assert main(["--checkpoint", str(breast_network), "--input", str(image), "--output", str(out), "--task", "breast", "--overwrite"]) == 0
    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["threshold"] == 0.999999 and "evaluation" in report["threshold_from"]


def test_an_image_the_network_finds_nothing_in_is_low_confidence_not_a_crash(tmp_path, capsys):
    network = write_checkpoint(tmp_path / "blind.ckpt", ["brain", "breast"], bias={0: 20.0})
    image = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    assert main(["--checkpoint", str(network), "--input", str(image), "--output", str(tmp_path / "seg.nii.gz")]) == 0
    report = json.loads((tmp_path / "seg.json").read_text())
    assert not report["recognised"] and report["low_confidence"]
    assert report["foreground_percent"] == 0.0
    assert "WARNING: low confidence" in capsys.readouterr().out
    assert (tmp_path / "seg.nii.gz").is_file()


def test_dominance_is_the_recognised_task_share_of_labelled_foreground():
    from mtseg.inference.recognition import Pass

    mixed = Pass(("brain",), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 60, "breast": 40})
    assert mixed.recognise({})[:2] == ("brain", pytest.approx(0.6))
    assert Pass(("brain",), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 0, "breast": 0}).recognise({})[:2] == (None, 0.0)


def bad(tmp_path, capsys, checkpoint, image, output, *extra):
    before = set(p for p in tmp_path.rglob("*"))
    code = main(["--checkpoint", str(checkpoint), "--input", str(image), "--output", str(output), *extra])
    assert code != 0
    assert set(p for p in tmp_path.rglob("*")) == before, "nothing may be left behind"
    return capsys.readouterr().err


def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, breast_network, capsys):
    good = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    out = tmp_path / "seg.nii.gz"
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), flat)
    assert "expected a 3-D image, got 2-D" in bad(tmp_path, capsys, breast_network, flat, out)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), series)
    assert "expected a 3-D image, got 4-D" in bad(tmp_path, capsys, breast_network, series, out)
    text = tmp_path / "scan.png"
    text.write_bytes(b"\x89PNG not an image")
    assert "not a NIfTI file" in bad(tmp_path, capsys, breast_network, text, out)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"garbage")
    assert "cannot be read as NIfTI" in bad(tmp_path, capsys, breast_network, broken, out)
    holes = tmp_path / "holes.nii.gz"
    data = np.ones((8, 8, 8), np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), holes)
    assert "NaN or infinite" in bad(tmp_path, capsys, breast_network, holes, out)
    assert "does not exist" in bad(tmp_path, capsys, breast_network, tmp_path / "missing.nii.gz", out)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    assert "not an mtseg checkpoint" in bad(tmp_path, capsys, foreign, good, out)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    assert "not a readable PyTorch checkpoint" in bad(tmp_path, capsys, garbage, good, out)
    assert "folder" in bad(tmp_path, capsys, breast_network, good, tmp_path / "no" / "such" / "seg.nii.gz")
    assert "must end in .nii or .nii.gz" in bad(tmp_path, capsys, breast_network, good, tmp_path / "seg.png")
    (tmp_path / "taken.nii.gz").mkdir()
    assert "is a folder" in bad(tmp_path, capsys, breast_network, good, tmp_path / "taken.nii.gz")
    assert "trained for brain, breast only" in bad(tmp_path, capsys, breast_network, good, out, "--task", "cta")
    # a probability folder that the failed run would have created is not left behind
    assert "not an mtseg checkpoint" in bad(tmp_path, capsys, foreign, good, out, "--probabilities", str(tmp_path / "p"))
    assert "NaN or infinite" in bad(tmp_path, capsys, breast_network, holes, out, "--probabilities", str(tmp_path / "p"))


def test_the_final_pass_uses_the_recognised_tasks_own_preprocessing(tmp_path):
    # brain + CTA network that calls every voxel coronary artery; the input's finest spacing
    # (0.9 mm) is also CTA's training spacing, so no pass is repeated for the spacing's sake
    network = write_checkpoint(tmp_path / "cta.ckpt", ["brain", "cta"], bias={7: 20.0}, thresholds={"cta": 0.5})
    image = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    assert main(["--checkpoint", str(network), "--input", str(image), "--output", str(tmp_path / "seg.nii.gz")]) == 0
    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["task"] == "cta" and report["preprocessing_of"] == "cta"
    assert report["working_spacing_mm"] == 0.9
    assert sorted(p["preprocessing_of"][0] for p in report["recognition_passes"]) == ["brain", "cta"]


def test_results_go_back_to_an_oblique_anisotropic_grid_voxel_for_voxel():
    import torchio as tio

    from mtseg.data.preprocessing import build_preprocessing
    from mtseg.nifti import to_input_grid

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([0.9, 1.2, 2.5])
    label = np.zeros((30, 24, 10), np.uint8)
    label[2:12, 3:10, 1:4] = 1  # blocks in different corners: an axis flip or swap would move them
    label[18:28, 14:22, 6:9] = 2
    source = tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine)
    image = tio.ScalarImage(tensor=torch.from_numpy(label.astype(np.float32))[None], affine=affine)
    subject = tio.Subject(image=image, label=source)
    working = build_preprocessing(0.6, -1.0, [])(subject)  # canonical, isotropic 0.6 mm
    assert working["label"].orientation == ("R", "A", "S") and working["label"].spacing == pytest.approx((0.6,) * 3)
    back = to_input_grid(working["label"].data[0], working["label"].affine, image, label=True).numpy()
    assert back.shape == label.shape
    for value in (1, 2):
        overlap = 2 * ((back == value) & (label == value)).sum() / ((back == value).sum() + (label == value).sum())
        assert overlap > 0.9


def test_recognition_weighs_dominance_by_a_plausible_foreground_fraction():
    from mtseg.inference.recognition import Pass

    # a brain MR read with CT preprocessing: 22 % of its voxels called coronary artery, all of
    # that pass's foreground (dominance 1), while training CTAs hold 0.3 % coronary voxels
    expected = {"brain": 0.4, "breast": 0.05, "cta": 0.003}
    mri = Pass(("brain", "breast"), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 3600, "breast": 400, "cta": 10}, 10000)
    ct = Pass(("cta",), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 0, "breast": 0, "cta": 2200}, 10000)
    task, dominance, plausibility = mri.recognise(expected)
    assert task == "brain" and dominance == pytest.approx(3600 / 4010) and plausibility == pytest.approx(0.9)
    task, dominance, plausibility = ct.recognise(expected)
    assert task == "cta" and dominance == 1.0 and plausibility == pytest.approx(0.003 / 0.22)
    assert mri.recognise(expected)[1] * mri.recognise(expected)[2] > dominance * plausibility
    assert ct.recognise({})[2] == 1.0  # without training statistics, dominance alone


def test_negative_fraction_counts_air_lungs_and_fat_not_an_mrs_resampling_ringing():
    from mtseg.data.preprocessing import negative_fraction

    rng = np.random.default_rng(0)
    mr = torch.from_numpy(rng.uniform(0, 1000, (20, 20, 20)).astype(np.float32))
    mr[:, :, :10] = torch.from_numpy(rng.normal(0, 5, (20, 20, 10)).astype(np.float32))  # background: half below 0
    assert (mr < 0).float().mean() > 0.2 and negative_fraction(mr) == 0.0
    ct = torch.full((20, 20, 20), -1000.0)  # air
    ct[:, :, 5:] = 40.0  # soft tissue
    ct[:, :, 5:10] = -100.0  # fat
    assert negative_fraction(ct) == pytest.approx(0.5)
    assert negative_fraction(ct + 1024) == 0.0  # CT stored as HU + 1024 has no negative values
    assert negative_fraction(ct.to(torch.int16)) == pytest.approx(0.5)  # integer HU as stored
    assert negative_fraction(torch.full((4, 4, 4), -5.0)) == 1.0
    big = torch.from_numpy(rng.uniform(-1000, 1000, (150, 150, 150)).astype(np.float32))  # the percentile from a sample
    exact = float((big < -0.05 * torch.quantile(big.view(-1), 0.995)).float().mean())
    assert negative_fraction(big) == pytest.approx(exact, abs=1e-3) and 0.4 < exact < 0.5


def test_intensity_agreement_tells_a_ct_in_hounsfield_units_from_an_mr():
    from mtseg.inference.recognition import Pass, intensity_agreement

    mr, ct = (0.0, 0.0), (0.66, 0.68)  # training ranges of the share of intensities clearly below 0
    assert intensity_agreement(0.67, mr) == pytest.approx(0.01 / 0.68)  # a CTA read as MRI
    assert intensity_agreement(0.0, ct) == pytest.approx(0.01 / 0.67)  # an MR read as CT
    assert intensity_agreement(0.67, ct) == intensity_agreement(0.0, mr) == 1.0
    assert intensity_agreement(0.33, ct) == pytest.approx(0.34 / 0.67)  # a CT with half the training CTAs' air
    assert intensity_agreement(0.84, ct) == pytest.approx(0.69 / 0.85)  # or more
    assert intensity_agreement(0.005, mr) == pytest.approx(0.01 / 0.015)  # an MR with a little
    assert intensity_agreement(0.9, None) == 1.0  # a checkpoint without the statistic: no check
    # the oblique, thick-sliced CTA of an earlier demo (docs/CHANGELOG.md): its MRI pass called it brain
    # (dominance 1.00, plausibility 0.90) above its CT pass (0.91 x 0.62); half its voxels are air or fat
    expected = {"brain": 0.5, "cta": 0.003}
    as_mri = Pass(("brain",), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 4500, "cta": 0}, 10000, intensity_agreement(0.5, mr))
    as_ct = Pass(("cta",), 1.0, np.eye(4), torch.zeros(1), {}, {"brain": 3, "cta": 31}, 10000, intensity_agreement(0.5, ct))
    assert as_mri.recognise(expected) == ("brain", 1.0, pytest.approx(0.9))
    assert as_ct.recognise(expected)[:2] == ("cta", pytest.approx(31 / 34))
    assert as_ct.score(expected) > 0.4 > 0.02 > as_mri.score(expected) == pytest.approx(0.9 * 0.01 / 0.51)
    assert as_mri.counts_only().intensity_agreement == as_mri.intensity_agreement


def ct_scan(path):
    ct = np.full((20, 20, 12), -1000.0, np.float32)  # air
    ct[5:15, 5:15, 2:10] = 40.0  # soft tissue: 800 of 4,800 voxels at or above 0 HU
    nib.save(nib.Nifti1Image(ct, np.diag([0.9, 0.9, 0.9, 1.0])), path)
    return path


def test_an_image_segmented_with_the_other_modalitys_preprocessing_is_low_confidence(tmp_path, capsys):
    # a brain + CTA network that calls every voxel white matter, trained on MR without negative
    # intensities and on CTAs with 50-90 % of their voxels clearly below 0 HU
    network = write_checkpoint(tmp_path / "net.ckpt", ["brain", "cta"], bias={WHITE_MATTER: 20.0}, negative_range={"brain": (0.0, 0.0), "cta": (0.5, 0.9)})
    ct, mr = ct_scan(tmp_path / "ct.nii.gz"), oblique_anisotropic_image(tmp_path / "mr.nii.gz")  # MR intensities 10-100

    def report(image, name, *extra):
        assert main(["--checkpoint", str(network), "--input", str(image), "--output", str(tmp_path / f"{name}.nii.gz"), *extra]) == 0
        return json.loads((tmp_path / f"{name}.json").read_text())

    as_brain = report(ct, "ct_as_brain", "--task", "brain")
    assert as_brain["intensity_agreement"] == pytest.approx(0.01 / (4000 / 4800 + 0.01), abs=1e-6)
    assert as_brain["dominance"] == 1.0 and as_brain["low_confidence"]
    out = capsys.readouterr().out
    assert ", intensity agreement 0.01)" in out and "WARNING: low confidence" in out
    assert not report(ct, "ct_as_brain_lenient", "--task", "brain", "--min-intensity-agreement", "0.01")["low_confidence"]
    as_cta = report(mr, "mr_as_cta", "--task", "cta")  # no negative intensity at all
    assert as_cta["intensity_agreement"] == pytest.approx(0.01 / 0.51, abs=1e-6) and as_cta["low_confidence"]
    # each read with its own modality's preprocessing, they agree fully
    assert report(ct, "ct_as_cta", "--task", "cta")["intensity_agreement"] == 1.0
    assert report(mr, "mr_as_brain", "--task", "brain")["intensity_agreement"] == 1.0
    # and the recognition passes report theirs
    passes = report(ct, "found")["recognition_passes"]
    assert {p["preprocessing_of"][0]: p["intensity_agreement"] for p in passes} == {"brain": pytest.approx(0.01 / 0.8433, abs=1e-4), "cta": 1.0}


@pytest.mark.parametrize("negative_range, recognised", [(None, "brain"), ({"brain": (0.0, 0.0), "cta": (0.5, 0.9)}, "cta")])
def test_the_intensity_agreement_decides_between_modalities(tmp_path, monkeypatch, negative_range, recognised):
    """A network that labels an image brain under MRI preprocessing and coronary artery under CT
    preprocessing (CT maps soft tissue above 1, MRI never): without the training range the two passes
    tie and the larger foreground (brain) wins; with it, the CT in HU is recognised as CTA."""
    import mtseg.inference.segmenter as segmenter
    from mtseg.inference.dense import DenseOutput

    CORONARY = 7  # brain_cta: 0 background, 1-6 brain tissues, 7 coronary arteries

    def by_preprocessing(net, volume, mask, channels, **kwargs):
        interior = volume.interior
        labels = torch.zeros(interior.shape, dtype=torch.uint8)
        if float(interior.max()) > 1.01:  # CT preprocessing: a few coronary voxels
            labels[(interior > 1.01) & mask] = CORONARY
            labels.view(-1)[labels.view(-1).nonzero()[100:]] = 0
        else:
            labels[mask] = WHITE_MATTER
        kept = list(channels or [])
        probabilities = torch.stack([(labels == c).float() for c in kept]) if kept else None
        return DenseOutput(labels, probabilities, tuple(kept))

    monkeypatch.setattr(segmenter, "segment_volume", by_preprocessing)
    network = write_checkpoint(tmp_path / "net.ckpt", ["brain", "cta"], thresholds={"cta": 0.5}, negative_range=negative_range)
    result = segmenter.Segmenter.from_checkpoint(network, "cpu").segment(ct_scan(tmp_path / "ct.nii.gz"))
    passes = {p["preprocessing_of"][0]: p for p in result.recognition["recognition_passes"]}
    assert passes["brain"]["foreground_voxels_per_task"]["brain"] == 800 and passes["cta"]["foreground_voxels_per_task"]["cta"] == 100
    assert result.task == recognised and result.recognition["recognised"]
    assert not result.low_confidence


def test_the_python_api_gives_the_command_line_result_voxel_for_voxel(tmp_path, breast_network):
    from mtseg import Segmenter

    image = oblique_anisotropic_image(tmp_path / "scan.nii.gz")
    assert main(["--checkpoint", str(breast_network), "--input", str(image), "--output", str(tmp_path / "cli.nii.gz")]) == 0
    segmenter = Segmenter.from_checkpoint(breast_network, device="cpu")
    for source in (image, nib.load(image)):  # a path or a nibabel image
        result = segmenter.segment(source)
        cli = nib.load(tmp_path / "cli.nii.gz")
        assert result.task == "breast" and result.recognition["task"] == json.loads((tmp_path / "cli.json").read_text())["task"]
        assert np.array_equal(result.labels.numpy(), np.asarray(cli.dataobj)) and np.array_equal(result.affine, cli.affine)
    written = result.save(tmp_path / "api.nii.gz")
    assert [p.name for p in written] == ["api.json", "api.nii.gz"]
    assert np.array_equal(np.asarray(nib.load(tmp_path / "api.nii.gz").dataobj), np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj))
    pinned = segmenter.segment(image, task="brain", probabilities=True)
    assert pinned.task == "brain" and set(pinned.probabilities) == set(pinned.class_names)
    assert pinned.probabilities["background"].shape == pinned.labels.shape


def test_a_phantom_segmented_through_the_api_matches_the_command_line(tmp_path, breast_network):
    from mtseg import Segmenter
    from mtseg.data.phantoms import PhantomSpec, generate_phantom

    image, _, affine = generate_phantom(PhantomSpec("breast", (40, 32, 32), 3.3), seed=3)
    scan = tmp_path / "breast_phantom.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), scan)
    assert main(["--checkpoint", str(breast_network), "--input", str(scan), "--output", str(tmp_path / "cli.nii.gz")]) == 0
    result = Segmenter.from_checkpoint(breast_network, device="cpu").segment(scan)
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert result.recognition == cli  # the same report, field for field
    assert np.array_equal(result.labels.numpy(), np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj))
