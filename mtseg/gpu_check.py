"""One command that measures mtseg on a GPU: ``make gpu-check`` (``python -m mtseg.gpu_check``).

Writes ``gpu_check.json``, ``gpu_check.md`` and ``provenance.json`` (:mod:`mtseg.runtime.provenance`:
commit, command, machine, date) into ``--out``, with:

1. the device and the versions of Python, torch, CUDA and Lightning;
2. samples/s of the paper's training step (batch 210 triplanar samples, forward, backward,
   Adam) in fp32 and in bf16 autocast, and optionally with ``torch.compile`` of the stack;
3. samples/s of the data pipeline (TorchIO queues of blocks of sample indices, class- and
   task-balanced mini-batches of the phantoms, moved to the device and gathered there from
   the device-resident training volumes, as training gets them) and its ratio to the fp32 step;
4. dense inference of a ``--inference-shape`` volume (default 256³): seconds and peak GPU memory,
   in fp32 and in bf16 autocast, and how far bf16's probabilities are from fp32's (on up to 48³);
5. a short sweep of the seven experiments (``--minibatches`` per task, whole-image evaluation
   at the end, ``logger=none``) in one Hydra multirun, each run's steps/s (its training
   seconds include set-up and the first queue fill: an underestimate at a short schedule),
   and the time the full paper schedule (``schedule.minibatches_per_task`` of ``conf/schedule/paper.yaml``)
   would take at those rates, one experiment after another;
6. the same sweep with ``--concurrent`` experiments at once on the device (Hydra's joblib
   launcher), and its speed-up over one after another. ``make sweep`` on the same kind of
   GPU then runs the experiments the faster way (``--launcher`` prints its choice).

It needs nothing beyond mtseg's own dependencies (no W&B), so it runs on a machine where
nothing can be installed. ``--device cpu`` with small settings runs it anywhere (the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning
import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.inference.dense import segment_volume
from mtseg.training.module import MultiTaskSegmentationModule
from mtseg.runtime.provenance import command_line, write_provenance
from mtseg.tasks import EXPERIMENTS, LabelSpace, experiment_tasks


def environment(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda,
        "device": device.type,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1)}
    else:
        info |= {"cpu_threads": torch.get_num_threads()}
    return info


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(model: dict, batch_size: int, steps: int, device: torch.device, precision: str, compile_stack: bool = False) -> float:
    """Training samples/s of one patch-mode step on random mini-batches of experiment 7."""
    tasks = list(experiment_tasks("brain_breast_cta"))
    module = MultiTaskSegmentationModule(tasks, model=model).to(device)
    if compile_stack:
        module.net.features.compile()  # as `compile=true` trains
    optimizer = module.build_optimizer()
    size = module.net.patch_size
    space = LabelSpace(tasks)
    batch = {
        "planes": torch.rand(batch_size, 3, size, size, device=device),
        "target": torch.randint(space.n_classes, (batch_size,), device=device),
        "task": torch.arange(batch_size, device=device) % len(tasks),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = module.loss(batch)
        loss.backward()
        optimizer.step()

    one_step()  # warm-up (and compilation)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def train_config(overrides: list[str]):
    """The training config of ``conf/train.yaml`` with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from mtseg import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def pipeline_rate(cfg, batches: int, device: torch.device) -> float:
    """Samples/s of the training data pipeline of experiment 7 (the phantoms of ``cfg``): mini-batches of
    indices drawn from the TorchIO queues, moved to ``device`` and gathered there, as training gets them."""
    from hydra.utils import instantiate

    tasks = list(experiment_tasks("brain_breast_cta"))
    datamodule = instantiate(cfg.data, tasks=tasks, depth=cfg.model.depth, seed=0, training=instantiate(cfg.training))
    datamodule.prepare_data()
    datamodule.setup()
    stream = iter(datamodule.train_batches())

    def gathered() -> int:
        return len(datamodule.gather({k: v.to(device, non_blocking=True) for k, v in next(stream).items()})["target"])

    gathered()  # the first fill, and the training volumes' move to the device
    _synchronize(device)
    start = time.perf_counter()
    samples = sum(gathered() for _ in range(batches))
    _synchronize(device)
    return samples / (time.perf_counter() - start)


#: Largest difference of a class probability between dense inference in bf16 autocast and in fp32 that
#: the check accepts (the tests hold a small network on the CPU to it).
BF16_MAX_PROBABILITY_DIFFERENCE = 0.05


def bf16_agreement(net, volume: TriplanarVolume, device: torch.device) -> dict:
    """Dense inference of ``volume`` in bf16 autocast against fp32: the largest and the mean absolute
    difference of any class probability, and the fraction of voxels given the same label."""
    fp32 = segment_volume(net, volume, channels=None, progress=False)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = segment_volume(net, volume, channels=None, progress=False)
    difference = (bf16.probabilities.float() - fp32.probabilities.float()).abs()
    return {
        "max_probability_difference": round(float(difference.max()), 4),
        "mean_probability_difference": round(float(difference.mean()), 5),
        "same_label_fraction": round(float((bf16.labels == fp32.labels).double().mean()), 5),
        "tolerance": BF16_MAX_PROBABILITY_DIFFERENCE,
    }


