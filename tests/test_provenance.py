"""provenance.json: what it records, and that each results command writes it into its --out folder."""

import datetime
import json
import os
import re
import sys
import time

import matplotlib.pyplot as plt
import pytest

from mtseg.runtime.provenance import CPU_FLAGS, command_line, git_state, write_provenance

FIELDS = {"command", "git", "cpu", "gpus", "versions", "date_utc", "wall_seconds"}


def test_provenance_records_commit_command_machine_versions_date_and_seconds(tmp_path):
    path = write_provenance(tmp_path, ["python", "-m", "mtseg.bench", "--note", "a training run shared the CPU"],
                            time.time() - 2.0, note="shared", settings={"x": 1})
    record = json.loads(path.read_text())
    assert path == tmp_path / "provenance.json" and FIELDS | {"note", "settings"} <= set(record)
    assert record["command"] == "python -m mtseg.bench --note 'a training run shared the CPU'"
    assert record["note"] == "shared" and record["settings"] == {"x": 1}
    assert 2.0 <= record["wall_seconds"] < 60
    date = datetime.datetime.fromisoformat(record["date_utc"])
    assert date.utcoffset() == datetime.timedelta(0) and abs(datetime.datetime.now(datetime.timezone.utc) - date).total_seconds() < 60
    cpu = record["cpu"]
    assert cpu["cpu_count"] == os.cpu_count() and cpu["torch_threads"] >= 1
    assert cpu["flags"] is None or set(cpu["flags"]) == set(CPU_FLAGS)
    if os.path.exists("/proc/cpuinfo"):
        assert cpu["model"] and isinstance(cpu["flags"], dict)
    assert isinstance(record["gpus"], list)
    assert {"python", "torch", "platform", "mtseg"} <= set(record["versions"])
    if record["git"] is not None:  # a clone (an installed copy has no repository)
        assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert not [p for p in tmp_path.iterdir() if p.name != "provenance.json"]  # written atomically: no temporary left


def test_without_git_the_commit_is_null(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert git_state() is None
    assert json.loads(write_provenance(tmp_path, "python -m mtseg.figures x", time.time()).read_text())["git"] is None


def test_the_command_line_is_the_module_form_as_typed(monkeypatch):
    assert command_line("mtseg.bench", ["--out", "docs/results/a b", "model.depth=3"]) == \
        "python -m mtseg.bench --out 'docs/results/a b' model.depth=3"
    monkeypatch.setattr(sys, "argv", ["/somewhere/mtseg/figures.py", "outputs/sweeps/x"])
    assert command_line("mtseg.figures") == "python -m mtseg.figures outputs/sweeps/x"


def _fake_run(root, experiment, seed, evaluation):
    """A run directory as mtseg.train leaves it, without checkpoint (Fig. 3 is stubbed)."""
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(f"experiment: {experiment}\nseed: {seed}\ntraining:\n  mode: patch\n")
    lines = ["step,minibatches_per_task,task,class,dice,train_seconds"]
    for task, result in evaluation.items():
        for cls, values in result["classes"].items():
            lines += [f"3,1,{task},{cls},{values['mean_dice'] / 2},1.5", f"6,2,{task},{cls},{values['mean_dice']},3.0"]
    (root / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = {"experiment": experiment, "minibatches_per_task": 2, "evaluation": {"tasks": evaluation}}
    (root / "summary.json").write_text(json.dumps(summary))


def _brain(white, grey, confusion=None):
    result = {"operating_point": "argmax", "n_images": 1, "classes": {
        "white_matter": {"mean_dice": white, "median_dice": white},
        "cortical_grey_matter": {"mean_dice": grey, "median_dice": grey}}}
    if confusion is not None:
        result["cross_task_confusion_percent"] = {"median": confusion, "per_image": {}}
    return result


CTA = {"operating_point": "pr_threshold", "n_images": 1, "threshold": 0.4, "pooled_dice": 0.5, "cross_task_confusion_percent": {"median": 2.0},
       "classes": {"coronary_arteries": {"mean_dice": 0.6, "median_dice": 0.6}}}


def test_figures_out_writes_results_json_by_experiment_task_and_class_and_provenance(tmp_path, monkeypatch):
    import mtseg.figures as figures

    monkeypatch.setattr(figures, "segmentation_panels", lambda runs: [])  # no checkpoints: Fig. 3 stubbed
    monkeypatch.setattr(figures, "plot_segmentations", lambda panels: plt.figure())
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "brain_cta" / "0", "brain_cta", 0, {"brain": _brain(0.8, 0.6, 1.0), "cta": CTA})
    _fake_run(sweep / "brain_cta" / "1", "brain_cta", 1, {"brain": _brain(0.7, 0.5, 3.0), "cta": CTA})
    _fake_run(sweep / "brain" / "0", "brain", 0, {"brain": _brain(0.9, 0.7)})
    out = tmp_path / "figures"
    assert figures.main([str(sweep), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"brain", "brain_cta", "multitask_vs_single"}
    exp = results["brain_cta"]
    assert (exp["number"], exp["n_runs"]) == (5, 2)
    assert exp["brain"]["white_matter"] == pytest.approx(0.75)  # the mean over the runs, as results.md shows
    assert exp["brain"]["mean"] == pytest.approx(0.65) and exp["brain"]["median_dice"]["cortical_grey_matter"] == pytest.approx(0.55)
    assert exp["brain"]["confusion_median_percent"] == pytest.approx(2.0)
    assert (exp["cta"]["coronary_arteries"], exp["cta"]["threshold"], exp["cta"]["pooled_dice"]) == pytest.approx((0.6, 0.4, 0.5))
    assert exp["mean"] == pytest.approx((0.75 + 0.55 + 0.6) / 3, abs=0.01)
    assert [r["seed"] for r in exp["runs"]] == [0, 1] and exp["runs"][1]["brain"]["white_matter"] == pytest.approx(0.7)
    assert results["brain"]["brain"]["white_matter"] == pytest.approx(0.9) and "confusion_median_percent" not in results["brain"]["brain"]
    comparison = results["multitask_vs_single"]["brain"]["white_matter"]
    assert comparison["single_task_dice"] == pytest.approx(0.9) and comparison["abs_diff_exp_5"] == pytest.approx(0.1)
    assert comparison["seed_spread"] is None  # one seed of the single-task experiment: NaN in the table, null here
    record = json.loads((out / "provenance.json").read_text())
    assert FIELDS <= set(record) and record["command"] == f"python -m mtseg.figures {sweep} --out {out}"
    assert [r["path"] for r in record["runs"]] == [str(sweep / "brain" / "0"), str(sweep / "brain_cta" / "0"), str(sweep / "brain_cta" / "1")]
    assert all(set(r) == {"path", "overrides", "train_seconds", "evaluation_seconds", "provenance"} for r in record["runs"])
    assert {"results.csv", "results.md", "fig2_learning_curves.png"} <= {p.name for p in out.iterdir()}


def test_gpu_check_out_writes_provenance(tmp_path, monkeypatch):
    import mtseg.gpu_check as gpu_check

    monkeypatch.setattr(gpu_check, "step_rate", lambda *args, **kwargs: 1.0)  # the measurements are test_gpu_check's
    monkeypatch.setattr(gpu_check, "dense_inference", lambda *args, **kwargs: {"shape": [8, 8, 8]})
    monkeypatch.setattr(gpu_check, "markdown", lambda report: "report\n")
    out = tmp_path / "check"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), "--pipeline-batches", "0", "--minibatches", "0"]) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert FIELDS <= set(record) and record["command"].startswith("python -m mtseg.gpu_check --device cpu --out ")


