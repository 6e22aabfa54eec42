"""Segmenting a scan with a trained network: the Python API behind ``python -m mtseg.predict``.

.. code-block:: python

    from mtseg import Segmenter

    segmenter = Segmenter.from_checkpoint("outputs/runs/brain_breast_cta/<date_time>/checkpoints/last.ckpt")
    result = segmenter.segment("scan.nii.gz")  # a path, a nibabel image, a tio.ScalarImage or tio.Subject
    print(result.task, result.recognition["dominance"], result.low_confidence)
    result.save("scan_seg.nii.gz")  # labels on the input's grid, and scan_seg.json

A :class:`Segmenter` holds everything between a checkpoint and a label map: the network on
its device, each task's preprocessing as in training, task recognition
(:mod:`mtseg.inference.recognition`) when no task is given, dense inference, the paper's operating
point (:func:`mtseg.evaluation.operating_point.task_labels`) and the way back to the input's grid.

If the recognised task was trained at another spacing than the recognition pass used, the
image is segmented again with that task's own preprocessing, exactly as in training. The
labels are the task's own (0 background, 1.. its classes, as in its training label maps) on
the input's exact grid (same shape, same affine); voxels whose highest-activation class
belongs to another task are background; for tasks evaluated at a PR threshold the
foreground is ``probability >= threshold``, with the threshold found by ``mtseg.evaluate``
(``<checkpoint>.thresholds.json``) or else the one stored in the checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from mtseg.checkpoint import LoadedCheckpoint, instantiate_checked, load_checkpoint, select_device, threshold_for, thresholds_path
from mtseg.data.preprocessing import IMAGE, SAMPLING_MASK, build_preprocessing, negative_fraction
from mtseg.data.triplanar import TriplanarVolume
from mtseg.defaults import conf_defaults
from mtseg.inference.dense import inference_dtype, segment_volume
from mtseg.image_input import checked_image, image_name
from mtseg.nifti import ImageLimits, atomic_write_all, check_outputs, check_writable, check_writable_folder, nifti_writer, to_input_grid
from mtseg.evaluation.operating_point import task_labels, thresholded
from mtseg.settings import PREDICT_RULES, check_settings
from mtseg.inference.recognition import Pass, intensity_agreement, preprocessing_key, resolved_spacing, working_spacing
from mtseg.tasks import TASKS

log = logging.getLogger("mtseg.inference.segmenter")


def sidecar_path(output: str | Path) -> Path:
    """``OUT.json`` for ``OUT.nii.gz`` or ``OUT.nii``."""
    output = Path(output)
    name = output.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return output.with_name(stem + ".json")


@dataclass
class Segmentation:
    """A segmented scan.

    Attributes:
        image: The input image (its grid is the output's).
        labels: ``(X, Y, Z)`` uint8 task-local labels on the input's grid.
        task: The task the labels are of.
        recognition: What the sidecar ``OUT.json`` holds: task, whether it was recognised or given,
            dominance, plausibility, intensity agreement, foreground percentage, low confidence, working spacing,
            threshold and its source, label names, voxel counts, the recognition passes.
        class_names: The network's output channels (names of the probability maps).
        working: The final pass on the working grid (its probabilities are resampled on demand).
        inputs: The files the segmentation read (image, checkpoint, thresholds): never written.
    """

    image: tio.ScalarImage
    labels: torch.Tensor
    task: str
    recognition: dict
    class_names: tuple[str, ...]
    working: Pass
    inputs: dict[str, Path]

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    @property
    def low_confidence(self) -> bool:
        return bool(self.recognition["low_confidence"])

    @property
    def probabilities(self) -> dict[str, torch.Tensor] | None:
        """Every output channel's probability on the input's grid (``segment(probabilities=True)`` only);
        each map costs 4 bytes per voxel: :meth:`save` writes them one at a time instead."""
        if len(self.working.probabilities) < len(self.class_names):
            return None
        return {name: self.probability(channel) for channel, name in enumerate(self.class_names)}

    def probability(self, channel: int) -> torch.Tensor:
        """The probability of output ``channel`` on the input's grid (linear interpolation)."""
        return to_input_grid(self.working.probabilities[channel], self.working.affine, self.image, label=False)

    def save(self, path: str | Path, probabilities: str | Path | None = None, overwrite: bool = False) -> list[Path]:
        """Write the label map (uint8, the input's affine), its sidecar ``OUT.json`` and, with
        ``probabilities``, one float32 map per output channel into that folder.

        All is checked before anything is written (an output never replaces an input: the image,
        the checkpoint, its thresholds file; an existing output only with ``overwrite``). Every
        file is first written under a temporary name and all are renamed at the end, so a failure
        or signal leaves neither a partial set nor a temporary file, and earlier outputs whole.
        Returns the written paths.
        """
        path = check_writable(path)  # a NIfTI name in an existing, writable folder
        folder = None if probabilities is None else Path(probabilities)
        if folder is not None and folder.exists() and not folder.is_dir():
            raise ValueError(f"probabilities folder {folder} is a file, not a folder")
        maps = [] if folder is None else [folder / f"{name}.nii.gz" for name in self.class_names]
        check_outputs([path, sidecar_path(path), *maps], self.inputs, overwrite)
        if maps and len(self.working.probabilities) < len(self.class_names):
            raise ValueError("probability maps were not kept: segment the image with probabilities=True")
        text = json.dumps(self.recognition, indent=2)
        # each probability map is resampled when it is written, one at a time
        writes = [(m, nifti_writer(lambda c=c: self.probability(c).numpy(), self.image, "float32")) for c, m in enumerate(maps)]
        writes += [(sidecar_path(path), lambda tmp: Path(tmp).write_text(text)), (path, nifti_writer(self.labels.numpy(), self.image, "uint8"))]
        created = folder is not None and not folder.exists()
        try:
            if folder is not None:
                check_writable_folder(folder)
            atomic_write_all(writes)
        except BaseException:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise
        return [p for p, _ in writes]

    def describe(self) -> str:
        """What ``mtseg.predict`` prints: the task and how it was found, confidence, threshold, voxels per label."""
        report = self.recognition
        how = "given (--task)" if report["task_given"] else ("recognised" if report["recognised"] else "not recognised")
        lines = [
            f"Task: {report['task']} ({how}; dominance {100 * report['dominance']:.2f} % of labelled foreground voxels, "
            f"foreground {report['foreground_percent']:.3f} % of the image"
            + ("" if report["training_foreground_percent"] is None else f" vs {report['training_foreground_percent']:.3f} % in training")
            + f", plausibility {report['plausibility']:.2f}, intensity agreement {report['intensity_agreement']:.2f})",
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


def default_settings() -> dict:
    """``conf/predict.yaml``, with ``slab_voxels`` of dense inference as in evaluation (``conf/evaluation/whole_image.yaml``)."""
    return {**conf_defaults("predict.yaml"), "slab_voxels": conf_defaults("evaluation/whole_image.yaml")["slab_voxels"]}


class Segmenter:
    """A trained network ready to segment scans of any of its tasks.

    Args:
        loaded: The checkpoint (:func:`mtseg.checkpoint.load_checkpoint`).
        device: ``"auto"`` (the GPU when present), ``"cpu"`` or ``"cuda"``.
        **settings: Any key of ``conf/predict.yaml`` (``slab_voxels``, ``precision``, ``min_dominance``,
            ``min_plausibility``, ``min_intensity_agreement``, ``min_foreground_percent``) and ``max_voxels``
            (``conf/limits.yaml``); ``None`` keeps the default.
    """

    def __init__(self, loaded: LoadedCheckpoint, device: str | None = None, **settings):
        defaults = default_settings()
        unknown = set(settings) - set(defaults) - {"max_voxels"}
        if unknown:
            raise TypeError(f"unknown Segmenter setting(s) {sorted(unknown)}; known: {sorted(defaults)} and max_voxels")
        self.settings = {**defaults, **{k: v for k, v in settings.items() if v is not None and k != "max_voxels"}}
        check_settings({**self.settings, "max_voxels": settings.get("max_voxels")}, PREDICT_RULES)
        self.limits = ImageLimits.load(max_voxels=settings.get("max_voxels"))
        self.loaded = loaded
        self.device = select_device(device or self.settings["device"])
        inference_dtype(self.settings["precision"], self.device)  # an unknown precision is refused here
        self.net = loaded.net.to(self.device)
        self.space = loaded.label_space
        self.spacings = {t: loaded.meta["preprocessing"][t]["spacing"] for t in self.space.tasks}
        # how much of a training image each task's foreground filled (absent from older checkpoints)
        self.expected = dict(loaded.meta.get("foreground_fraction") or {})
        # the range of the share of a training image's stored intensities clearly below 0 (likewise)
        self.negative_ranges = {t: tuple(r) for t, r in (loaded.meta.get("negative_fraction_range") or {}).items()}
        self.thresholds = {t: threshold_for(loaded, t) for t in self.space.tasks if thresholded(t)}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, **settings) -> Segmenter:
        """Load ``path`` (weights only, checked) and build a segmenter on ``device``."""
        return cls(load_checkpoint(path), device, **settings)

    @property
    def inputs(self) -> dict[str, Path]:
        """The files a segmentation reads besides the image: outputs must never replace them."""
        return {"checkpoint": self.loaded.path, "thresholds file": thresholds_path(self.loaded.path)}

    def segment(self, image, task: str | None = None, probabilities: bool = False) -> Segmentation:
        """Segment ``image``; recognise its task unless ``task`` is given.

        Args:
            image: A NIfTI path, a nibabel image, a ``tio.ScalarImage`` or a ``tio.Subject`` holding one (3-D);
                whatever its type, its geometry is checked before its voxels are read (:mod:`mtseg.image_input`).
            task: Pin the task (its preprocessing is used; no recognition).
            probabilities: Keep every output channel's probability (for :meth:`Segmentation.save`'s maps).

        Raises:
            TypeError: ``image`` of another type.
            ValueError: An unreadable or malformed image, one without contrast or without any
                voxel above the tasks' thresholds, a working grid above ``max_voxels``, or a
                task the network was not trained for.
        """
        image = checked_image(image, self.limits)
        given = task is not None
        if given and task not in self.space.tasks:
            raise ValueError(f"--task {task}: the network was trained for {', '.join(self.space.tasks)} only")
        low, high = float(image.data.min()), float(image.data.max())
        if low == high:
            raise ValueError(f"{image_name(image)}: all {image.data.numel():,d} voxels have intensity {low:g}: no contrast to normalise or segment")
        # kept: every channel for the probability maps, else the foreground of each thresholded task
        channels = None if probabilities else [self.space.task_classes(t)[1] for t in self.space.tasks if thresholded(t)]
        thresholds = {t: v for t, (v, _) in self.thresholds.items() if v is not None}
        negative = negative_fraction(image.data)  # for each pass's intensity agreement
        if task is None:
            final, task, recognised, dominance, plausibility, passes = self._recognise(image, channels, thresholds, negative)
        else:
            final = self._pass(image, (task,), self.spacings[task], channels, thresholds, negative, required=True)
            found, dominance, plausibility = final.recognise(self.expected)
            recognised, passes = False, []
            if found != task:
                dominance, plausibility = 0.0, final.plausibility(task, self.expected)
        threshold, source = self.thresholds.get(task, (None, "not used (argmax)"))
        channel = self.space.task_classes(task)[1]
        local = task_labels(self.space, task, final.labels, final.probabilities.get(channel), threshold)
        labels = to_input_grid(local, final.affine, image, label=True)
        agreement = intensity_agreement(negative, self.negative_ranges.get(task))  # with the task's own training images
        report = self._report(image, task, given, recognised, dominance, plausibility, agreement, final, threshold, source, labels, passes)
        inputs = {**({"input image": Path(image.path)} if image.path is not None else {}), **self.inputs}
        return Segmentation(image, labels, task, report, self.space.class_names, final, inputs)

    def _recognise(self, image, channels, thresholds, negative: float):
        groups: dict[str, list[str]] = {}
        for t in self.space.tasks:
            groups.setdefault(preprocessing_key(self.loaded.meta["preprocessing"][t]), []).append(t)
        spacing = working_spacing(image, list(self.spacings.values()))
        candidates = [
            p for tasks in groups.values() if (p := self._pass(image, tuple(tasks), spacing, channels, thresholds, negative)) is not None
        ]
        if not candidates:
            raise self._nothing_above_threshold(image, self.space.tasks)
        index = max(range(len(candidates)), key=lambda i: (candidates[i].score(self.expected), candidates[i].foreground))
        best = candidates[index]
        task, dominance, plausibility = best.recognise(self.expected)
        recognised = task is not None
        task = task if recognised else best.tasks[0]
        final = best
        target = resolved_spacing(self.spacings[task], image)
        # segmented again with the task's own preprocessing when the pass used another spacing
        # or another task's intensity preprocessing
        if task not in best.tasks or abs(target - spacing) > 0.01 * target:
            final = self._pass(image, (task,), self.spacings[task], channels, thresholds, negative, required=True)
            found, final_dominance, final_plausibility = final.recognise(self.expected)
            if found == task:
                dominance, plausibility = final_dominance, final_plausibility
        return final, task, recognised, dominance, plausibility, [c.counts_only() for c in candidates]

    def _nothing_above_threshold(self, image: tio.ScalarImage, tasks) -> ValueError:
        thresholds = ", ".join(f"{t} {self.loaded.meta['preprocessing'][t]['threshold']:g}" for t in tasks)
        return ValueError(
            f"{image_name(image)}: no voxel has an intensity above the threshold of {'any task' if len(tasks) > 1 else 'task ' + tasks[0]} "
            f"(intensities {float(image.data.min()):g} .. {float(image.data.max()):g}; thresholds: {thresholds}): nothing to segment"
        )

    def _pass(self, image, tasks: tuple[str, ...], spacing, channels, thresholds, negative: float, required: bool = False) -> Pass | None:
        """Preprocess ``image`` as ``tasks[0]`` was in training, at ``spacing``, and segment it densely;
        ``negative`` is the image's share of intensities clearly below 0 (for the intensity agreement).

        ``None`` when no voxel is above the task's threshold (an error if ``required``).
        """
        config = self.loaded.meta["preprocessing"][tasks[0]]
        target = resolved_spacing(spacing, image)
        extent = np.asarray(image.spacing) * np.asarray(image.spatial_shape)
        self.limits.check_grid(
            int(np.prod(np.ceil(extent / target), dtype=np.float64)),
            f"{image_name(image)}: resampled to {target:g} mm for task {tasks[0]}, the working grid",
        )
        where = f"{self.loaded.path} (preprocessing of {tasks[0]})"
        intensity = [instantiate_checked(t, where) for t in config.get("intensity", [])]
        subject = tio.Subject({IMAGE: tio.ScalarImage(tensor=image.data, affine=image.affine)})  # TorchIO copies it
        prepared = build_preprocessing(spacing, config["threshold"], intensity, self.limits)(subject)
        mask = prepared[SAMPLING_MASK].data[0].bool()
        if not mask.any():
            if required:
                raise self._nothing_above_threshold(image, tasks)
            log.info("No voxel above the threshold of %s's preprocessing (%g): skipped", tasks[0], config["threshold"])
            return None
        ranges = [self.negative_ranges[t] for t in tasks if t in self.negative_ranges]
        # the pass's tasks together (unknown unless each has a range)
        trained = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if len(ranges) == len(tasks) else None
        agreement = intensity_agreement(negative, trained)
        volume = TriplanarVolume(prepared[IMAGE].data[0], self.net.depth, float(self.loaded.meta["pad_value"]))
        log.info("Segmenting at %s mm (%s preprocessing), %d x %d x %d voxels",
                 spacing if isinstance(spacing, str) else f"{spacing:.3g}", tasks[0], *volume.shape)
        segmentation = segment_volume(self.net, volume, mask, channels, progress=None, slab_voxels=self.settings["slab_voxels"],
                                      precision=self.settings["precision"])
        counts = torch.bincount(segmentation.labels.flatten(), minlength=self.space.n_classes)
        per_task = {t: int(counts[self.space.task_classes(t)[1:]].sum()) for t in self.space.tasks}
        kept = {} if segmentation.probabilities is None else dict(zip(segmentation.channels, segmentation.probabilities))
        # a task evaluated at a PR threshold counts the voxels its output would label, not its argmax
        for t, threshold in thresholds.items():
            channel = self.space.task_classes(t)[1]
            if channel in kept:
                per_task[t] = int((kept[channel] >= threshold).sum())
        return Pass(tasks, spacing, prepared[IMAGE].affine, segmentation.labels, kept, per_task, segmentation.labels.numel(), agreement)

    def _report(self, image, task, given, recognised, dominance, plausibility, agreement, final: Pass, threshold, source, labels, passes) -> dict:
        spec = TASKS[task]
        foreground_percent = 100.0 * final.foreground / final.labels.numel()
        s = self.settings
        counts = torch.bincount(labels.flatten().long(), minlength=spec.n_classes).tolist()
        return {
            "input": None if image.path is None else str(image.path),
            "checkpoint": str(self.loaded.path),
            "experiment": self.space.experiment,
            "task": task,
            "task_given": given,
            "recognised": recognised,
            "dominance": round(dominance, 6),
            "plausibility": round(plausibility, 6),
            "intensity_agreement": round(agreement, 6),
            "training_foreground_percent": None if task not in self.expected else round(100 * self.expected[task], 6),
            "foreground_percent": round(foreground_percent, 6),
            "low_confidence": dominance < s["min_dominance"] or foreground_percent < s["min_foreground_percent"]
            or plausibility < s["min_plausibility"] or agreement < s["min_intensity_agreement"],
            "working_spacing_mm": resolved_spacing(final.spacing, image),
            "preprocessing_of": final.tasks[0],
            "threshold": threshold,
            "threshold_from": source,
            "labels": {str(i): name for i, name in enumerate(("background",) + spec.classes)},
            "voxels_per_label": {str(i): c for i, c in enumerate(counts)},
            "recognition_passes": [p.report(self.expected) for p in passes],
        }
