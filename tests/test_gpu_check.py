"""`python -m mtseg.gpu_check --device cpu` runs end to end on tiny settings and writes its report."""

import json

from mtseg.gpu_check import main
from mtseg.tasks import EXPERIMENTS

TINY = [
    "model.depth=3", "model.width=8", "model.fc_width=16", "data.queue.max_length=60", "data.queue.samples_per_volume=20",
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
    assert report["dense_inference"]["shape"] == [12, 12, 12] and report["dense_inference"]["seconds"] > 0
    assert set(report["sweep"]["runs"]) == set(EXPERIMENTS)  # the seven experiments, one run each
    assert report["sweep"]["runs"]["brain_breast_cta"]["steps"] == 3  # patch mode: 3 steps per mini-batch per task
    assert report["projection"]["minibatches_per_task"] == 25000 and report["projection"]["hours_in_all_one_after_another"] > 0
    assert report["concurrent"]["jobs_at_once"] == 2 and report["concurrent"]["speed-up_over_one_after_another"] > 0
    assert len(list((out / "sweep_2_at_once").glob("*/summary.json"))) == len(EXPERIMENTS)
    assert "Projected paper schedule" in (out / "gpu_check.md").read_text()
