"""Where the background is trained and where networks paint tissue into it: ``python -m mtseg.diagnose_background``.

On the data of ``+experiment=brain_breast_cta +preset=demo`` (or the overrides given): where each
task's background sample centres land, the share of a cube step's loss weight on each task's
background (as trained in experiment 7, and with the task alone), and, for each ``--checkpoint
NAME=PATH``, the false positives of every brain class on the held-out brain, with the share of
each task's background samples at the intensities of those false positives. Writes
``results.json``, ``report.md`` and ``provenance.json`` into ``--out`` (:mod:`mtseg.evaluation.background`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mtseg import CONFIG_DIR
from mtseg.checkpoint import load_checkpoint
from mtseg.data.held_out import HeldOutImage
from mtseg.data.sampling import VOLUME_ID
from mtseg.evaluation import background
from mtseg.inference.dense import segment_volume
from mtseg.nifti import atomic_write_bytes
from mtseg.runtime.console import quiet_libraries
from mtseg.runtime.provenance import command_line, write_provenance
from mtseg.tasks import experiment_tasks
from mtseg.training.cubes import CubeTraining
from mtseg.training.experiment_configs import register_experiment_configs


def run_results(checkpoint: Path) -> dict:
    """The final Dice and median cross-task confusion of the run the checkpoint belongs to (its ``summary.json``), if any."""
    summary = checkpoint.parent.parent / "summary.json"
    if not summary.is_file():
        return {}
    data = json.loads(summary.read_text())
    tasks = (data.get("evaluation") or {}).get("tasks", {})
    return {"run": str(summary.parent), "run_dice": data.get("dice"),
            "run_confusion_percent": {t: r.get("cross_task_confusion_percent", {}).get("median") for t, r in tasks.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtseg.diagnose_background", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json, report.md and provenance.json")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="a network to examine (repeatable)")
    parser.add_argument("--per-image", type=int, default=20000, help="background centres drawn per training image")
    parser.add_argument("--minibatches", type=int, default=100, help="cube mini-batches of the loss-weight measurement")
    parser.add_argument("--note", help="recorded in provenance.json and report.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config (default: experiment 7, +preset=demo)")
    args = parser.parse_args(argv)
    started = time.time()
    quiet_libraries()
    register_experiment_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=brain_breast_cta", "+preset=demo", *args.overrides])
    tasks = list(experiment_tasks(cfg.experiment))
    training = instantiate(cfg.training)
    datamodule = instantiate(cfg.data, tasks=tasks, depth=cfg.model.depth, seed=cfg.seed, training=training)
    datamodule.prepare_data()
    datamodule.setup("fit")
    generator = torch.Generator().manual_seed(0)
    results = {"experiment": cfg.experiment, "training_mode": training.name, "distance_bands": background.band_names()}
    results["landing"] = {t: background.background_landing(datamodule.subjects[t]["train"], args.per_image, generator) for t in tasks}
    if isinstance(training, CubeTraining):  # the loss-weight measurement is of cube training (the demo's)
        train_subjects = [s for t in tasks for s in datamodule.subjects[t]["train"]]
        distances = {int(s[VOLUME_ID]): background.tissue_distance(s) for s in train_subjects}
        stream = iter(datamodule.train_batches())
        batches = []
        for _ in range(args.minibatches):
            indices = next(stream)
            batches.append({**indices, "target": datamodule.gather(indices)["target"]})
        results["cube_background_weight"] = background.cube_background_weight(batches, distances, training.cube, datamodule.label_space)
        results["ignored_voxel_share"] = background.ignored_share(batches)
    results["networks"] = {}
    held_out = datamodule.subjects["brain"]["test"][0] if "brain" in tasks else None
    if args.checkpoint and held_out is None:
        raise SystemExit("--checkpoint: the false positives are counted on a held-out brain; the experiment has none")
    image = None if held_out is None else HeldOutImage.from_subject(held_out)
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        loaded = load_checkpoint(path)
        labels = segment_volume(loaded.net, image.volume, image.mask, channels=()).labels
        results["networks"][name] = {
            "checkpoint": path, "experiment": loaded.label_space.experiment,
            "held_out": image.case_id,
            "false_positives": background.false_positives(labels, image.reference, image.volume.interior, held_out, loaded.label_space, "brain"),
            **run_results(Path(path)),
        }
    first = next(iter(results["networks"].values()), None)
    if first and first["false_positives"].get("brain_stem", {}).get("voxels"):
        low, _, high = first["false_positives"]["brain_stem"]["intensity_quartiles"]
        results["background_at_brain_stem_false_positive_intensities"] = {
            "interval": [low, high],
            "share_of_background_samples": background.resembling_background(
                {t: datamodule.subjects[t]["train"] for t in tasks}, low, high, args.per_image, generator),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    atomic_write_bytes(out / "results.json", lambda tmp: Path(tmp).write_text(text))
    command = command_line("mtseg.diagnose_background", argv)
    report = f"# Background diagnosis\n\n`{command}`\n\n" + (f"Note: {args.note}\n\n" if args.note else "") + \
        "Synthetic phantoms. Numbers: [results.json](results.json).\n\n```json\n" + text + "```\n"
    atomic_write_bytes(out / "report.md", lambda tmp: Path(tmp).write_text(report))
    write_provenance(out, command, started, note=args.note)
    print(text)


if __name__ == "__main__":
    main()
