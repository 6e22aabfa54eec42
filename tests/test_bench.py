"""`make bench` end to end on tiny settings: every section reports, cube training against patch training included."""

import json
import os
import re
import subprocess
import sys


def test_bench_reports_pipeline_training_modes_and_inference(tmp_path):
    overrides = [
        "model.depth=3", "model.width=4", "model.fc_width=8", "training.cube=4", "training.cubes_per_task=1",
        "data.brain.shape=[32,32,32]", "data.breast.shape=[32,32,32]", "data.cta.shape=[32,32,32]",
        "data.brain.n_train=1", "data.breast.n_train=1", "data.cta.n_train=1",
        "data.brain.n_test=1", "data.breast.n_test=1", "data.cta.n_test=1",
    ]
    command = [
        sys.executable, "-m", "mtseg.bench", "--refills", "1", "--train-steps", "1", "--batch-size", "12",
        "--cta-shape", "24", "24", "24", "--dense-shape", "8", "8", "8", "--patch-voxels", "8", "--brain-shape", "32", "32", "32",
        *overrides,
    ]
    env = os.environ | {"MTSEG_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "disabled"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"ratio pipeline / training step: [\d.]+x", out)
    # the pipeline gathers on the device; the host's part alone (indices) is reported for both modes
    pipeline = re.search(r"pipeline \(3 tasks, TorchIO queues of blocks of 10, .* gathered on cpu\): +([\d.]+) samples/s", out)
    host = re.search(r"of which the host's part, the mini-batches of indices alone: +([\d.]+) samples/s", out)
    assert pipeline and host and float(host.group(1)) > 0 and float(pipeline.group(1)) > 0
    assert re.search(r"of which the host's part, the mini-batches of cube positions alone: +[\d.]+ cubes/s \(\d+ mini-batches/s\)", out)
    dense = re.search(r"cube training \(training=cubes, 1 cube\(s\) of 4\^3 per task and step\): +([\d.]+) labelled voxels/s, (\d+)x the patch mode's ([\d.]+)", out)
    assert dense and float(dense.group(1)) > 0 and float(dense.group(3)) > 0
    assert re.search(r"cube pipeline .*: +[\d.]+ labelled voxels/s, [\d.]+x the cube step", out)
    from mtseg.runtime.bf16 import cpu_has_native_bf16
    if cpu_has_native_bf16():  # the demo's precision is measured where the CPU computes bf16 natively
        assert re.search(r"cube training in bf16 autocast .*: +[\d.]+ labelled voxels/s, [\d.]+x fp32", out)
    memory = re.search(r"cube training step(?: in bf16)? on 3 cubes of 4\^3: peak RSS ([\d.]+) GiB \(([\d.]+) GiB before the first step\)", out)
    assert memory and float(memory.group(1)) >= float(memory.group(2)) > 0
    reuse = re.search(r"the same step, fresh processes: ([\d.]+) s with freed memory kept .*, ([\d.]+) s with glibc's defaults "
                      r"\(MTSEG_KEEP_FREED_MEMORY=0; peak RSS ([\d.]+) GiB\): ([\d.]+)x", out)
    assert reuse and float(reuse.group(1)) > 0 and float(reuse.group(2)) > 0 and float(reuse.group(3)) > 0
    assert float(reuse.group(4)) > 0
    assert re.search(r"inference on \(8, 8, 8\): dense \d+ voxels/s", out)
    # seconds per brain before (unfolded, fp32) and after (the default path) in one run, and how far the labels agree
    assert re.search(r"brain \(32, 32, 32\) \(phantom, [\d,]+ voxels in its mask\)", out)
    before = re.search(r"before \(unfolded, fp32\): ([\d.]+) s, peak RSS ([\d.]+) GiB", out)
    after = re.search(r"new default \(folded, precision=\w+ -> \w+\): ([\d.]+) s, ([\d.]+)x faster", out)
    agreement = re.search(r"new against before: same label at ([\d.]+) % of the mask's voxels", out)
    assert before and after and agreement and 0 <= float(agreement.group(1)) <= 100


def test_bench_times_a_given_brain_nifti_preprocessed_as_the_brain_task(tmp_path):
    import nibabel as nib
    import numpy as np

    data = np.zeros((20, 22, 18), np.float32)
    data[4:16, 5:17, 4:14] = np.random.default_rng(0).uniform(50, 150, (12, 12, 10))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: resampled to the brain task's 1 mm first
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "brain.nii.gz")
    command = [sys.executable, "-m", "mtseg.bench", "--inference-only", "--dense-shape", "8", "8", "8", "--patch-voxels", "8",
               "--brain-image", str(tmp_path / "brain.nii.gz"), "--out", str(tmp_path / "out"),
               "model.depth=3", "model.width=4", "model.fc_width=8"]
    result = subprocess.run(command, env=os.environ | {"WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"brain \((\d+), (\d+), (\d+)\) \(.*brain\.nii\.gz, ([\d,]+) voxels in its mask\)", result.stdout)
    assert found and tuple(int(v) for v in found.groups()[:3]) == (40, 44, 36)  # on the 1 mm grid
    assert int(found.group(4).replace(",", "")) > 12 * 12 * 10 * 7  # the brain's voxels at 1 mm (x8, less the edges' partial voxels)
    figures = json.loads((tmp_path / "out" / "bench.json").read_text())["brain_inference"]
    assert figures["image"].endswith("brain.nii.gz") and figures["shape"] == [40, 44, 36]
    for bad in (tmp_path / "none.nii.gz", tmp_path / "out" / "bench.json"):
        refused = subprocess.run([sys.executable, "-m", "mtseg.bench", "--inference-only", "--brain-image", str(bad)],
                                 capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and "--brain-image: " in refused.stderr and str(bad) in refused.stderr
        assert "Traceback" not in refused.stderr
