"""Test variants of held-out images: the same anatomy as another scanner might have imaged it.

A network trained on one template can learn its contrast instead of the tissue. One held-out
image does not show that; variants of it do (``python -m mtseg.evaluate … variants=contrast``,
``conf/variants/contrast.yaml``). Each variant is a list of TorchIO transforms applied to a
held-out image as the task's preprocessing prepares it, in this order:

1. canonical orientation, resampling and the sampling mask, as for the original
   (:func:`mtseg.data.preprocessing.build_preprocessing`): the mask, the labels and the grid stay
   the original's, so a change of Dice is the contrast's alone;
2. the task's intensity normalisation, so the variant's transforms act on a known range
   (``[0, 1]`` for MRI). Steps 1 and 2 are the data module's preparation of the held-out
   images, done once for all variants;
3. the variant's transforms, seeded by the variant's seed (a random transform is drawn once, the
   same in every run), on the image only; voxels outside the sampling mask are set back to the
   normalised background, as a skull-stripped scan of another scanner would have them;
4. the task's intensity normalisation again, as a new scan gets it.

The report gives each variant's Dice per class, and per class the mean and the worst over the
variants (the original left out of both).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchio as tio
from hydra.utils import instantiate

from mtseg.data.held_out import HeldOutImage
from mtseg.data.preprocessing import IMAGE, SAMPLING_MASK
from mtseg.data.triplanar import TriplanarVolume
from mtseg.evaluation.whole_image import WholeImageEvaluator
from mtseg.tasks import TASKS

log = logging.getLogger(__name__)

#: Name of the unchanged held-out images in a variant report.
ORIGINAL = "original"


class ContrastVariant(tio.Transform):
    """Step 3 of the module's pipeline: ``transforms`` on the image, seeded, the background kept.

    Args:
        name: The variant's name (in messages and reports).
        transforms: TorchIO transforms, applied in order to the image only.
        seed: Seed of the random transforms; the same seed gives the same variant.
    """

    def __init__(self, name: str, transforms: Sequence[tio.Transform], seed: int, **kwargs):
        super().__init__(**kwargs)
        if not transforms:
            raise ValueError(f"variant {name!r} lists no transforms")
        self.variant = name
        self.transform = tio.Compose(list(transforms), include=[IMAGE])
        self.seed = int(seed)
        self.args_names = ["variant", "seed"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        inside = subject[SAMPLING_MASK].data.bool()
        background = subject[IMAGE].data[~inside]
        fill = float(background.median()) if background.numel() else 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            varied = self.transform(subject)
        image = varied[IMAGE].data.float()
        if image.shape != inside.shape:
            raise ValueError(f"variant {self.variant!r} changed the image's grid from {tuple(inside.shape)} to {tuple(image.shape)}")
        varied[IMAGE].set_data(torch.where(inside, image, torch.tensor(fill, dtype=image.dtype)))
        return varied


@dataclass(frozen=True)
class VariantSpec:
    """One named test variant: its transforms and seed (``conf/variants/*.yaml``, instantiated)."""

    name: str
    transforms: tuple[tio.Transform, ...]
    seed: int


def variant_specs(config: Mapping) -> list[VariantSpec]:
    """The variants of ``conf/variants/<name>.yaml`` (``seed`` and ``variants: {name: [transforms]}``, as
    plain values), each seeded ``seed + its position``. Every transform must be a TorchIO class
    (``_target_: torchio.…``); they are built here, before any image is segmented.

    Raises:
        ValueError: naming the variant and what is wrong with it.
    """
    variants = config.get("variants") or {}
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants.variants: expected a mapping of variant names to lists of TorchIO transforms")
    if ORIGINAL in variants:
        raise ValueError(f"variants.variants: {ORIGINAL!r} names the unchanged images; choose another name")
    seed = int(config.get("seed", 0))
    specs = []
    for k, (name, transforms) in enumerate(variants.items()):
        if not isinstance(transforms, Sequence) or isinstance(transforms, str) or not transforms:
            raise ValueError(f"variants.variants.{name}: expected a non-empty list of TorchIO transforms")
        for transform in transforms:
            target = transform.get("_target_") if isinstance(transform, Mapping) else None
            if not isinstance(target, str) or not target.startswith("torchio."):
                raise ValueError(f"variants.variants.{name}: every transform needs _target_: torchio.<Transform>, got {target!r}")
        try:
            built = tuple(instantiate(list(transforms)))
        except Exception as error:  # Hydra wraps the transform's own error
            raise ValueError(f"variants.variants.{name}: {error}") from None
        specs.append(VariantSpec(str(name), built, seed + k))
    return specs


def variant_images(datamodule, task: str, spec: VariantSpec) -> list[HeldOutImage]:
    """``task``'s held-out images of ``datamodule`` (set up for evaluation) as variant ``spec``.

    Starts from the images as the data module prepared them (steps 1 and 2 of the module's
    pipeline: nothing is read or resampled again) and applies steps 3 and 4.
    """
    intensity = list(datamodule.sources[task]["preprocessing"].get("intensity", []))
    transform = tio.Compose([ContrastVariant(spec.name, spec.transforms, spec.seed), *intensity])
    images = []
    for prepared in datamodule.subjects[task]["test"]:
        original = HeldOutImage.from_subject(prepared)
        image = prepared[IMAGE]
        subject = tio.Subject({
            IMAGE: tio.ScalarImage(tensor=image.data.clone(), affine=image.affine),
            SAMPLING_MASK: tio.LabelMap(tensor=prepared[SAMPLING_MASK].data, affine=image.affine),
        })
        varied = transform(subject)[IMAGE].data[0]
        volume = TriplanarVolume(varied, datamodule.depth, datamodule.pad_value)
        images.append(HeldOutImage(task, original.case_id, volume, original.reference, original.mask, original.spacing))
    return images


def variant_tasks(tasks: Sequence[str], modalities: Sequence[str]) -> list[str]:
    """The tasks among ``tasks`` whose modality is one of ``modalities``."""
    return [task for task in tasks if TASKS[task].modality in set(modalities)]


def summarise(per_variant: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> dict:
    """Per task and class: the mean and the worst (lowest) Dice over the variants, the original left out.

    Args:
        per_variant: ``{variant: {task: {class: mean Dice over the task's images}}}``, with
            :data:`ORIGINAL` among the variants.

    Returns:
        ``{task: {"classes": {class: {"original", "mean", "worst", "worst_variant"}},
        "mean_over_classes": {"original", "mean", "worst", "worst_variant"}}}`` (a class's undefined
        Dice, ``None``, is left out of its mean and worst).
    """
    variants = [name for name in per_variant if name != ORIGINAL]
    out: dict[str, dict] = {}
    for task, classes in per_variant[ORIGINAL].items():
        rows = {}
        for cls in [*classes, None]:  # None: the mean over the task's classes

            def value(name: str) -> float | None:
                dice = per_variant[name][task]
                if cls is not None:
                    return dice[cls]
                finite = [v for v in dice.values() if v is not None and not math.isnan(v)]
                return float(np.mean(finite)) if finite else None

            values = {name: value(name) for name in variants}
            finite = {name: v for name, v in values.items() if v is not None and not math.isnan(v)}
            worst = min(finite, key=finite.get) if finite else None
            rows[cls] = {
                "original": value(ORIGINAL),
                "mean": float(np.mean(list(finite.values()))) if finite else None,
                "worst": finite[worst] if worst else None,
                "worst_variant": worst,
            }
        out[task] = {"classes": {cls: row for cls, row in rows.items() if cls is not None}, "mean_over_classes": rows[None]}
    return out


def evaluate_variants(
    loaded, datamodule, specs: Sequence[VariantSpec], tasks: Sequence[str], original: Mapping[str, Mapping[str, float | None]],
    thresholds: Mapping[str, float], pr_thresholds: int, slab_voxels: int, device: torch.device,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean Dice per task and class of ``loaded``'s network on each variant of ``tasks``' held-out images.

    Args:
        loaded: The checkpoint (:class:`mtseg.checkpoint.LoadedCheckpoint`).
        datamodule: Its test data module, set up.
        specs: The variants.
        tasks: The tasks whose images get variants.
        original: ``{task: {class: mean Dice}}`` of the unchanged images (reported as :data:`ORIGINAL`).
        thresholds: The PR operating point of each ``pr_threshold`` task, found on the unchanged images
            and kept for every variant.
        pr_thresholds, slab_voxels: As for the whole-image evaluation.
        device: Where the network runs.

    Returns:
        ``{variant: {task: {class: mean Dice}}}``, :data:`ORIGINAL` first.
    """
    net = loaded.net.to(device)
    results: dict[str, dict[str, dict[str, float | None]]] = {ORIGINAL: {t: dict(original[t]) for t in tasks}}
    for spec in specs:
        evaluator = WholeImageEvaluator(loaded.label_space, pr_thresholds, fixed_thresholds=thresholds)
        for task in tasks:
            for image in variant_images(datamodule, task, spec):
                log.info("Segmenting %s image %s, variant %s", task, image.case_id, spec.name)
                evaluator.add_volume(net, task, image.case_id, image.volume, image.reference, image.mask, slab_voxels, image.spacing)
        evaluation = evaluator.compute()
        results[spec.name] = {
            task: {cls: evaluation.tasks[task].class_dice(cls)["mean"] for cls in TASKS[task].classes} for task in tasks
        }
    return results


def report_markdown(per_variant: Mapping[str, Mapping[str, Mapping[str, float | None]]], summary: Mapping) -> str:
    """``variants.md``: per task, one row per variant (Dice per class and their mean), then the mean and worst."""

    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = []
    for task, task_summary in summary.items():
        classes = list(task_summary["classes"])
        lines += [f"### {task}", "", f"| variant | {' | '.join(classes)} | mean |", "|---" * (len(classes) + 2) + "|"]
        for name, dice in per_variant.items():
            finite = [v for v in dice[task].values() if v is not None and not math.isnan(v)]
            mean = float(np.mean(finite)) if finite else None
            lines.append(f"| {name} | {' | '.join(cell(dice[task][c]) for c in classes)} | {cell(mean)} |")
        for key in ("mean", "worst"):
            row = [task_summary["classes"][c][key] for c in classes]
            lines.append(f"| **{key} of the variants** | {' | '.join(cell(v) for v in row)} | {cell(task_summary['mean_over_classes'][key])} |")
        lines.append("")
    return "\n".join(lines)
