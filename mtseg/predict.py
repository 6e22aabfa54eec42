"""Segment any 3-D NIfTI with a trained network.

``python -m mtseg.predict --checkpoint CKPT --input IN.nii.gz --output OUT.nii.gz [--probabilities DIR] [--task TASK]``

The network is never told the task. Without ``--task`` the image is first segmented at a
working grid that suits every task: the input's finest voxel spacing, isotropic, once per
distinct intensity preprocessing among the checkpoint's tasks (MRI and CT differ). In
each pass, among the tasks with that preprocessing, the task whose classes hold most of
the labelled foreground voxels is a candidate; its *dominance* is that share and its
*plausibility* how well the fraction of voxels it labels matches the task's training
images (``min(r, 1/r)``; a brain MR read as CT may be "all coronary artery" with
dominance 1 but 70 times the coronary fraction of a CTA). The recognised task is the
candidate with the highest dominance × plausibility. If the recognised task was trained at another spacing,
the image is segmented again with that task's own preprocessing, exactly as in training.
With ``--task`` only that task's preprocessing is used and no recognition is needed.

Output, all written atomically (nothing partial is left on failure):

- ``OUT.nii.gz``: the recognised task's labels (0 background, 1.. its classes, as in
  its training label maps) on the input's exact grid (same shape, same affine);
  voxels whose highest-activation class belongs to another task are background;
  for tasks evaluated at a PR threshold the foreground is ``probability >= threshold``,
  with the threshold found by ``mtseg.evaluate`` (``<checkpoint>.thresholds.json``) or
  else the one stored in the checkpoint at training time;
- ``OUT.json`` beside it: recognised task, dominance, confidence, the threshold used,
  label names and voxel counts;
- ``--probabilities DIR``: one float32 NIfTI per output class, on the input's grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from omegaconf import OmegaConf

from mtseg import CONFIG_DIR
from mtseg.checkpoint import LoadedCheckpoint, instantiate_checked, load_checkpoint, select_device, threshold_for, thresholds_path
from mtseg.data.preprocessing import IMAGE, INPLANE, SAMPLING_MASK, build_preprocessing
from mtseg.data.triplanar import TriplanarVolume
from mtseg.inference import segment_volume
from mtseg.nifti import (
    ImageLimits,
    atomic_write_bytes,
    check_outputs,
    check_writable,
    check_writable_folder,
    read_image,
    to_input_grid,
    write_like,
)
from mtseg.signals import SIGTERM_EXIT, Terminated, sigterm_raises
from mtseg.tasks import TASKS

log = logging.getLogger("mtseg.predict")


def sidecar_path(output: Path) -> Path:
    """``OUT.json`` for ``OUT.nii.gz`` or ``OUT.nii``."""
    name = output.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return output.with_name(stem + ".json")


@dataclass
class Pass:
    """One dense segmentation of the input at one working grid and intensity preprocessing."""

    tasks: tuple[str, ...]
    spacing: float | str
    affine: np.ndarray
    labels: torch.Tensor
    probabilities: dict[int, torch.Tensor]  # output channel -> probability volume, for the kept channels
    foreground_per_task: dict[str, int] = field(default_factory=dict)
    n_voxels: int = 0

    @property
    def foreground(self) -> int:
        return sum(self.foreground_per_task.values())

    def plausibility(self, task: str, expected: dict[str, float]) -> float:
        """How well the fraction of voxels labelled ``task`` matches its training images:
        ``min(r, 1/r)`` for the ratio ``r`` of the two fractions (1 when nothing is known)."""
        if not expected.get(task) or not self.n_voxels:
            return 1.0
        observed = self.foreground_per_task.get(task, 0) / self.n_voxels
        if observed == 0:
            return 0.0
        ratio = observed / expected[task]
        return min(ratio, 1 / ratio)

    def recognise(self, expected: dict[str, float]) -> tuple[str | None, float, float]:
        """Among the tasks whose preprocessing this pass used, the most likely one: the task
        whose classes hold most labelled foreground voxels, scored by its share of them (the
        dominance) times its plausibility. Returns (task, dominance, plausibility)."""
        if self.foreground == 0:
            return None, 0.0, 0.0
        scored = {t: self.foreground_per_task.get(t, 0) / self.foreground * self.plausibility(t, expected) for t in self.tasks}
        task = max(scored, key=scored.get)
        if self.foreground_per_task.get(task, 0) == 0:
            return None, 0.0, 0.0
        return task, self.foreground_per_task[task] / self.foreground, self.plausibility(task, expected)

    def counts_only(self) -> Pass:
        """This pass without its volumes (kept for the report once recognition is done)."""
        return Pass(self.tasks, self.spacing, self.affine, torch.empty(0), {}, dict(self.foreground_per_task), self.n_voxels)


def _preprocessing_key(config: dict) -> str:
    """Tasks whose intensity preprocessing is the same share one recognition pass."""
    return json.dumps({k: v for k, v in config.items() if k != "spacing"}, sort_keys=True, default=str)


def run_pass(
    loaded: LoadedCheckpoint,
    image: tio.ScalarImage,
    tasks: tuple[str, ...],
    spacing: float | str,
    channels: list[int] | None,
    device: torch.device,
    slab_voxels: int,
    limits: ImageLimits,
    thresholds: dict[str, float] | None = None,
) -> Pass | None:
    """Preprocess ``image`` as ``tasks[0]`` was in training, at ``spacing``, and segment it densely.

    ``None`` when no voxel is above the task's threshold (nothing to segment with this preprocessing).
    """
    config = loaded.meta["preprocessing"][tasks[0]]
    target = resolved_spacing(spacing, image)
    extent = np.asarray(image.spacing) * np.asarray(image.spatial_shape)
    limits.check_grid(
        int(np.prod(np.ceil(extent / target), dtype=np.float64)),
        f"{image.path}: resampled to {target:g} mm for task {tasks[0]}, the working grid",
    )
    intensity = [instantiate_checked(t, f"{loaded.path} (preprocessing of {tasks[0]})") for t in config.get("intensity", [])]
    subject = tio.Subject({IMAGE: tio.ScalarImage(tensor=image.data, affine=image.affine)})  # TorchIO copies it
    prepared = build_preprocessing(spacing, config["threshold"], intensity)(subject)
    volume = TriplanarVolume(prepared[IMAGE].data[0], loaded.net.depth, float(loaded.meta["pad_value"]))
    mask = prepared[SAMPLING_MASK].data[0].bool()
    if not mask.any():
        log.info("No voxel above the threshold of %s's preprocessing (%g): skipped", tasks[0], config["threshold"])
        return None
    log.info(
        "Segmenting at %s mm (%s preprocessing), %d x %d x %d voxels",
        spacing if isinstance(spacing, str) else f"{spacing:.3g}", tasks[0], *volume.shape,
    )
    segmentation = segment_volume(loaded.net.to(device), volume, mask, channels, progress=None, slab_voxels=slab_voxels)
    space = loaded.label_space
    counts = torch.bincount(segmentation.labels.flatten(), minlength=space.n_classes)
    per_task = {t: int(counts[space.task_classes(t)[1:]].sum()) for t in space.tasks}
    kept = {} if segmentation.probabilities is None else dict(zip(segmentation.channels, segmentation.probabilities))
    # a task evaluated at a PR threshold counts the voxels its output would label, not its argmax
    for t, threshold in (thresholds or {}).items():
        channel = space.task_classes(t)[1]
        if channel in kept:
            per_task[t] = int((kept[channel] >= threshold).sum())
    return Pass(tasks, spacing, prepared[IMAGE].affine, segmentation.labels, kept, per_task, segmentation.labels.numel())


def output_paths(args: argparse.Namespace, space) -> list[Path]:
    """Every file predict writes: the label map, its sidecar and the probability maps."""
    output = Path(args.output)
    paths = [output, sidecar_path(output)]
    if args.probabilities:
        paths += [Path(args.probabilities) / f"{name}.nii.gz" for name in space.class_names]
    return paths


def predict(args: argparse.Namespace) -> dict:
    """Segment ``args.input``; write the label map, the sidecar and optionally probabilities."""
    output = check_writable(args.output)  # the sidecar goes into the same folder
    sidecar = sidecar_path(output)
    limits = ImageLimits.load(max_voxels=args.max_voxels)
    image = read_image(args.input, limits)
    loaded = load_checkpoint(args.checkpoint)
    space = loaded.label_space
    inputs = {"input image": Path(args.input), "checkpoint": loaded.path, "thresholds file": thresholds_path(loaded.path)}
    check_outputs(output_paths(args, space), inputs, args.overwrite)
    if args.task is not None and args.task not in space.tasks:
        raise ValueError(f"--task {args.task}: the network was trained for {', '.join(space.tasks)} only")
    check_contrast(image)
    device = select_device(args.device)
    created_probability_dir = bool(args.probabilities) and not Path(args.probabilities).exists()
    probability_dir = check_writable_folder(args.probabilities) if args.probabilities else None
    try:
        report = _segment_and_write(args, loaded, image, device, output, sidecar, probability_dir, limits)
    except BaseException:
        if created_probability_dir and probability_dir.is_dir() and not any(probability_dir.iterdir()):
            probability_dir.rmdir()
        raise
    return report


def check_contrast(image: tio.ScalarImage) -> None:
    """Refuse an image whose intensities cannot be normalised: every voxel the same value."""
    low, high = float(image.data.min()), float(image.data.max())
    if low == high:
        raise ValueError(
            f"{image.path}: all {image.data.numel():,d} voxels have intensity {low:g}: no contrast to normalise or segment"
        )


def working_spacing(image: tio.ScalarImage, trained_spacings: list[float | str]) -> float:
    """The recognition grid: isotropic at the input's finest spacing, kept within the range of
    the spacings the network was trained at (a bogus 0.01 mm header cannot blow up the volume)."""
    finest = round(float(min(image.spacing)), 6)  # headers store float32 spacings
    numeric = [float(s) for s in trained_spacings if s != INPLANE]
    if numeric:
        finest = min(max(finest, min(numeric)), max(numeric)) if finest > 0 else min(numeric)
    return finest


def resolved_spacing(trained: float | str, image: tio.ScalarImage) -> float:
    """A task's training spacing for this image (``"inplane"``: the image's finest spacing)."""
    return round(float(min(image.spacing)), 6) if trained == INPLANE else float(trained)


def _nothing_above_threshold(loaded: LoadedCheckpoint, image: tio.ScalarImage, tasks) -> ValueError:
    thresholds = ", ".join(f"{t} {loaded.meta['preprocessing'][t]['threshold']:g}" for t in tasks)
    return ValueError(
        f"{image.path}: no voxel has an intensity above the threshold of {'any task' if len(tasks) > 1 else 'task ' + tasks[0]} "
        f"(intensities {float(image.data.min()):g} .. {float(image.data.max()):g}; thresholds: {thresholds}): nothing to segment"
    )


def _segment_and_write(args, loaded: LoadedCheckpoint, image: tio.ScalarImage, device, output: Path, sidecar: Path, probability_dir, limits: ImageLimits):
    space = loaded.label_space
    spacings = {t: loaded.meta["preprocessing"][t]["spacing"] for t in space.tasks}
    # probabilities kept: every channel for --probabilities, else the foreground of each
    # task evaluated at a PR threshold (one channel each)
    channels = None if args.probabilities else [
        space.task_classes(t)[1] for t in space.tasks if TASKS[t].operating_point == "pr_threshold"
    ]
    thresholds = {t: v for t in space.tasks if TASKS[t].operating_point == "pr_threshold" for v in [threshold_for(loaded, t)[0]] if v is not None}
    # how much of a training image each task's foreground filled (absent from older checkpoints)
    expected = dict(loaded.meta.get("foreground_fraction") or {})
    candidates: list[Pass] = []
    if args.task is None:
        groups: dict[str, list[str]] = {}
        for task in space.tasks:
            groups.setdefault(_preprocessing_key(loaded.meta["preprocessing"][task]), []).append(task)
        spacing = working_spacing(image, list(spacings.values()))
        for tasks in groups.values():
            found_pass = run_pass(loaded, image, tuple(tasks), spacing, channels, device, args.slab_voxels, limits, thresholds)
            if found_pass is not None:
                candidates.append(found_pass)
        if not candidates:
            raise _nothing_above_threshold(loaded, image, space.tasks)
        scores = [p.recognise(expected) for p in candidates]
        index = max(range(len(candidates)), key=lambda i: (scores[i][1] * scores[i][2], candidates[i].foreground))
        best = candidates[index]
        task, dominance, plausibility = scores[index]
        recognised = task is not None
        if task is None:
            task = best.tasks[0]
        final = best
        target = resolved_spacing(spacings[task], image)
        # segmented again with the task's own preprocessing when the pass used another
        # spacing or another task's intensity preprocessing
        if task not in best.tasks or abs(target - spacing) > 0.01 * target:
            final = run_pass(loaded, image, (task,), spacings[task], channels, device, args.slab_voxels, limits, thresholds)
            if final is None:
                raise _nothing_above_threshold(loaded, image, (task,))
            found, final_dominance, final_plausibility = final.recognise(expected)
            if found == task:
                dominance, plausibility = final_dominance, final_plausibility
        candidates = [c.counts_only() for c in candidates]  # free their volumes
    else:
        task = args.task
        final = run_pass(loaded, image, (task,), spacings[task], channels, device, args.slab_voxels, limits, thresholds)
        if final is None:
            raise _nothing_above_threshold(loaded, image, (task,))
        found, dominance, plausibility = final.recognise(expected)
        recognised = False
        if found != task:
            dominance, plausibility = 0.0, final.plausibility(task, expected)

    foreground_percent = 100.0 * final.foreground / final.labels.numel()
    low_confidence = (
        dominance < args.min_dominance
        or foreground_percent < args.min_foreground_percent
        or plausibility < args.min_plausibility
    )
    spec = TASKS[task]
    threshold, threshold_source = (None, "not used (argmax)")
    if spec.operating_point == "pr_threshold":
        threshold, threshold_source = threshold_for(loaded, task)
    if threshold is not None:
        local = (final.probabilities[space.task_classes(task)[1]] >= threshold).to(torch.uint8)
    else:
        local = space.to_local(task)[final.labels.long()]
    labels = to_input_grid(local, final.affine, image, label=True)

    counts = torch.bincount(labels.flatten().long(), minlength=spec.n_classes).tolist()
    report = {
        "input": str(Path(args.input)),
        "checkpoint": str(loaded.path),
        "experiment": space.experiment,
        "task": task,
        "task_given": args.task is not None,
        "recognised": recognised,
        "dominance": round(dominance, 6),
        "plausibility": round(plausibility, 6),
        "training_foreground_percent": None if task not in expected else round(100 * expected[task], 6),
        "foreground_percent": round(foreground_percent, 6),
        "low_confidence": low_confidence,
        "working_spacing_mm": resolved_spacing(final.spacing, image),
        "preprocessing_of": final.tasks[0],
        "threshold": threshold,
        "threshold_from": threshold_source,
        "labels": {str(i): name for i, name in enumerate(("background",) + spec.classes)},
        "voxels_per_label": {str(i): c for i, c in enumerate(counts)},
        "recognition_passes": [
            {"preprocessing_of": list(p.tasks), "spacing_mm": p.spacing, "voxels": p.n_voxels,
             "foreground_voxels_per_task": p.foreground_per_task,
             "recognised": dict(zip(("task", "dominance", "plausibility"), p.recognise(expected)))}
            for p in candidates
        ],
    }
    written: list[Path] = []
    try:
        if probability_dir is not None:
            for channel, name in enumerate(space.class_names):
                path = probability_dir / f"{name}.nii.gz"
                values = to_input_grid(final.probabilities[channel], final.affine, image, label=False)
                written.append(path)  # before writing: a signal may arrive between the write and the append
                write_like(values.numpy(), image, path, "float32")
        text = json.dumps(report, indent=2)
        written.append(sidecar)
        atomic_write_bytes(sidecar, lambda tmp: Path(tmp).write_text(text))
        written.append(output)
        write_like(labels.numpy(), image, output, "uint8")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return report


def describe(report: dict) -> str:
    how = "given (--task)" if report["task_given"] else ("recognised" if report["recognised"] else "not recognised")
    lines = [
        f"Task: {report['task']} ({how}; dominance {100 * report['dominance']:.2f} % of labelled foreground voxels, "
        f"foreground {report['foreground_percent']:.3f} % of the image"
        + ("" if report["training_foreground_percent"] is None else f" vs {report['training_foreground_percent']:.3f} % in training")
        + f", plausibility {report['plausibility']:.2f})",
    ]
    if report["low_confidence"]:
        lines.append(
            "WARNING: low confidence: the image may be of a modality or anatomy this network was not trained on "
            f"(trained for: {report['experiment'].replace('_', ', ')})."
        )
    if report["threshold"] is not None:
        lines.append(f"Threshold {report['threshold']:.3f} from {report['threshold_from']}")
    counts = ", ".join(f"{report['labels'][k]} {v}" for k, v in report["voxels_per_label"].items())
    lines.append(f"Voxels per label: {counts}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    defaults = OmegaConf.load(CONFIG_DIR / "predict.yaml")
    p = argparse.ArgumentParser(prog="python -m mtseg.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint written by mtseg.train (checkpoints/*.ckpt)")
    p.add_argument("--input", required=True, help="3-D NIfTI image, any orientation and voxel spacing")
    p.add_argument("--output", required=True, help="label map to write (.nii.gz), on the input's grid")
    p.add_argument("--probabilities", metavar="DIR", help="also write one probability map per class into DIR")
    p.add_argument("--task", help="pin the task (its preprocessing is used; no recognition)")
    p.add_argument("--device", default=defaults.device, help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--slab-voxels", type=int, default=defaults.slab_voxels,
                   help="voxels per slab of dense inference: memory (about 400 bytes each) vs speed (default: %(default)s)")
    p.add_argument("--min-dominance", type=float, default=defaults.min_dominance,
                   help="below this share of foreground voxels in one task, report low confidence (default: %(default)s)")
    p.add_argument("--min-plausibility", type=float, default=defaults.min_plausibility,
                   help="below this agreement of the task's foreground fraction with its training images, "
                        "report low confidence (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("--max-voxels", type=int, default=None,
                   help=f"refuse inputs and working grids of more voxels (default: {ImageLimits.load().max_voxels:,d}, conf/limits.yaml)")
    p.add_argument("--min-foreground-percent", type=float, default=defaults.min_foreground_percent,
                   help="below this foreground percentage, report low confidence (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        with sigterm_raises():
            report = predict(args)
    except (ValueError, OSError) as error:  # FileNotFoundError and PermissionError included
        print(f"mtseg.predict: error: {error}", file=sys.stderr)
        return 1
    except Terminated:
        print("mtseg.predict: stopped by SIGTERM; nothing written", file=sys.stderr)
        return SIGTERM_EXIT
    except KeyboardInterrupt:
        print("mtseg.predict: interrupted; nothing written", file=sys.stderr)
        return 130
    print(describe(report))
    print(f"Wrote {args.output} and {sidecar_path(Path(args.output))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
