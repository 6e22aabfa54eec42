"""Test variants of held-out images (``python -m mtseg.evaluate … variants=contrast``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchio as tio

from mtseg.checkpoint import load_checkpoint, select_device
from mtseg.checkpoint import test_datamodule as held_out_datamodule  # not collected as a test
from mtseg.data.preprocessing import IMAGE, LABEL, SAMPLING_MASK, build_preprocessing
from mtseg.defaults import conf_defaults
from mtseg.evaluate import evaluate_checkpoint
from mtseg.evaluation.contrast_variants import (
    ORIGINAL, ContrastVariant, evaluate_variants, summarise, variant_images, variant_specs, variant_tasks,
)
from tests.test_train import run_module

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoints_02cd595" / "cubes"  # breast (MRI, PR threshold) and CTA
RESCALE = {"_target_": "torchio.RescaleIntensity", "out_min_max": [0.0, 1.0], "percentiles": [0.5, 99.5]}


def brain_like_subject(seed=0, shape=(24, 26, 22)):
    """An MR-like subject: a bright ellipsoid of two tissues on a zero background (skull-stripped)."""
    g = torch.Generator().manual_seed(seed)
    x, y, z = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = (x**2 + y**2 + z**2).sqrt()
    label = ((r < 0.8).int() + (r < 0.4).int()).to(torch.uint8)
    image = torch.where(label == 2, 0.8, torch.where(label == 1, 0.5, 0.0)) * 300
    image = image + (label > 0) * torch.rand(shape, generator=g) * 20
    return tio.Subject(image=tio.ScalarImage(tensor=image[None].float()), label=tio.LabelMap(tensor=label[None]), task="brain", case_id="c")


def prepared(subject, variant=None):
    rescale = tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=(0.5, 99.5))
    steps = [rescale] if variant is None else [rescale, variant, rescale]
    return build_preprocessing(1.0, 0.0, steps)(subject)


@pytest.mark.parametrize(
    "transforms",
    [[tio.RandomGamma(log_gamma=(0.47, 0.47))], [tio.RandomBiasField(coefficients=0.4)], [tio.RandomBlur(std=(1.0, 1.0))],
     [tio.RandomAnisotropy(axes=(2,), downsampling=(3.0, 3.0))], [tio.RandomNoise(std=(0.04, 0.04))],
     [tio.RandomMotion(degrees=3, translation=3, num_transforms=2)]],
    ids=["gamma", "bias", "blur", "slices", "noise", "motion"],
)
def test_a_variant_changes_the_intensities_inside_the_mask_only_and_keeps_grid_labels_and_mask(transforms):
    original = prepared(brain_like_subject())
    varied = prepared(brain_like_subject(), ContrastVariant("v", transforms, seed=3))
    assert torch.equal(varied[LABEL].data, original[LABEL].data)
    assert torch.equal(varied[SAMPLING_MASK].data, original[SAMPLING_MASK].data)
    assert varied[IMAGE].shape == original[IMAGE].shape and (varied[IMAGE].affine == original[IMAGE].affine).all()
    inside = original[SAMPLING_MASK].data.bool()
    assert torch.equal(varied[IMAGE].data[~inside], original[IMAGE].data[~inside])  # the normalised background, 0
    assert (varied[IMAGE].data[inside] - original[IMAGE].data[inside]).abs().max() > 0.01
    assert 0.0 <= float(varied[IMAGE].data.min()) and float(varied[IMAGE].data.max()) <= 1.0  # normalised again


def test_a_variant_is_the_same_for_the_same_seed_whatever_the_global_generator_holds():
    transforms = [tio.RandomBiasField(coefficients=0.4), tio.RandomNoise(std=(0.0, 0.05))]
    torch.manual_seed(11)
    first = prepared(brain_like_subject(), ContrastVariant("v", transforms, seed=5))[IMAGE].data
    torch.manual_seed(12345)
    torch.rand(100)
    again = prepared(brain_like_subject(), ContrastVariant("v", transforms, seed=5))[IMAGE].data
    other = prepared(brain_like_subject(), ContrastVariant("v", transforms, seed=6))[IMAGE].data
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_the_shipped_variants_build_and_are_seeded_by_position():
    config = conf_defaults("variants/contrast.yaml")
    specs = variant_specs(config)
    assert [s.name for s in specs] == list(config["variants"]) and len(specs) >= 6
    assert [s.seed for s in specs] == list(range(config["seed"], config["seed"] + len(specs)))
    assert all(isinstance(t, tio.Transform) for s in specs for t in s.transforms)
    assert variant_tasks(["brain", "breast", "cta"], config["modalities"]) == ["brain", "breast"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"x": [{"_target_": "os.system", "command": "touch /tmp/pwned"}]}, "torchio"),
        ({"x": [{"_target_": "builtins.eval", "_args_": ["1"]}]}, "torchio"),
        ({ORIGINAL: [RESCALE]}, "original"),
        ({"x": []}, "non-empty list"),
        ({"x": "torchio.RandomGamma"}, "non-empty list"),
        ({}, "mapping"),
        ({"x": [{"_target_": "torchio.RandomGamma", "log_gamma": "steep"}]}, "variants.variants.x"),
    ],
)
def test_a_bad_variant_is_refused_naming_it_before_anything_is_built(variants, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        variant_specs({"seed": 0, "variants": variants})
    assert not Path("/tmp/pwned").exists()


def test_the_summary_gives_each_class_the_mean_and_worst_over_the_variants_without_the_original():
    per_variant = {
        ORIGINAL: {"brain": {"a": 0.9, "b": 0.8}},
        "v1": {"brain": {"a": 0.7, "b": 0.6}},
        "v2": {"brain": {"a": 0.5, "b": None}},
    }
    summary = summarise(per_variant)["brain"]
    assert summary["classes"]["a"] == {"original": 0.9, "mean": pytest.approx(0.6), "worst": 0.5, "worst_variant": "v2"}
    assert summary["classes"]["b"] == {"original": 0.8, "mean": pytest.approx(0.6), "worst": 0.6, "worst_variant": "v1"}
    # mean over classes: original 0.85, v1 0.65, v2 0.5 (its undefined class left out)
    assert summary["mean_over_classes"] == {
        "original": pytest.approx(0.85), "mean": pytest.approx(0.575), "worst": pytest.approx(0.5), "worst_variant": "v2"}


@pytest.fixture(scope="module")
def fixture_evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    shutil.copytree(FIXTURE, tmp / "run")
    loaded = load_checkpoint(tmp / "run" / "checkpoints" / "last.ckpt")
    datamodule = held_out_datamodule(loaded, {"root": str(tmp / "data")})
    result = evaluate_checkpoint(loaded, datamodule, 101, 3_000_000, False, select_device("cpu"), False)
    return tmp, loaded, datamodule, result


def test_an_unchanging_variant_reproduces_the_originals_dice_at_the_originals_threshold(fixture_evaluation):
    _, loaded, datamodule, result = fixture_evaluation
    specs = variant_specs({"seed": 0, "variants": {
        "unchanged": [{"_target_": "torchio.RandomGamma", "log_gamma": [0.0, 0.0]}],
        "steep": [{"_target_": "torchio.RandomGamma", "log_gamma": [0.7, 0.7]}],
    }})
    original = {"breast": {"pectoral_muscle": result.tasks["breast"].class_dice("pectoral_muscle")["mean"]}}
    thresholds = result.thresholds()
    per_variant = evaluate_variants(loaded, datamodule, specs, ["breast"], original, thresholds, 101, 3_000_000, select_device("cpu"))
    assert list(per_variant) == [ORIGINAL, "unchanged", "steep"]
    assert per_variant["unchanged"]["breast"]["pectoral_muscle"] == pytest.approx(original["breast"]["pectoral_muscle"], abs=1e-6)
    assert per_variant["steep"]["breast"]["pectoral_muscle"] != pytest.approx(original["breast"]["pectoral_muscle"], abs=1e-6)
    # the variant's images are labelled at the originals' threshold, not at one tuned on the variant
    image = variant_images(datamodule, "breast", specs[1])[0]
    assert image.reference.shape == datamodule.subjects["breast"]["test"][0][LABEL].data[0].shape


def test_evaluate_with_variants_writes_both_reports_and_names_a_bad_setting(fixture_evaluation):
    tmp, *_ = fixture_evaluation
    out = tmp / "evaluation"
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "write_predictions=false", "surface_distances=false", f"+data.root={tmp / 'data'}"]
    run_module("mtseg.evaluate", *common, f"output_dir={out}", "variants=contrast")
    report = json.loads((out / "variants.json").read_text())
    results = json.loads((out / "results.json").read_text())
    names = list(conf_defaults("variants/contrast.yaml")["variants"])
    assert list(report["dice"]) == [ORIGINAL, *names] and list(report["dice"][ORIGINAL]) == ["breast"]  # the CT gets none
    assert report["dice"][ORIGINAL]["breast"]["pectoral_muscle"] == results["tasks"]["breast"]["classes"]["pectoral_muscle"]["mean_dice"]
    values = [report["dice"][n]["breast"]["pectoral_muscle"] for n in names]
    assert report["summary"]["breast"]["classes"]["pectoral_muscle"]["worst"] == min(values)
    assert "| **worst of the variants** |" in (out / "variants.md").read_text()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"].startswith("python -m mtseg.evaluate") and "variants=contrast" in provenance["command"]
    assert provenance["training_run"]["path"] == str(tmp / "run") and provenance["training_run"]["experiment"] == "breast_cta"
    bad = tmp / "bad"
    result = subprocess.run(
        [sys.executable, "-m", "mtseg.evaluate", *common, f"output_dir={bad}", "variants=contrast", "variants.modalities=[ct_only]"],
        env=os.environ | {"WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1 and "variants.modalities" in result.stderr and "Traceback" not in result.stderr
    assert not bad.exists()  # refused before anything was segmented or written