def test_bench_out_writes_what_it_prints_every_figure_by_name_and_provenance(tmp_path, capsys, monkeypatch):
    """The inference section only (tests/test_bench.py runs every section, whose figures are recorded alike)."""
    import mtseg.bench as bench_module
    from mtseg.bench import main

    monkeypatch.setattr(bench_module, "time_brain", lambda *args: None, raising=False)  # minutes: the brain section
    out = tmp_path / "bench"
    main(["--inference-only", "--dense-shape", "8", "8", "8", "--patch-voxels", "8", "--out", str(out), "--note", "a test"])
    printed = capsys.readouterr().out
    assert printed and printed in (out / "bench.md").read_text()  # what it printed, unchanged
    assert "Note: a test" in (out / "bench.md").read_text()
    bench = json.loads((out / "bench.json").read_text())
    assert bench["settings"]["dense_shape"] == [8, 8, 8] and bench["settings"]["note"] == "a test"
    assert bench["device"]["type"] in ("cpu", "cuda") and bench["inference"]["shape"] == [8, 8, 8]
    assert all(bench["inference"][name] > 0 for name in ("dense_voxels_per_second", "patch_voxels_per_second", "dense_over_patch"))
    assert bench["process"]["peak_rss_gib"] > 0
    # the printed figures are the recorded ones (kept to 6 significant digits), rounded
    patches = float(re.search(r"patch by patch ([\d.]+) voxels/s", printed).group(1))
    assert patches == pytest.approx(bench["inference"]["patch_voxels_per_second"], abs=0.051)
    record = json.loads((out / "provenance.json").read_text())
    assert FIELDS <= set(record) and record["note"] == "a test"
    assert record["command"] == f"python -m mtseg.bench --inference-only --dense-shape 8 8 8 --patch-voxels 8 --out {out} --note 'a test'"
    main(["--inference-only", "--dense-shape", "8", "8", "8", "--patch-voxels", "8"])  # without --out: prints only
    assert "inference on (8, 8, 8)" in capsys.readouterr().out
