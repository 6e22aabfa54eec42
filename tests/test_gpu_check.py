"""`python -m mtseg.gpu_check --device cpu` runs end to end on tiny settings and writes its report."""

import json

import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.gpu_check import BF16_MAX_PROBABILITY_DIFFERENCE, bf16_agreement, calibrated, main, sweep_launcher
from mtseg.model import TriplanarCNN
from mtseg.tasks import EXPERIMENTS

TINY = [
    "model.depth=3", "model.width=8", "model.fc_width=16", "training.queue.max_length=60", "training.queue.samples_per_volume=20",
    *(f"data.{t}.shape=[32,32,32]" for t in ("brain", "breast", "cta")),
    *(f"data.{t}.{n}=1" for t in ("brain", "breast", "cta") for n in ("n_train", "n_test")),
]


def test_the_gpu_check_runs_on_a_cpu_and_reports_every_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("MTSEG_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "report"
    assert main(["--device", "cpu", "--out", str(out), "--steps", "1", "--pipeline-batches", "2",
                 "--inference-shape", "12", "12", "12", "--minibatches", "1", "--concurrent", "2", *TINY]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["device"] == "cpu"
    assert set(report["step_samples_per_second"]) == {"fp32", "bf16"} and all(v > 0 for v in report["step_samples_per_second"].values())
    assert report["pipeline_samples_per_second"] > 0 and report["pipeline_over_step"] > 0
    dense = report["dense_inference"]
    assert dense["shape"] == [12, 12, 12] and dense["seconds"] > 0 and dense["bf16"]["seconds"] > 0
    assert dense["bf16_against_fp32"]["shape"] == [12, 12, 12] and 0 <= dense["bf16_against_fp32"]["same_label_fraction"] <= 1
    assert set(report["sweep"]["runs"]) == set(EXPERIMENTS)  # the seven experiments, one run each
    assert report["sweep"]["runs"]["brain_breast_cta"]["steps"] == 3  # patch mode: 3 steps per mini-batch per task
    assert report["projection"]["minibatches_per_task"] == 25000 and report["projection"]["hours_in_all_one_after_another"] > 0
    assert report["concurrent"]["jobs_at_once"] == 2 and report["concurrent"]["speed-up_over_one_after_another"] > 0
    assert len(list((out / "sweep_2_at_once").glob("*/summary.json"))) == len(EXPERIMENTS)
    assert "Projected paper schedule" in (out / "gpu_check.md").read_text()
    # `make sweep` here: no GPU, so one experiment after another whatever the report says
    assert main(["--launcher", "--out", str(out)]) == 0


def test_make_sweep_runs_the_experiments_at_once_only_where_the_check_measured_that_faster_on_that_gpu():
    report = {"environment": {"gpu": "NVIDIA H200"}, "concurrent": {"jobs_at_once": 7, "speed-up_over_one_after_another": 2.4}}
    assert sweep_launcher(report, "NVIDIA H200") == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=7"]
    assert sweep_launcher(report, "NVIDIA A100-SXM4-80GB") == []  # measured on another GPU
    assert sweep_launcher(report, None) == []  # no GPU here
    slower = {**report, "concurrent": {"jobs_at_once": 7, "speed-up_over_one_after_another": 0.8}}
    assert sweep_launcher(slower, "NVIDIA H200") == []
    assert sweep_launcher({}, "NVIDIA H200") == []  # no check run yet


def test_dense_inference_in_bf16_stays_within_the_stated_tolerance_of_fp32():
    torch.manual_seed(0)
    net = calibrated(TriplanarCNN(9, depth=3, width=8, fc_width=16), torch.device("cpu"))
    agreement = bf16_agreement(net, TriplanarVolume(torch.rand(20, 18, 16), net.depth), torch.device("cpu"))
    assert agreement["tolerance"] == BF16_MAX_PROBABILITY_DIFFERENCE
    assert 0 < agreement["max_probability_difference"] <= BF16_MAX_PROBABILITY_DIFFERENCE  # bf16 did run, and close
    assert agreement["mean_probability_difference"] <= BF16_MAX_PROBABILITY_DIFFERENCE / 5
    assert agreement["same_label_fraction"] >= 0.95
