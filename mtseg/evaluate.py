"""Evaluate a checkpoint on the test images of each of its tasks: ``python -m mtseg.evaluate ckpt_path=…``.

Writes to ``<run dir>/evaluation/<checkpoint name>/`` (or ``output_dir``): ``results.json``
(per task and class: mean and median Dice, PR thresholds, cross-task confusion),
``per_image.csv``, ``provenance.json`` (the command, commit, machine and date, and what the training
run recorded of itself), with ``variants=contrast`` ``variants.json`` and ``variants.md``
(:mod:`mtseg.evaluation.contrast_variants`), and ``predictions/<task>/<case_id>.nii.gz`` (task-local labels on each
input image's own grid). The PR thresholds are also written beside the checkpoint
(``<checkpoint>.thresholds.json``), where ``mtseg.predict`` finds them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtseg.checkpoint import LoadedCheckpoint, load_checkpoint, select_device, test_datamodule, thresholds_path
from mtseg.data.held_out import HeldOutImage
from mtseg.data.preprocessing import IMAGE, LABEL
from mtseg.evaluation.contrast_variants import VariantSpec, evaluate_variants, report_markdown, summarise, variant_specs, variant_tasks
from mtseg.evaluation.whole_image import EvaluationResult, WholeImageEvaluator
from mtseg.nifti import atomic_write_bytes, check_outputs, read_image, to_input_grid, write_like
from mtseg.runtime.provenance import command_line, write_provenance
from mtseg.runtime.signals import SIGTERM_EXIT, Terminated, sigterm_raises

log = logging.getLogger(__name__)
#: Whether the output folder existed before Hydra made it for this call (set when run as a command).
OUTPUT_EXISTED: bool | None = None


def evaluation_dir(ckpt_path: str, output_dir: str | None) -> str:
    """Default output folder: ``<run dir>/evaluation/<checkpoint name>`` for ``<run dir>/checkpoints/x.ckpt``."""
    if output_dir:
        return str(output_dir)
    path = Path(ckpt_path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return str(run_dir / "evaluation" / path.stem)


def evaluate_checkpoint(
    loaded: LoadedCheckpoint, datamodule, pr_thresholds: int, slab_voxels: int, keep_predictions: bool, device, surface_distances: bool
) -> EvaluationResult:
    """Whole-image evaluation of ``loaded`` on every test image of the data module."""
    evaluator = WholeImageEvaluator(loaded.label_space, pr_thresholds, keep_predictions, surface_distances)
    net = loaded.net.to(device)
    for task in loaded.label_space.tasks:
        for subject in datamodule.subjects[task]["test"]:
            log.info("Segmenting %s image %s", task, subject["case_id"])
            image = HeldOutImage.from_subject(subject)
            evaluator.add_volume(net, task, image.case_id, image.volume, image.reference, image.mask, slab_voxels, image.spacing, progress=None)
    return evaluator.compute()


def check_evaluation_outputs(out_dir: Path, loaded: LoadedCheckpoint, datamodule, write_predictions: bool, variants: bool = False) -> None:
    """Before any image is segmented: results of an earlier evaluation in ``out_dir`` may be replaced,
    an input (a test image or label, the checkpoint) never, whatever ``output_dir`` says."""
    outputs = [out_dir / "results.json", out_dir / "per_image.csv", out_dir / "provenance.json", thresholds_path(loaded.path)]
    if variants:
        outputs += [out_dir / "variants.json", out_dir / "variants.md"]
    inputs = {"checkpoint": loaded.path}
    for task in loaded.label_space.tasks:
        for subject in datamodule.subjects[task]["test"]:
            case = subject["case_id"]
            inputs |= {f"{task} test image {case}": subject[IMAGE].path, f"{task} test label {case}": subject[LABEL].path}
            if write_predictions:
                outputs.append(out_dir / "predictions" / task / f"{case}.nii.gz")
    check_outputs(outputs, {k: v for k, v in inputs.items() if v is not None}, overwrite=True)


def write_results(result: EvaluationResult, out_dir: Path, loaded: LoadedCheckpoint, datamodule, write_predictions: bool) -> dict:
    """results.json, per_image.csv and the predicted NIfTIs; returns the results dict."""
    results = {
        "checkpoint": str(loaded.path),
        "global_step": loaded.global_step,
        "minibatches_per_task": loaded.module.minibatches_per_task(loaded.global_step),  # the training mode's unit
        **result.to_dict(),
    }
    text = json.dumps(results, indent=2, allow_nan=False, default=lambda v: None)
    atomic_write_bytes(out_dir / "results.json", lambda tmp: Path(tmp).write_text(text))
    rows = result.rows()

    def write_csv(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_bytes(out_dir / "per_image.csv", write_csv)
    if write_predictions:
        for task, task_result in result.tasks.items():
            folder = out_dir / "predictions" / task
            folder.mkdir(parents=True, exist_ok=True)
            for subject, image_result in zip(datamodule.subjects[task]["test"], task_result.images):
                original = read_image(subject[IMAGE].path)
                labels = to_input_grid(image_result.prediction, subject[IMAGE].affine, original, label=True)
                write_like(labels.numpy(), original, folder / f"{image_result.case_id}.nii.gz", "uint8")
    return results


def training_run(checkpoint: Path) -> dict | None:
    """What the run that wrote ``checkpoint`` (``<run>/checkpoints/x.ckpt``) recorded of itself: its folder,
    overrides, training and evaluation seconds and where it ran (``summary.json``); ``None`` outside a run folder."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    summary, overrides = run / "summary.json", run / ".hydra" / "overrides.yaml"
    if not summary.is_file():
        return None
    try:
        recorded = json.loads(summary.read_text())
        listed = OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.is_file() else None
    except (ValueError, OSError) as error:
        log.warning("%s: not read (%s); provenance.json names no training run", summary, error)
        return None
    keys = ("experiment", "minibatches_per_task", "train_seconds", "evaluation_seconds", "intensity_baseline_dice", "provenance")
    return {"path": str(run), "overrides": listed, **{k: recorded.get(k) for k in keys}}