def calibrated(net, device: torch.device, batches: int = 4):
    """``net`` with batch-norm statistics of a few random batches, in eval mode (a fresh network's
    running statistics would make eval mode the identity and its outputs uninformative)."""
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.rand(64, 3, net.patch_size, net.patch_size, device=device))
    return net.eval()


def dense_inference(shape: tuple[int, int, int], device: torch.device, model: dict) -> dict:
    """Seconds and peak GPU memory of dense inference of a random ``shape`` volume (9 outputs) in fp32 and
    in bf16 autocast, and how far bf16's probabilities are from fp32's on a 48³ volume."""
    from mtseg.model import TriplanarCNN

    torch.manual_seed(0)
    net = calibrated(TriplanarCNN(9, **model).to(device), device)
    volume = TriplanarVolume(torch.rand(shape), net.depth)
    result = {"shape": list(shape)}
    for precision in ("fp32", "bf16"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            segment_volume(net, volume, channels=[7, 8], progress=False)
        _synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        measured = {"seconds": round(seconds, 2), "voxels_per_second": round(volume.interior.numel() / seconds),
                    "peak_gpu_memory_gib": None if peak is None else round(peak, 2)}
        result |= measured if precision == "fp32" else {"bf16": measured}
    small = tuple(min(s, 48) for s in shape)
    result["bf16_against_fp32"] = {"shape": list(small), **bf16_agreement(net, TriplanarVolume(torch.rand(small), net.depth), device)}
    return result


def short_sweep(out: Path, minibatches: int, device: torch.device, overrides: list[str], concurrent: int = 1) -> dict:
    """The seven experiments for ``minibatches`` per task in one multirun; per run: steps, seconds, Dice.

    ``concurrent`` > 1 runs that many experiments at once (Hydra's joblib launcher, one process
    each, sharing the device), one after another otherwise.
    """
    sweep_dir = out / ("sweep" if concurrent == 1 else f"sweep_{concurrent}_at_once")
    launcher = [] if concurrent == 1 else ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={concurrent}"]
    if sweep_dir.exists():  # runs of an earlier check must not be counted
        shutil.rmtree(sweep_dir)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    command = [
        sys.executable, "-m", "mtseg.train", "-m", f"+experiment={','.join(EXPERIMENTS)}", "logger=none",
        f"trainer.accelerator={accelerator}", f"schedule.minibatches_per_task={minibatches}", f"schedule.eval_every={minibatches}",
        f"hydra.sweep.dir={sweep_dir}", *launcher, *overrides,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"WANDB_MODE": "disabled"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    runs = {}
    for summary_path in sorted(sweep_dir.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        training = max(summary["train_seconds"] - summary["evaluation_seconds"], 1e-3)  # evaluations left out
        runs[summary["experiment"]] = {
            "steps": summary["steps"],
            "steps_per_minibatch": summary["steps"] / summary["minibatches_per_task"],  # T (patch) or 1 (dense)
            "train_seconds": round(summary["train_seconds"], 1),
            "evaluation_seconds": round(summary["evaluation_seconds"], 1),
            "steps_per_second": round(summary["steps"] / training, 3),
            "mean_dice": round(sum(d for classes in summary["dice"].values() for d in classes.values() if d is not None)
                               / max(1, sum(1 for classes in summary["dice"].values() for d in classes.values() if d is not None)), 3),
        }
    return {"wall_seconds": round(wall, 1), "runs": runs}


def projection(runs: dict, steps_per_minibatch: dict[str, int]) -> dict:
    """Hours the paper's schedule would take for each experiment at its measured steps/s, and in all."""
    paper = conf_defaults("schedule/paper.yaml")["minibatches_per_task"]
    hours = {
        experiment: round(paper * steps_per_minibatch[experiment] / run["steps_per_second"] / 3600, 2)
        for experiment, run in runs.items()
    }
    return {"minibatches_per_task": paper, "hours_per_experiment": hours, "hours_in_all_one_after_another": round(sum(hours.values()), 2)}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# mtseg GPU check: {env.get('gpu', 'CPU')}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "| training step (batch %d) | samples/s |" % report["batch_size"], "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in report["step_samples_per_second"].items()]
    if "pipeline_samples_per_second" in report:
        lines += ["", f"Pipeline: {report['pipeline_samples_per_second']:,.0f} samples/s, "
                      f"{report['pipeline_over_step']:.1f}x the fp32 step."]
    dense = report["dense_inference"]
    for name, run in (("fp32", dense), ("bf16 autocast", dense["bf16"])):
        lines += ["", f"Dense inference of {'x'.join(map(str, dense['shape']))} in {name}: {run['seconds']} s "
                      f"({run['voxels_per_second']:,} voxels/s)"
                      + ("." if run["peak_gpu_memory_gib"] is None else f", peak GPU memory {run['peak_gpu_memory_gib']} GiB.")]
    agreement = dense["bf16_against_fp32"]
    lines += ["", f"bf16 against fp32 dense inference ({'x'.join(map(str, agreement['shape']))}, a network with batch-norm "
                  f"statistics of random batches): probabilities differ by at most {agreement['max_probability_difference']} "
                  f"(mean {agreement['mean_probability_difference']}; tolerance {agreement['tolerance']}), "
                  f"{100 * agreement['same_label_fraction']:.2f} % of voxels get the same label."]
    if "sweep" in report:
        lines += ["", f"Short sweep ({report['sweep_minibatches']} mini-batches per task): {report['sweep']['wall_seconds']} s in all.", "",
                  "| experiment | steps | train s | eval s | steps/s | mean Dice |", "|---|---|---|---|---|---|"]
        lines += [f"| {e} | {r['steps']} | {r['train_seconds']} | {r['evaluation_seconds']} | {r['steps_per_second']} | {r['mean_dice']} |"
                  for e, r in report["sweep"]["runs"].items()]
        p = report["projection"]
        lines += ["", f"Projected paper schedule ({p['minibatches_per_task']:,} mini-batches per task), one experiment after "
                      f"another: {p['hours_in_all_one_after_another']} h."]
    if "concurrent" in report:
        c = report["concurrent"]
        lines += ["", f"The same sweep with {c['jobs_at_once']} experiments at once (Hydra's joblib launcher): {c['wall_seconds']} s, "
                      f"{c['speed-up_over_one_after_another']}x the speed of one after another."]
    return "\n".join(lines) + "\n"


def sweep_launcher(report: dict, gpu: str | None) -> list[str]:
    """The Hydra launcher overrides under which ``make sweep`` runs the seven experiments on GPU ``gpu``
    (``None``: no GPU): the experiments at once when this check, run on the same kind of GPU,
    measured that faster than one after another; none (one after another) otherwise."""
    together = report.get("concurrent")
    if gpu is None or report.get("environment", {}).get("gpu") != gpu or not together:
        return []
    if together["speed-up_over_one_after_another"] <= 1.0:
        return []
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={together['jobs_at_once']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtseg.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="auto", help="auto (the GPU when present), cuda or cpu")
    parser.add_argument("--batch-size", type=int, default=210)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per precision")
    parser.add_argument("--compile", action="store_true", help="also time bf16 with torch.compile of the stack")
    parser.add_argument("--pipeline-batches", type=int, default=50, help="mini-batches timed for the pipeline (0: skip)")
    parser.add_argument("--inference-shape", type=int, nargs=3, default=(256, 256, 256))
    parser.add_argument("--minibatches", type=int, default=200, help="mini-batches per task of the short sweep (0: skip)")
    parser.add_argument("--concurrent", type=int, default=7,
                        help="also run the short sweep with this many experiments at once on the device (joblib; 0: skip)")
    parser.add_argument("--launcher", action="store_true",
                        help="measure nothing: print the launcher overrides `make sweep` uses here, from --out's report")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the model, data and sweep (e.g. model.depth=3)")
    args = parser.parse_args(argv)
    started = time.time()
    if args.launcher:
        report_path = Path(args.out) / "gpu_check.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        print(" ".join(sweep_launcher(report, torch.cuda.get_device_name() if torch.cuda.is_available() else None)))
        return 0
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as training does on a GPU
    from omegaconf import OmegaConf

    cfg = train_config([f"training.batch_size={args.batch_size}", *args.overrides])
    model = OmegaConf.to_container(cfg.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(device), "batch_size": args.batch_size}
    print(json.dumps(report["environment"]), flush=True)
    precisions = [("fp32", "fp32", False), ("bf16", "bf16", False)] + ([("bf16+compile", "bf16", True)] if args.compile else [])
    report["step_samples_per_second"] = {
        name: round(step_rate(model, args.batch_size, args.steps, device, precision, compiled), 1)
        for name, precision, compiled in precisions
    }
    print(report["step_samples_per_second"], flush=True)
    if args.pipeline_batches:
        rate = pipeline_rate(cfg, args.pipeline_batches, device)
        report["pipeline_samples_per_second"] = round(rate, 1)
        report["pipeline_over_step"] = round(rate / report["step_samples_per_second"]["fp32"], 2)
        print(f"pipeline {rate:.0f} samples/s", flush=True)
    report["dense_inference"] = dense_inference(tuple(args.inference_shape), device, model)
    print(report["dense_inference"], flush=True)
    if args.minibatches:
        report["sweep_minibatches"] = args.minibatches
        report["sweep"] = short_sweep(out, args.minibatches, device, args.overrides)
        per_minibatch = {e: r["steps_per_minibatch"] for e, r in report["sweep"]["runs"].items()}
        report["projection"] = projection(report["sweep"]["runs"], per_minibatch)
        if args.concurrent > 1:
            together = short_sweep(out, args.minibatches, device, args.overrides, args.concurrent)
            report["concurrent"] = {
                "jobs_at_once": args.concurrent,
                "wall_seconds": together["wall_seconds"],
                "speed-up_over_one_after_another": round(report["sweep"]["wall_seconds"] / together["wall_seconds"], 2),
            }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    write_provenance(out, command_line("mtseg.gpu_check", argv), started)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