def evaluate(cfg: DictConfig) -> dict:
    started = time.time()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    loaded = load_checkpoint(cfg.ckpt_path)
    specs, variant_task_names = prepare_variants(cfg, loaded)
    datamodule = test_datamodule(loaded, cfg.data)
    check_evaluation_outputs(out_dir, loaded, datamodule, cfg.write_predictions, bool(specs))
    result = evaluate_checkpoint(
        loaded, datamodule, cfg.evaluation.pr_thresholds, cfg.evaluation.slab_voxels, cfg.write_predictions, select_device(cfg.device),
        cfg.surface_distances,
    )
    results = write_results(result, out_dir, loaded, datamodule, cfg.write_predictions)
    thresholds = result.thresholds()
    if thresholds:
        try:
            text = json.dumps({"thresholds": thresholds, "from": str(out_dir / "results.json")}, indent=2)
            atomic_write_bytes(thresholds_path(loaded.path), lambda tmp: Path(tmp).write_text(text))
        except OSError as error:
            log.warning("PR thresholds not stored beside the checkpoint (%s); they are in results.json", error)
    print(summary_lines(results))
    if specs:
        print(write_variant_results(cfg, loaded, datamodule, result, out_dir, specs, variant_task_names))
    write_provenance(out_dir, command_line("mtseg.evaluate"), started, training_run=training_run(loaded.path))
    print(f"Results in {out_dir}")
    return results


def variants_config(cfg: DictConfig) -> dict:
    """``cfg.variants`` as plain values (``conf/variants/<name>.yaml`` with the command line's overrides)."""
    return OmegaConf.to_container(cfg.variants, resolve=True)


def prepare_variants(cfg: DictConfig, loaded: LoadedCheckpoint) -> tuple[list[VariantSpec], list[str]]:
    """The test variants of ``cfg.variants`` and the tasks that get them (none without ``variants=``)."""
    if not cfg.get("variants"):
        return [], []
    config = variants_config(cfg)
    specs = variant_specs(config)
    tasks = variant_tasks(loaded.label_space.tasks, config.get("modalities") or [])
    if not tasks:
        raise ValueError(
            f"variants.modalities={config.get('modalities')}: none of the checkpoint's tasks {list(loaded.label_space.tasks)} is of these"
        )
    return specs, tasks


def write_variant_results(
    cfg: DictConfig, loaded: LoadedCheckpoint, datamodule, result: EvaluationResult, out_dir: Path, specs: list[VariantSpec], tasks: list[str]
) -> str:
    """``variants.json`` and ``variants.md``: the network on the test variants ``specs`` of ``tasks``' images
    (:mod:`mtseg.evaluation.contrast_variants`); returns the Markdown table."""
    original = {task: {cls: result.tasks[task].class_dice(cls)["mean"] for cls in result.tasks[task].classes} for task in tasks}
    per_variant = evaluate_variants(
        loaded, datamodule, specs, tasks, original, result.thresholds(), cfg.evaluation.pr_thresholds, cfg.evaluation.slab_voxels,
        select_device(cfg.device),
    )
    summary = summarise(per_variant)
    table = report_markdown(per_variant, summary)
    payload = {
        "checkpoint": str(loaded.path),
        "minibatches_per_task": loaded.module.minibatches_per_task(loaded.global_step),
        "variants_config": variants_config(cfg),
        "dice": per_variant,
        "summary": summary,
    }
    text = json.dumps(payload, indent=2, allow_nan=False, default=lambda v: None)
    atomic_write_bytes(out_dir / "variants.json", lambda tmp: Path(tmp).write_text(text))
    atomic_write_bytes(out_dir / "variants.md", lambda tmp: Path(tmp).write_text(table))
    return table


def summary_lines(results: dict) -> str:
    lines = [f"Whole-image evaluation of {results['checkpoint']} ({results['minibatches_per_task']:.0f} mini-batches per task)"]
    lines.append(
        f"{'task':<8} {'class':<28} {'mean Dice':>10} {'median':>8} {'HD95 mm':>8} {'ASSD mm':>8} {'threshold':>10} {'confusion %':>12}"
    )
    for task, task_result in results["tasks"].items():
        threshold = task_result.get("threshold")
        confusion = task_result.get("cross_task_confusion_percent", {}).get("median")
        for cls, values in task_result["classes"].items():
            mean, median, hd95, assd = (
                float("nan") if v is None else v
                for v in (values["mean_dice"], values["median_dice"], values.get("mean_hd95_mm"), values.get("mean_assd_mm"))
            )
            lines.append(
                f"{task:<8} {cls:<28} {mean:>10.3f} {median:>8.3f} {hd95:>8.2f} {assd:>8.2f} "
                f"{'argmax' if threshold is None else f'{threshold:.3f}':>10} "
                f"{'-' if confusion is None else f'{confusion:.4f}':>12}"
            )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with sigterm_raises():
            evaluate(cfg)
    except (ValueError, OSError) as error:  # bad input: a message, not a traceback
        print(f"mtseg.evaluate: error: {error}", file=sys.stderr)
        status = 1
    except Terminated:
        print("mtseg.evaluate: stopped by SIGTERM", file=sys.stderr)
        status = SIGTERM_EXIT
    else:
        return
    if OUTPUT_EXISTED is False:  # the output folder Hydra made for this call, if nothing was written
        with contextlib.suppress(OSError):
            out_dir.rmdir()
    sys.exit(status)


if __name__ == "__main__":
    # conf/evaluate.yaml names its output folder with this resolver; registered here, not on import
    OmegaConf.register_new_resolver("evaluation_dir", evaluation_dir, replace=True)
    given = dict(arg.split("=", 1) for arg in sys.argv[1:] if arg.split("=", 1)[0] in ("ckpt_path", "output_dir") and "=" in arg)
    output = given.get("output_dir")
    OUTPUT_EXISTED = Path(evaluation_dir(given.get("ckpt_path", ""), None if output in (None, "null") else output)).exists()
    main()
